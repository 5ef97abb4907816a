"""Measure how the cost of MAE pretraining grows with image size, patch size and mask ratio.

One factor at a time moves away from a base config (the issue's sizes: encoder 192 wide, 12 deep,
3 heads; decoder 128 wide, 4 deep, 4 heads; 32 x 32 images, 4 x 4 patches, 75% masked):

    image size   32 (base), 64                 at patch 4: L = 64 or 256 patches
    patch size   2, 4 (base), 8                at image 32: L = 256, 64 or 16 patches
    mask ratio   0.25, 0.5, 0.75 (base), 0.9   the encoder sees K = int(L * (1 - ratio))

Two things are timed for each point, on a fixed random batch with fixed masking noise:

    step       one training step as the runner takes it: the package's `train_step` (forward,
               backward, the paper's AdamW over `param_groups`), in fp32.
    encoder    `encoder.forward_masked` alone under `torch.no_grad`: the K visible patches
               through the 12 blocks, which is what masking makes cheap.

All the points' closures run interleaved in one process over several rounds and the median of
each is reported (`common.time_interleaved`), so the ratios between points are robust to a busy
machine; the absolute times are not. Next to each time stands the work counted by
`torch.utils.flop_counter.FlopCounterMode` for one image (`common.forward_backward_flops`: matrix
products, attention's two included, since the counts run attention on PyTorch's math backend;
the optimiser is not counted): GFLOP of a forward + backward, and of the encoder's forward alone.

    python benchmarks/scaling.py                        # the issue's sizes, batch 32: minutes
    python benchmarks/scaling.py --threads 1 --out scaling.json
    python benchmarks/scaling.py --quick                # tiny sizes, seconds (used by the tests)

The last two lines are `encoder_cost_mask25_vs_mask75=<time ratio>` and
`step_cost_patch2_vs_patch4=<time ratio>`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from common import Stepper, forward_backward_flops, forward_flops, median, time_interleaved

from mae_tutorial import MAEConfig, MaskedAutoencoder
from mae_tutorial.pretrain import TrainSettings
from mae_tutorial.runtime import resolve_device, seeded
from mae_tutorial.training import masking_noise

# The sizes (MAEConfig's defaults, spelled out so the benchmark does not move with them).
BASE = MAEConfig(
    image_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=128,
    decoder_depth=4, decoder_num_heads=4, mask_ratio=0.75,
)  # fmt: skip
QUICK = dataclasses.replace(
    BASE, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
    decoder_num_heads=2,
)  # fmt: skip
# Each factor's values; the base config's value is among them and is measured once.
FACTORS: dict[str, tuple[str, tuple[float, ...]]] = {
    "image size": ("image_size", (32, 64)),
    "patch size": ("patch_size", (2, 4, 8)),
    "mask ratio": ("mask_ratio", (0.25, 0.5, 0.75, 0.9)),
}


@dataclass(frozen=True)
class Point:
    """One config of the sweep: the base with (at most) one field changed."""

    field: str  # the MAEConfig field changed, "" for the base itself
    value: float
    config: MAEConfig

    @property
    def name(self) -> str:
        return "base" if not self.field else f"{self.field}={self.value:g}"


def sweep(base: MAEConfig) -> list[Point]:
    """The base config, then every factor's other values, one change at a time."""
    points = [Point("", 0, base)]
    for field, values in FACTORS.values():
        for value in values:
            if value != getattr(base, field):
                points.append(Point(field, value, dataclasses.replace(base, **{field: value})))
    return points


def point_for(points: list[Point], base: MAEConfig, field: str, value: float) -> Point:
    """The point where `field` equals `value` (the base when that is the base's value)."""
    if getattr(base, field) == value:
        return points[0]
    return next(p for p in points if p.field == field and p.value == value)


def build_paths(
    config: MAEConfig, settings: TrainSettings, device: torch.device
) -> tuple[Callable[[], None], Callable[[], None]]:
    """The two closures timed for one config: a training step and the encoder's forward.

    They share one model and one fixed batch with fixed masking noise.
    """
    stepper = Stepper(config, settings, device)
    B, C, H, L = settings.batch_size, config.in_chans, config.image_size, config.num_patches
    with seeded(settings.seed):
        x = torch.randn(B, C, H, H).to(device)  # (B, C, H, W), as normalised images
    noise = masking_noise(B, L, settings.seed, 0).to(device)  # (B, L)

    def step() -> None:
        stepper.step(x, noise, settings.lr)

    def encoder() -> None:
        with torch.no_grad():
            stepper.model.encoder.forward_masked(x, config.mask_ratio, noise)

    return step, encoder


def counted_flops(config: MAEConfig) -> tuple[int, int]:
    """FLOPs of one image: (forward + backward of the MAE loss, the encoder's forward alone).

    Counted on a fresh model, attention included (see `common.forward_flops`).
    """
    with seeded(0):
        model = MaskedAutoencoder(config)
        image = torch.randn(
            1, config.in_chans, config.image_size, config.image_size
        )  # (1, C, H, W)
        noise = torch.rand(1, config.num_patches)  # (1, L)
    step = forward_backward_flops(lambda: model(image, noise=noise).loss)
    encoder = forward_flops(lambda: model.encoder.forward_masked(image, config.mask_ratio, noise))
    return step, encoder


def machine() -> dict[str, object]:
    """What the numbers came from: CPU model, its vector/matrix flags, cores, Python, torch."""
    info: dict[str, object] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    flags = set(text.split())
    info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f == "avx2")
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Run it niced on a shared machine: only ratios between points are meaningful when "
        "other work competes for the cores. Example: OMP_NUM_THREADS=1 nice -n 10 python "
        "benchmarks/scaling.py --threads 1 --out scaling.json",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU) or a torch device")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per step (32; quick 4)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each closure")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--steps", type=int, default=2, help="calls of each closure per round")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch intra-op threads (default: as OMP_NUM_THREADS or torch decides)",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="a tiny model (32 wide, 2 deep, decoder 1 deep), batch 4, one round: seconds",
    )  # fmt: skip
    parser.add_argument("--out", default=None, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)

    if args.quick:
        args.warmup, args.repeats, args.steps = 1, 1, 1
    batch = args.batch_size or (4 if args.quick else 32)
    for name, value in (("batch-size", batch), ("repeats", args.repeats), ("steps", args.steps)):
        if value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    base = QUICK if args.quick else BASE
    settings = TrainSettings(batch_size=batch, amp="off", device=str(device))
    points = sweep(base)
    command = shlex.join(["python", "benchmarks/scaling.py", *(sys.argv[1:] if argv is None else argv)])  # fmt: skip
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"batch={batch} warmup={args.warmup} repeats={args.repeats} steps={args.steps}"
    )

    paths: dict[str, Callable[[], None]] = {}
    for p in points:
        paths[f"step {p.name}"], paths[f"encoder {p.name}"] = build_paths(
            p.config, settings, device
        )
    seconds = median(time_interleaved(paths, device, args.warmup, args.repeats, args.steps))
    flops = {p.name: counted_flops(p.config) for p in points}

    base_step, base_encoder = seconds["step base"], seconds["encoder base"]
    rows = []
    for factor, (field, values) in FACTORS.items():
        for value in values:
            p = point_for(points, base, field, value)
            step_s, encoder_s = seconds[f"step {p.name}"], seconds[f"encoder {p.name}"]
            step_flops, encoder_flops = flops[p.name]
            rows.append({
                "factor": factor, "value": value, "point": p.name,
                "L": p.config.num_patches, "K": p.config.num_visible,
                "step_ms": 1e3 * step_s, "images_per_s": batch / step_s,
                "step_vs_base": step_s / base_step,
                "step_gflop_per_image": step_flops / 1e9,
                "step_gflop_vs_base": step_flops / flops["base"][0],
                "step_gflop_per_s": step_flops * batch / step_s / 1e9,
                "encoder_ms": 1e3 * encoder_s, "encoder_vs_base": encoder_s / base_encoder,
                "encoder_gflop_per_image": encoder_flops / 1e9,
                "encoder_gflop_vs_base": encoder_flops / flops["base"][1],
            })  # fmt: skip

    header = (
        f"{'factor':10} {'value':>5} {'L':>4} {'K':>4} | {'step ms':>8} {'img/s':>7} "
        f"{'x base':>6} {'GFLOP/img':>9} {'x base':>6} {'GFLOP/s':>7} | {'enc ms':>7} "
        f"{'x base':>6} {'GFLOP/img':>9} {'x base':>6}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['factor']:10} {r['value']:5g} {r['L']:4d} {r['K']:4d} | {r['step_ms']:8.1f} "
            f"{r['images_per_s']:7.1f} {r['step_vs_base']:6.2f} {r['step_gflop_per_image']:9.3f} "
            f"{r['step_gflop_vs_base']:6.2f} {r['step_gflop_per_s']:7.1f} | {r['encoder_ms']:7.1f} "
            f"{r['encoder_vs_base']:6.2f} {r['encoder_gflop_per_image']:9.3f} "
            f"{r['encoder_gflop_vs_base']:6.2f}"
        )

    mask25 = point_for(points, base, "mask_ratio", 0.25).name
    patch2 = point_for(points, base, "patch_size", 2).name
    encoder_ratio = seconds[f"encoder {mask25}"] / base_encoder
    step_ratio = seconds[f"step {patch2}"] / base_step
    if args.out:
        record = {
            "command": command, "machine": machine(), "device": str(device),
            "threads": torch.get_num_threads(), "batch": batch, "warmup": args.warmup,
            "repeats": args.repeats, "steps": args.steps, "base": dataclasses.asdict(base),
            "rows": rows,
        }  # fmt: skip
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
    print(f"encoder_cost_mask25_vs_mask75={encoder_ratio:.3f}")
    print(f"step_cost_patch2_vs_patch4={step_ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

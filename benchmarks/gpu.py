"""Time MAE pretraining on one GPU the fast way, and report images/s, epoch time and MFU.

The GPU path: the `vit_tiny` preset, bf16 autocast (fp16 with loss scaling on cards without bf16),
fused attention (`F.scaled_dot_product_attention`, the model's default), `torch.compile` (on by
default on CUDA), the whole training set held on the device as uint8 and augmented there, and a
large batch. Three paths share one model and optimiser and run interleaved; medians are reported:

    model only       a fixed batch and fixed noise already on the device: the model's ceiling.
    pipeline         what `pretrain.py` does per step: a `DeviceLoader` batch, the lr, masking
                     noise drawn on the CPU by `masking_noise` and copied over, the step, and the
                     loss read back with `.item()` (two host-device synchronisations per step).
    pipeline, async  the same batches, but noise drawn on the device and no per-step read-back, so
                     the host can run ahead of the GPU: what the loop could reach without the syncs.

FLOPs per step are counted once with `torch.utils.flop_counter.FlopCounterMode` on an eager
forward + backward (matrix products and, on CUDA, the fused attention kernels; the optimiser is
not counted). MFU = achieved FLOP/s / the card's dense bf16 peak (`--peak-tflops`, else a small
table by device name; 'unknown' when the card is not in it, e.g. on a CPU).

    python benchmarks/gpu.py                                   # vit_tiny, batch 2048, compiled
    python benchmarks/gpu.py --batch-size 1024 --compile off
    python benchmarks/gpu.py --data-dir ../shared/data --profile trace.json
    python benchmarks/gpu.py --smoke                           # tiny, on the CPU too (the tests)

The last three lines are `images_per_s=<pipeline>`, `epoch_s=<seconds for 50,000 images>` and
`mfu=<fraction or unknown>`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from common import endless_batches, load_images, sync, time_interleaved
from torch.utils.flop_counter import FlopCounterMode

from mae_tutorial import MAEConfig, MaskedAutoencoder
from mae_tutorial.config import PRESETS
from mae_tutorial.data import (
    DeviceLoader,
    normalize,
    random_resized_crop_flip,
)
from mae_tutorial.pretrain import (
    AMP_MODES,
    TrainSettings,
    forward_loss,
    lr_at,
    make_optimizer,
    masking_noise,
    optimizer_step,
    resolve_amp,
    resolve_device,
)

CIFAR10_TRAIN = 50_000
# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, in TFLOP/s; fp16 for
# cards without bf16 (T4, V100). First match of the substring in the device name wins.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM, e.g. "NVIDIA H100 80GB HBM3"
    ("H200", 989.0),  # also GH200
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("T4", 65.0),
    ("V100", 125.0),
)


def peak_tflops_for(device: torch.device) -> float | None:
    """The card's dense bf16 peak in TFLOP/s from `PEAK_TFLOPS`, or None when unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).upper()
    return next((peak for key, peak in PEAK_TFLOPS if key.upper() in name), None)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


class Trainer:
    """One model, its (optionally compiled) forward and one AdamW, stepped as `pretrain.py` does.

    The step is `pretrain.py`'s own: `forward_loss` then `optimizer_step`.
    """

    def __init__(
        self,
        config: MAEConfig,
        settings: TrainSettings,
        device: torch.device,
        compile_mode: str | None,
        fused_adamw: bool,
    ) -> None:
        torch.manual_seed(settings.seed)
        self.model = MaskedAutoencoder(config).to(device).train()
        self.net: torch.nn.Module = self.model
        if compile_mode is not None:
            mode = None if compile_mode == "default" else compile_mode
            self.net = torch.compile(self.model, mode=mode)
        self.optimizer = make_optimizer(self.model, settings, fused=True if fused_adamw else None)
        self.device = device
        self.autocast_dtype, use_scaler = resolve_amp(settings.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    def step(self, x: torch.Tensor, noise: torch.Tensor, lr: float) -> torch.Tensor:
        """One optimiser step; the loss is returned on the device, unsynchronised.

        Shapes:
            x: (B, C, H, W), noise: (B, L) -> loss ().
        """
        loss = forward_loss(self.net, x, noise, self.autocast_dtype)
        optimizer_step(loss, self.optimizer, self.scaler, lr)
        return loss

    def flops_per_step(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[int, bool]:
        """FLOPs of one eager forward + backward, and whether attention kernels were counted.

        Shapes:
            x: (B, C, H, W), noise: (B, L).
        """
        counter = FlopCounterMode(display=False)
        with counter:
            loss = forward_loss(self.model, x, noise, self.autocast_dtype)
        with counter:
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        ops = {str(op) for op in counter.get_flop_counts().get("Global", {})}
        return counter.get_total_flops(), any("attention" in op for op in ops)


def build_paths(
    trainer: Trainer,
    config: MAEConfig,
    images: torch.Tensor,
    settings: TrainSettings,
    device: torch.device,
) -> tuple[dict[str, Callable[[], None]], Callable[[], float]]:
    """The three closures timed (see the module docstring), and a function returning the async
    path's mean loss so far (its finiteness check, made once at the end instead of every step)."""
    loader = DeviceLoader(
        images,
        torch.zeros(len(images), dtype=torch.int64),  # labels are not used in pretraining
        settings.batch_size,
        augment=random_resized_crop_flip,
        device=device,
        seed=settings.seed,
    )
    total_steps = len(loader) * settings.epochs
    warmup_steps = round(settings.warmup * len(loader))
    batches, async_batches = endless_batches(loader), endless_batches(loader)
    B, L = settings.batch_size, config.num_patches
    fixed_x = next(endless_batches(loader))  # (B, C, H, W)
    fixed_noise = masking_noise(B, L, settings.seed, 0).to(device)  # (B, L)
    where = device if device.type == "cuda" else torch.device("cpu")
    noise_generator = torch.Generator(device=where).manual_seed(settings.seed)
    state = {"step": 0, "async_step": 0}
    async_loss = torch.zeros((), device=device)

    def model_only() -> None:
        trainer.step(fixed_x, fixed_noise, settings.lr)

    def pipeline() -> None:
        step = state["step"]
        state["step"] += 1
        x = next(batches)
        lr = lr_at(step, total_steps, warmup_steps, settings.lr, settings.min_lr)
        noise = masking_noise(B, L, settings.seed, step).to(device)  # (B, L)
        value = trainer.step(x, noise, lr).detach().float().item()
        if not math.isfinite(value):
            raise RuntimeError(f"non-finite loss {value} at pipeline step {step + 1}")

    def pipeline_async() -> None:
        step = state["async_step"]
        state["async_step"] += 1
        x = next(async_batches)
        lr = lr_at(step, total_steps, warmup_steps, settings.lr, settings.min_lr)
        noise = torch.rand(B, L, generator=noise_generator, device=where).to(device)  # (B, L)
        async_loss.add_(trainer.step(x, noise, lr).detach().float())

    def async_mean_loss() -> float:
        return async_loss.item() / max(1, state["async_step"])

    paths = {"model only": model_only, "pipeline": pipeline, "pipeline, async": pipeline_async}
    return paths, async_mean_loss


def profile(path: Callable[[], None], device: torch.device, steps: int, trace: str) -> None:
    """Profile `steps` calls of `path`: print the top operators and write a Chrome trace."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            path()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=15))
    prof.export_chrome_trace(trace)
    print(f"trace written to {trace} (open in chrome://tracing or ui.perfetto.dev)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="peak TFLOP/s known by device name (dense bf16; fp16 for T4 and V100):\n  "
        + ", ".join(f"{key} {peak:g}" for key, peak in PEAK_TFLOPS),
    )
    parser.add_argument(
        "--preset",
        default="vit_tiny",
        choices=sorted(PRESETS),
        help="model size (default vit_tiny)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None,
        help="images per step (default 2048 on CUDA, 256 elsewhere, 16 with --smoke)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=20, help="steps per path per timed round")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed steps per path first (compilation happens here)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU) or a torch device")
    parser.add_argument(
        "--amp", default="auto", choices=AMP_MODES,
        help="mixed precision as pretrain's --amp (auto: bf16, or fp16 where the GPU has no bf16; "
        "off on the CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--compile", default="auto", choices=("auto", "on", "off"),
        help="torch.compile the model (auto: on for CUDA, off elsewhere)",
    )  # fmt: skip
    parser.add_argument(
        "--compile-mode", default="default",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
        help="torch.compile's mode (reduce-overhead uses CUDA graphs)",
    )  # fmt: skip
    parser.add_argument(
        "--fused-adamw", action="store_true",
        help="AdamW(fused=True) instead of the default implementation pretrain.py uses",
    )  # fmt: skip
    parser.add_argument(
        "--peak-tflops", type=float, default=None,
        help="the device's peak TFLOP/s for MFU (default: from the table below by device name)",
    )  # fmt: skip
    parser.add_argument(
        "--data-dir", default=None,
        help="folder holding cifar-10-batches-py (default $MAE_TUTORIAL_DATA; else synthetic data "
        "written to a temporary folder)",
    )  # fmt: skip
    parser.add_argument(
        "--profile", default=None, metavar="TRACE_JSON",
        help="afterwards, profile --steps pipeline steps: print the top operators, write a trace",
    )  # fmt: skip
    parser.add_argument(
        "--smoke", action="store_true",
        help="tiny preset, batch 16, one round of one step: seconds, also on a CPU",
    )  # fmt: skip
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    try:
        device = resolve_device(args.device)
        resolve_amp(args.amp, device)
    except ValueError as error:
        parser.error(str(error))
    if args.smoke:
        args.preset, args.steps, args.repeats, args.warmup = "tiny", 1, 1, 1
    batch = args.batch_size or (16 if args.smoke else 2048 if device.type == "cuda" else 256)
    for name, value in (("batch-size", batch), ("steps", args.steps), ("repeats", args.repeats)):
        if value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        parser.error(f"--peak-tflops must be > 0, got {args.peak_tflops}")
    compiled = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    config = MAEConfig.from_preset(args.preset)
    settings = TrainSettings(batch_size=batch, device=str(device), amp=args.amp)

    n_synthetic = max(4 * batch, 64 if args.smoke else 5000)
    with tempfile.TemporaryDirectory(prefix="mae_gpu_bench_") as scratch:
        images, source = load_images(args.data_dir, n_synthetic, Path(scratch))
    if batch > len(images):
        parser.error(f"--batch-size {batch} exceeds the {len(images)} training images")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 matmuls autocast leaves
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(
        config, settings, device, args.compile_mode if compiled else None, args.fused_adamw
    )
    peak = args.peak_tflops or peak_tflops_for(device)
    print(
        f"device={device_name(device)} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"preset={args.preset} batch={batch} amp={trainer.autocast_dtype or 'off'} "
        f"compile={args.compile_mode if compiled else 'off'} fused_adamw={args.fused_adamw} "
        f"data={source} steps={args.steps} repeats={args.repeats} "
        f"peak_tflops={peak if peak is not None else 'unknown'}"
    )

    paths, async_mean_loss = build_paths(trainer, config, images, settings, device)
    # FLOPs do not depend on the values: any batch of the right shape will do.
    probe_x = normalize(images[:batch].to(device))  # (B, C, H, W)
    probe_noise = masking_noise(batch, config.num_patches, settings.seed, 0).to(device)  # (B, L)
    flops, attention_counted = trainer.flops_per_step(probe_x, probe_noise)
    seconds = time_interleaved(paths, device, args.warmup, args.repeats, args.steps)
    if not math.isfinite(async_mean_loss()):
        raise RuntimeError("the async path's loss became non-finite")
    results = {}
    for name, t in seconds.items():
        achieved = flops / t / 1e12
        results[name] = {
            "images_per_s": batch / t,
            "ms_per_step": 1e3 * t,
            "tflops": achieved,
            "mfu": achieved / peak if peak else None,
        }

    print(f"{'path':16} {'images/s':>10} {'ms/step':>9} {'TFLOP/s':>9} {'MFU':>7}")
    for name, row in results.items():
        mfu = f"{row['mfu']:7.1%}" if row["mfu"] is not None else f"{'?':>7}"
        print(
            f"{name:16} {row['images_per_s']:10.1f} {row['ms_per_step']:9.1f} "
            f"{row['tflops']:9.3f} {mfu}"
        )
    note = "" if attention_counted else " (attention kernels not counted on this device)"
    print(f"GFLOP per image (forward + backward): {flops / batch / 1e9:.3f}{note}")
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
    if args.profile:
        profile(paths["pipeline"], device, args.steps, args.profile)

    main_row = results["pipeline"]
    epoch_s = CIFAR10_TRAIN / main_row["images_per_s"]
    print(f"200 epochs of CIFAR-10 at the pipeline's rate: {200 * epoch_s / 60:.1f} min")
    if args.json:
        with open(args.json, "w") as f:
            record = {"device": device_name(device), "preset": args.preset, "batch": batch,
                      "compile": compiled, "data": source, "flops_per_step": flops,
                      "peak_tflops": peak, "results": results}  # fmt: skip
            json.dump(record, f, indent=2)
    print(f"images_per_s_async={results['pipeline, async']['images_per_s']:.1f}")
    print(f"images_per_s={main_row['images_per_s']:.1f}")
    print(f"epoch_s={epoch_s:.2f}")
    print(f"mfu={main_row['mfu']:.4f}" if main_row["mfu"] is not None else "mfu=unknown")
    return 0


if __name__ == "__main__":
    sys.exit(main())

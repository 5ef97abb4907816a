"""Time one MAE training step (forward, backward, AdamW) of ours against two public peers.

The peers are Hugging Face's `ViTMAEForPreTraining` (attention "sdpa") and lucidrains' vit-pytorch
`MAE`, all at the same sizes. Every model takes the package's own step, `train_step` (the same
AdamW for all; vit-pytorch draws its own masking noise, the others take the same fixed noise).
Models run side by side in one process, interleaved over repeats; the median of each is reported,
with the spread of the round-by-round ratios, so the ratios are robust to a noisy machine while
absolute times are not. `--clock cpu` times CPU time instead of wall time (best on a shared CPU,
one thread). Peak memory is measured for each model alone in a fresh subprocess (CPU: peak
resident set growth; CUDA: `torch.cuda.max_memory_allocated`).

Equal speed is not equal work: the models differ in what they compute (vit-pytorch has no cls
token and predicts only the masked patches). Each model's FLOPs per image are counted
(`benchmarks/common.py`: forward + backward, attention's matmuls included) and printed beside the
ratios, with the ratio at equal work (ours' FLOP/s over the peer's).

    python benchmarks/train_step.py                 # the issue's sizes, fp32 and bf16
    OMP_NUM_THREADS=1 python benchmarks/train_step.py --modes fp32 --clock cpu --repeats 10
    python benchmarks/train_step.py --smoke         # tiny sizes, seconds (used by the tests)

The last lines are `ratio_vs_hf_fp32=<ours/hf>`, `ratio_vs_fastest_fp32=<ours/fastest peer>`
and `work_ratio_vs_fastest_fp32=<the same at equal work>`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
from common import forward_backward_flops, forward_flops, median, ratio_spread, time_interleaved
from torch import nn

from mae_tutorial import MAEConfig, MaskedAutoencoder
from mae_tutorial.runtime import autocast_dtype, resolve_device, seeded
from mae_tutorial.training import train_step


@dataclass(frozen=True)
class Sizes:
    """The shared model sizes of the comparison."""

    image_size: int = 32
    patch_size: int = 4
    width: int = 192
    depth: int = 12
    heads: int = 3
    mlp: int = 768
    decoder_width: int = 128
    decoder_depth: int = 4
    decoder_heads: int = 4
    mask_ratio: float = 0.75
    batch: int = 128


SMOKE = Sizes(width=32, depth=2, heads=2, mlp=128, decoder_width=32, decoder_depth=1,
              decoder_heads=2, batch=8)  # fmt: skip


def build_ours(s: Sizes) -> nn.Module:
    config = MAEConfig(
        image_size=s.image_size, patch_size=s.patch_size, embed_dim=s.width, depth=s.depth,
        num_heads=s.heads, mlp_ratio=s.mlp / s.width, decoder_embed_dim=s.decoder_width,
        decoder_depth=s.decoder_depth, decoder_num_heads=s.decoder_heads, mask_ratio=s.mask_ratio,
    )  # fmt: skip
    return MaskedAutoencoder(config)


def build_hf(s: Sizes) -> nn.Module:
    """`ViTMAEForPreTraining(images, noise=...)` returns an output with `.loss`, as ours does."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    config = ViTMAEConfig(
        image_size=s.image_size, patch_size=s.patch_size, hidden_size=s.width,
        num_hidden_layers=s.depth, num_attention_heads=s.heads, intermediate_size=s.mlp,
        decoder_hidden_size=s.decoder_width, decoder_num_hidden_layers=s.decoder_depth,
        decoder_num_attention_heads=s.decoder_heads, decoder_intermediate_size=4 * s.decoder_width,
        mask_ratio=s.mask_ratio, norm_pix_loss=True, attn_implementation="sdpa",
    )  # fmt: skip
    return ViTMAEForPreTraining(config)


def import_vit_pytorch() -> types.ModuleType:
    """Import vit-pytorch's MAE without torchvision.

    The package's `__init__` imports torchvision for its DINO module, which neither `ViT` nor `MAE`
    uses; a stub module stands in for torchvision here, in this benchmark only.
    """
    if "torchvision" not in sys.modules:
        stub = types.ModuleType("torchvision")
        stub.transforms = types.ModuleType("torchvision.transforms")  # type: ignore[attr-defined]
        sys.modules["torchvision"] = stub
        sys.modules["torchvision.transforms"] = stub.transforms  # type: ignore[attr-defined]
    import vit_pytorch

    return vit_pytorch


class LossOutput:
    def __init__(self, loss: torch.Tensor) -> None:
        self.loss = loss


class VitPytorchMAE(nn.Module):
    """vit-pytorch's `MAE(images) -> loss` called as ours is: `(images, noise=...).loss`.

    It draws its own masking noise, so `noise` is ignored.
    """

    def __init__(self, mae: nn.Module) -> None:
        super().__init__()
        self.mae = mae

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> LossOutput:
        return LossOutput(self.mae(images))


def build_vit_pytorch(s: Sizes) -> nn.Module:
    vit_pytorch = import_vit_pytorch()
    # pool="mean": vit-pytorch 1.26's MAE slices a cls-pool ViT's 2-D position table on the wrong axis.
    encoder = vit_pytorch.ViT(
        image_size=s.image_size, patch_size=s.patch_size, num_classes=10, dim=s.width,
        depth=s.depth, heads=s.heads, mlp_dim=s.mlp, dim_head=s.width // s.heads, pool="mean",
    )  # fmt: skip
    model = vit_pytorch.MAE(
        encoder=encoder, masking_ratio=s.mask_ratio, decoder_dim=s.decoder_width,
        decoder_depth=s.decoder_depth, decoder_heads=s.decoder_heads,
        decoder_dim_head=s.decoder_width // s.decoder_heads,
    )  # fmt: skip
    return VitPytorchMAE(model)


BUILDERS = {"ours": build_ours, "hf": build_hf, "vit-pytorch": build_vit_pytorch}


def make_model(name: str, s: Sizes, device: torch.device) -> nn.Module:
    with seeded(0):
        return BUILDERS[name](s).to(device).train()


def inputs(s: Sizes, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random batch and fixed masking noise: (B, C, H, W), (B, L)."""
    with seeded(1):
        images = torch.randn(s.batch, 3, s.image_size, s.image_size)  # (B, C, H, W)
        noise = torch.rand(s.batch, (s.image_size // s.patch_size) ** 2)  # (B, L)
    return images.to(device), noise.to(device)


def make_step(name: str, s: Sizes, device: torch.device, mode: str) -> Callable[[], None]:
    """A closure running one `train_step` of model `name` on a fixed random batch."""
    model = make_model(name, s, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    dtype = autocast_dtype("bf16" if mode == "bf16" else "off", device)
    images, noise = inputs(s, device)

    def step() -> None:
        train_step(model, images, noise, optimizer, 1e-4, autocast_dtype=dtype)

    return step


def flops_per_image(name: str, s: Sizes) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of one image through model `name` (on the CPU)."""
    model = make_model(name, s, torch.device("cpu"))
    images, noise = inputs(Sizes(**{**s.__dict__, "batch": 2}), torch.device("cpu"))
    forward = forward_flops(lambda: model(images, noise=noise).loss)
    both = forward_backward_flops(lambda: model(images, noise=noise).loss)
    return forward / 2, both / 2


def peak_memory_mb(name: str, s: Sizes, device: torch.device, mode: str) -> float:
    """Peak memory of two training steps of one model, measured alone in a fresh process."""
    command = [
        sys.executable,
        __file__,
        "--memory-of",
        name,
        "--modes",
        mode,
        "--device",
        str(device),
    ]
    command += ["--sizes-json", json.dumps(s.__dict__)]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB.

    Linux's VmHWM is reset by exec; `ru_maxrss` is not (a child starts with its parent's peak).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_memory_here(name: str, s: Sizes, device: torch.device, mode: str) -> float:
    """Run two steps of one model in this (fresh) process; return the memory they took in MiB."""
    before = peak_rss_mb()
    step = make_step(name, s, device, mode)
    step()
    step()
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mb() - before


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively.

    CPU autocast accepts bf16 anywhere, but without avx512_bf16 or AMX it is emulated and several
    times slower than fp32 (measured 3.8x on this project's CPU), which says nothing about our path.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU) or a torch device")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 128)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument(
        "--clock", default="wall", choices=("wall", "cpu"),
        help="wall time, or this process's CPU time (on a shared CPU with one thread)",
    )  # fmt: skip
    parser.add_argument("--modes", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--peers", default="hf,vit-pytorch", help="comma list of hf, vit-pytorch")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sizes-json", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    s = SMOKE if args.smoke else Sizes()
    if args.batch:
        s = Sizes(**{**s.__dict__, "batch": args.batch})
    if args.sizes_json:
        s = Sizes(**json.loads(args.sizes_json))
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    if args.memory_of:
        print(measure_memory_here(args.memory_of, s, device, args.modes))
        return 0
    if args.smoke:
        args.warmup, args.repeats, args.steps = 1, 1, 1
    names = ["ours", *[p for p in args.peers.split(",") if p]]
    modes = [m for m in args.modes.split(",") if m != "bf16" or bf16_supported(device)]
    if "bf16" in args.modes.split(",") and "bf16" not in modes:
        print(f"bf16 skipped: {device} has no native bf16 (autocast would only emulate it)")
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"clock={args.clock} repeats={args.repeats} steps={args.steps} sizes={s}"
    )
    flops = {name: flops_per_image(name, s) for name in names}

    results: dict[str, dict[str, dict[str, float]]] = {}
    spreads: dict[str, dict[str, tuple[float, float, float]]] = {}
    for mode in modes:
        steps = {name: make_step(name, s, device, mode) for name in names}
        times = time_interleaved(
            steps, device, args.warmup, args.repeats, args.steps, clock=args.clock
        )
        results[mode] = {
            n: {"images_per_s": s.batch / t, "ms_per_step": 1e3 * t,
                "gflop_per_image": flops[n][1] / 1e9}
            for n, t in median(times).items()
        }  # fmt: skip
        spreads[mode] = {n: ratio_spread(times, "ours", n) for n in names if n != "ours"}
        if not args.no_memory:
            for name in names:
                results[mode][name]["peak_mb"] = peak_memory_mb(name, s, device, mode)

    print(
        f"{'mode':6} {'model':12} {'images/s':>10} {'ms/step':>9} {'peak MB':>9} "
        f"{'GFLOP/img':>10} {'fwd x':>6}"
    )
    for mode, rows in results.items():
        for name, row in rows.items():
            peak = f"{row['peak_mb']:9.0f}" if "peak_mb" in row else f"{'-':>9}"
            forward, both = flops[name]
            print(
                f"{mode:6} {name:12} {row['images_per_s']:10.1f} {row['ms_per_step']:9.1f} {peak} "
                f"{both / 1e9:10.4f} {both / forward:6.2f}"
            )
    print("GFLOP/img: forward + backward, counted (matmuls incl. attention's, convolutions)")
    for mode, ratios in spreads.items():
        for name, (mid, low, high) in ratios.items():
            work = flops["ours"][1] / flops[name][1]
            print(
                f"{mode}: ours / {name}: speed {mid:.3f} (rounds {low:.3f} to {high:.3f}); "
                f"work per image {work:.3f}; at equal work {mid * work:.3f}"
            )
    if args.json:
        with open(args.json, "w") as f:
            record = {"device": str(device), "clock": args.clock, "sizes": s.__dict__,
                      "flops_per_image": flops, "results": results, "ratio_spreads": spreads}  # fmt: skip
            json.dump(record, f, indent=2)

    fp32 = results.get("fp32", {})
    ours = fp32.get("ours", {}).get("images_per_s", float("nan"))
    peers = {n: r["images_per_s"] for n, r in fp32.items() if n != "ours"}
    if "bf16" in results and peers:
        fastest = max(peers, key=peers.get)
        bf16 = results["bf16"]["ours"]["images_per_s"] / peers[fastest]
        print(f"ratio_bf16_vs_fastest_fp32={bf16:.3f}")
    if "hf" in peers:
        print(f"ratio_vs_hf_fp32={ours / peers['hf']:.3f}")
    if peers:
        fastest = max(peers, key=peers.get)
        print(f"ratio_vs_fastest_fp32={ours / peers[fastest]:.3f}")
        work = flops["ours"][1] / flops[fastest][1]
        print(f"work_ratio_vs_fastest_fp32={ours / peers[fastest] * work:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

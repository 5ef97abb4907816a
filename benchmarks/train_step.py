"""Time one MAE training step (forward, backward, AdamW) of ours against two public peers.

The peers are Hugging Face's `ViTMAEForPreTraining` (attention "sdpa") and lucidrains' vit-pytorch
`MAE`, all at the same sizes. Models run side by side in one process, interleaved over repeats, and
the median of each is reported, so the ratios are robust to a noisy machine; absolute times are not.
Peak memory is measured for each model alone in a fresh subprocess (CPU: peak resident set growth;
CUDA: `torch.cuda.max_memory_allocated`).

    python benchmarks/train_step.py                 # the issue's sizes, fp32 and bf16
    python benchmarks/train_step.py --smoke         # tiny sizes, seconds (used by the tests)

The last two lines are `ratio_vs_hf_fp32=<ours/hf>` and `ratio_vs_fastest_fp32=<ours/fastest peer>`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
from common import time_interleaved

from mae_tutorial import MAEConfig, MaskedAutoencoder


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


def build_ours(s: Sizes) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    config = MAEConfig(
        image_size=s.image_size, patch_size=s.patch_size, embed_dim=s.width, depth=s.depth,
        num_heads=s.heads, mlp_ratio=s.mlp / s.width, decoder_embed_dim=s.decoder_width,
        decoder_depth=s.decoder_depth, decoder_num_heads=s.decoder_heads, mask_ratio=s.mask_ratio,
    )  # fmt: skip
    model = MaskedAutoencoder(config)
    return model, lambda x: model(x).loss


def build_hf(s: Sizes) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    config = ViTMAEConfig(
        image_size=s.image_size, patch_size=s.patch_size, hidden_size=s.width,
        num_hidden_layers=s.depth, num_attention_heads=s.heads, intermediate_size=s.mlp,
        decoder_hidden_size=s.decoder_width, decoder_num_hidden_layers=s.decoder_depth,
        decoder_num_attention_heads=s.decoder_heads, decoder_intermediate_size=4 * s.decoder_width,
        mask_ratio=s.mask_ratio, norm_pix_loss=True, attn_implementation="sdpa",
    )  # fmt: skip
    model = ViTMAEForPreTraining(config)
    return model, lambda x: model(pixel_values=x).loss


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


def build_vit_pytorch(s: Sizes) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
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
    return model, model


BUILDERS = {"ours": build_ours, "hf": build_hf, "vit-pytorch": build_vit_pytorch}


def make_step(name: str, s: Sizes, device: torch.device, mode: str) -> Callable[[], None]:
    """A closure running one training step of model `name` on a fixed random batch."""
    torch.manual_seed(0)
    model, loss_fn = BUILDERS[name](s)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    images = torch.randn(s.batch, 3, s.image_size, s.image_size, device=device)

    def step() -> None:
        if mode == "bf16":
            context = torch.autocast(device.type, dtype=torch.bfloat16)
        else:
            context = contextlib.nullcontext()
        with context:
            loss = loss_fn(images)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


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
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 128)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
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
    if args.memory_of:
        print(measure_memory_here(args.memory_of, s, torch.device(args.device), args.modes))
        return 0
    if args.smoke:
        args.warmup, args.repeats, args.steps = 1, 1, 1
    device = torch.device(args.device)
    names = ["ours", *[p for p in args.peers.split(",") if p]]
    modes = [m for m in args.modes.split(",") if m != "bf16" or bf16_supported(device)]
    if "bf16" in args.modes.split(",") and "bf16" not in modes:
        print(f"bf16 skipped: {device} has no native bf16 (autocast would only emulate it)")
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} sizes={s}")

    results: dict[str, dict[str, dict[str, float]]] = {}
    for mode in modes:
        steps = {name: make_step(name, s, device, mode) for name in names}
        seconds = time_interleaved(steps, device, args.warmup, args.repeats, args.steps)
        results[mode] = {n: {"images_per_s": s.batch / t, "ms_per_step": 1e3 * t} for n, t in seconds.items()}  # fmt: skip
        if not args.no_memory:
            for name in names:
                results[mode][name]["peak_mb"] = peak_memory_mb(name, s, device, mode)

    print(f"{'mode':6} {'model':12} {'images/s':>10} {'ms/step':>9} {'peak MB':>9}")
    for mode, rows in results.items():
        for name, row in rows.items():
            peak = f"{row['peak_mb']:9.0f}" if "peak_mb" in row else f"{'-':>9}"
            print(
                f"{mode:6} {name:12} {row['images_per_s']:10.1f} {row['ms_per_step']:9.1f} {peak}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "sizes": s.__dict__, "results": results}, f, indent=2)

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
        print(f"ratio_vs_fastest_fp32={ours / max(peers.values()):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time MAE pretraining through our data pipeline against the model alone, to show the loader is
not the bottleneck.

Three paths share one model and one AdamW optimiser (the recipe of `TrainSettings`) and run
interleaved in one process over several rounds; the median of each is reported, so the ratio is
robust to a noisy machine while absolute times are not:

    model only   a fixed, pre-made batch and fixed masking noise, already on the device:
                 forward, backward, AdamW step and nothing else.
    pipeline     what `pretrain.py` does per step, minus the progress bar and checkpoints:
                 the next batch from a `DeviceLoader` (uint8 data held on the device, normalised
                 and augmented there with `random_resized_crop_flip`), the lr from `lr_at`, the
                 masking noise from `masking_noise` moved to the device, the step, and the loss
                 read back with `.item()` to check it is finite.
    loader only  the pipeline's batches and noise without the model (where the difference goes).

    python benchmarks/epoch.py                              # vit_tiny, batch 256, synthetic data
    python benchmarks/epoch.py --preset cpu --data-dir ../shared/data
    MAE_TUTORIAL_DATA=../shared/data python benchmarks/epoch.py --batch-size 128
    python benchmarks/epoch.py --smoke                      # tiny sizes, seconds (used by the tests)

The last line is `ratio_pipeline_vs_model=<pipeline images/s / model-only images/s>`; the issue's
acceptance is >= 0.90.
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
from common import endless_batches, load_images, time_interleaved

from mae_tutorial import MAEConfig, MaskedAutoencoder
from mae_tutorial.config import PRESETS
from mae_tutorial.data import (
    DeviceLoader,
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

SYNTHETIC_IMAGES = 5000  # enough for several epochs' worth of distinct batches without real data
SMOKE_IMAGES = 64


def make_update(
    model: MaskedAutoencoder, settings: TrainSettings, device: torch.device, amp: str
) -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]:
    """One optimiser step as `pretrain.py` takes it, from the same public pieces.

    Returns:
        `update(x, noise, lr) -> loss`, the loss left on the device (no synchronisation).

    Shapes:
        x: (B, C, H, W) float, noise: (B, L) on the device -> loss ().
    """
    optimizer = make_optimizer(model, settings)
    autocast_dtype, use_scaler = resolve_amp(amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    def update(x: torch.Tensor, noise: torch.Tensor, lr: float) -> torch.Tensor:
        loss = forward_loss(model, x, noise, autocast_dtype)
        optimizer_step(loss, optimizer, scaler, lr)
        return loss

    return update


def build_paths(
    config: MAEConfig,
    images: torch.Tensor,
    settings: TrainSettings,
    device: torch.device,
    amp: str,
) -> dict[str, Callable[[], None]]:
    """The three closures timed: model only, pipeline, loader only (see the module docstring)."""
    torch.manual_seed(settings.seed)
    model = MaskedAutoencoder(config).to(device).train()
    update = make_update(model, settings, device, amp)
    loader = DeviceLoader(
        images,
        torch.zeros(len(images), dtype=torch.int64),  # labels are not used in pretraining
        settings.batch_size,
        shuffle=True,
        drop_last=True,
        augment=random_resized_crop_flip,
        device=device,
        seed=settings.seed,
    )
    batches = endless_batches(loader)
    # A notional run of `epochs` epochs, so lr_at is exercised as in the loop.
    total_steps = len(loader) * settings.epochs
    warmup_steps = round(settings.warmup * len(loader))
    fixed_x = next(endless_batches(loader))  # (B, C, H, W), made once
    B, L = settings.batch_size, config.num_patches
    fixed_noise = masking_noise(B, L, settings.seed, 0).to(device)  # (B, L), made once
    state = {"step": 0}

    def model_only() -> None:
        update(fixed_x, fixed_noise, settings.lr)

    def next_inputs() -> tuple[torch.Tensor, torch.Tensor, float]:
        step = state["step"]
        state["step"] += 1
        x = next(batches)
        lr = lr_at(step, total_steps, warmup_steps, settings.lr, settings.min_lr)
        noise = masking_noise(x.shape[0], L, settings.seed, step).to(device)
        return x, noise, lr  # (B, C, H, W), (B, L), float

    def pipeline() -> None:
        loss = update(*next_inputs())
        value = loss.detach().float().item()  # the loop's finiteness check reads the loss back
        if not math.isfinite(value):
            raise RuntimeError(f"non-finite loss {value} at step {state['step']}")

    def loader_only() -> None:
        next_inputs()

    return {"model only": model_only, "pipeline": pipeline, "loader only": loader_only}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Run it niced and, on a shared CPU, with OMP_NUM_THREADS set: only the ratio is "
        "meaningful on a busy machine.",
    )
    parser.add_argument(
        "--preset",
        default="vit_tiny",
        choices=sorted(PRESETS),
        help="model size (default vit_tiny)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per step (default 256, smoke 16)"
    )
    parser.add_argument("--steps", type=int, default=5, help="steps per path per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per path first")
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU) or a torch device")
    parser.add_argument(
        "--amp", default="auto", choices=AMP_MODES,
        help="mixed precision as pretrain's --amp (auto: bf16/fp16 on GPUs, off on the CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--data-dir", default=None,
        help="folder holding cifar-10-batches-py (default $MAE_TUTORIAL_DATA; else synthetic data "
        "written to a temporary folder)",
    )  # fmt: skip
    parser.add_argument(
        "--smoke", action="store_true",
        help="tiny preset, batch 16, one round of one step (64 synthetic images unless data is "
        "named): seconds",
    )  # fmt: skip
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    if args.smoke:
        args.preset, args.steps, args.repeats, args.warmup = "tiny", 1, 1, 1
    batch = args.batch_size or (16 if args.smoke else 256)
    for name in ("batch", "steps", "repeats"):
        value = batch if name == "batch" else getattr(args, name)
        if value < 1:
            parser.error(f"--{name.replace('batch', 'batch-size')} must be >= 1, got {value}")
    try:
        device = resolve_device(args.device)
        resolve_amp(args.amp, device)
    except ValueError as error:
        parser.error(str(error))
    config = MAEConfig.from_preset(args.preset)
    settings = TrainSettings(batch_size=batch, device=str(device), amp=args.amp)
    n_synthetic = SMOKE_IMAGES if args.smoke else SYNTHETIC_IMAGES

    with tempfile.TemporaryDirectory(prefix="mae_epoch_bench_") as scratch:
        images, source = load_images(args.data_dir, n_synthetic, Path(scratch))
    if batch > len(images):
        parser.error(f"--batch-size {batch} exceeds the {len(images)} training images")
    autocast_dtype, _ = resolve_amp(args.amp, device)
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"preset={args.preset} batch={batch} amp={autocast_dtype or 'off'} data={source} "
        f"steps={args.steps} repeats={args.repeats}"
    )
    paths = build_paths(config, images, settings, device, args.amp)
    seconds = time_interleaved(paths, device, args.warmup, args.repeats, args.steps)
    results = {
        name: {"images_per_s": batch / t, "ms_per_step": 1e3 * t} for name, t in seconds.items()
    }

    print(f"{'path':12} {'images/s':>10} {'ms/step':>9}")
    for name, row in results.items():
        print(f"{name:12} {row['images_per_s']:10.1f} {row['ms_per_step']:9.1f}")
    ratio = results["pipeline"]["images_per_s"] / results["model only"]["images_per_s"]
    # The loader's own cost gives the same ratio without the noise of comparing two slow paths.
    share = seconds["loader only"] / (seconds["model only"] + seconds["loader only"])
    print(f"loader share of a step: {share:.2%} (ratio expected from it: {1 - share:.3f})")
    if args.json:
        with open(args.json, "w") as f:
            record = {"device": str(device), "preset": args.preset, "batch": batch,
                      "data": source, "results": results, "loader_share": share,
                      "ratio_pipeline_vs_model": ratio}  # fmt: skip
            json.dump(record, f, indent=2)
    print(f"ratio_pipeline_vs_model={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

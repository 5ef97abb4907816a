"""Time MAE pretraining on one GPU the fast way, and report images/s, epoch time, MFU and FLOP
utilisation.

The GPU path: the `vit_tiny` preset, bf16 autocast (fp16 with loss scaling on cards without bf16),
fused attention (`F.scaled_dot_product_attention`, the model's default), `torch.compile` (on by
default on CUDA), the whole training set held on the device as uint8 and augmented there, and a
large batch. The paths share one model and optimiser, step with the package's `train_step`, and
run interleaved; medians are reported:

    model only       a fixed batch and fixed noise already on the device: the model's ceiling.
    pipeline         what the runner does per step: a `DeviceLoader` batch, the lr, masking
                     noise drawn on the CPU by `masking_noise` and copied over, the step, and the
                     loss read back with `.item()` (two host-device synchronisations per step).
    loader only      the pipeline's batches and noise without the model.
    pipeline, async  the same batches, but noise drawn on the device and no per-step read-back, so
                     the host can run ahead of the GPU: what the loop could reach without the syncs.
    matmuls only     the step's matrix products with the same shapes and dtypes, run alone.
    model only, eager  with `--compile both` (model only is then compiled): the same step on an
                     eager twin of the model (built from the same seed), side by side.

FLOPs per step are counted once (`benchmarks/common.py`): the matmuls of one eager forward +
backward, attention's products included (about 3x the forward's; the optimiser is not counted).
MFU = achieved FLOP/s / the card's dense bf16 peak (`--peak-tflops`, else a small table by device
name; 'unknown' when the card is not in it, e.g. on a CPU). FLOP utilisation = the model-only
step's FLOP/s / the FLOP/s of its matmuls alone, on any device.

    python benchmarks/gpu.py                                   # vit_tiny, batch 2048, compiled
    python benchmarks/gpu.py --batch-size 1024 --compile off
    python benchmarks/gpu.py --device cpu --compile both       # does compile pay on this CPU?
    python benchmarks/gpu.py --data-dir ../shared/data --profile trace.json
    python benchmarks/gpu.py --smoke                           # tiny, on the CPU too (the tests)

The last lines are `images_per_s=<pipeline>`, `epoch_s=<seconds for 50,000 images>`,
`flop_utilisation=<fraction>`, `compile_speedup=<eager time / compiled time>` (with `--compile
both`) and `mfu=<fraction or unknown>`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import (
    CIFAR10_TRAIN,
    Stepper,
    add_shared_arguments,
    load_images,
    pipeline_paths,
    ratio_spread,
    report,
    report_utilisation,
    sync,
    time_interleaved,
    with_ceiling,
)

from mae_tutorial import MAEConfig
from mae_tutorial.data import normalize
from mae_tutorial.pretrain import TrainSettings
from mae_tutorial.runtime import AMP_MODES, autocast_dtype, resolve_device

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
    parser.add_argument(
        "--amp", default="auto", choices=AMP_MODES,
        help="mixed precision as pretrain's --amp (auto: bf16, or fp16 where the GPU has no bf16; "
        "off on the CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--compile", default="auto", choices=("auto", "on", "off", "both"),
        help="torch.compile the model (auto: on for CUDA, off elsewhere; both: time a compiled "
        "and an eager model side by side)",
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
        "--profile", default=None, metavar="TRACE_JSON",
        help="afterwards, profile --steps pipeline steps: print the top operators, write a trace",
    )  # fmt: skip
    parser.add_argument(
        "--smoke", action="store_true",
        help="tiny preset, batch 16, one round of one step: seconds, also on a CPU",
    )  # fmt: skip
    add_shared_arguments(parser)
    args = parser.parse_args(argv)

    try:
        device = resolve_device(args.device)
        dtype = autocast_dtype(args.amp, device)
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
    compiled = args.compile in ("on", "both") or (args.compile == "auto" and device.type == "cuda")
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
    mode = args.compile_mode if compiled else None
    stepper = Stepper(config, settings, device, mode, args.fused_adamw)
    peak = args.peak_tflops or peak_tflops_for(device)
    print(
        f"device={device_name(device)} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"preset={args.preset} batch={batch} amp={dtype or 'off'} "
        f"compile={args.compile if args.compile == 'both' else mode or 'off'} "
        f"fused_adamw={args.fused_adamw} data={source} steps={args.steps} "
        f"repeats={args.repeats} clock={args.clock} "
        f"peak_tflops={peak if peak is not None else 'unknown'}"
    )

    paths, async_mean_loss = pipeline_paths(stepper, images, settings, with_async=True)
    # FLOPs do not depend on the values: any batch of the right shape will do.
    probe_x = normalize(images[:batch].to(device))  # (B, C, H, W)
    probe_noise = torch.rand(batch, config.num_patches, device=device)  # (B, L)
    paths, flops = with_ceiling(paths, stepper, probe_x, probe_noise)
    if args.compile == "both":
        eager = Stepper(config, settings, device, None, args.fused_adamw)
        paths["model only, eager"] = lambda: eager.step(probe_x, probe_noise, settings.lr)
    first_step_s = None
    if compiled:  # the first compiled step compiles forward and backward: what a run pays once
        start = time.perf_counter()
        paths["model only"]()
        sync(device)
        first_step_s = time.perf_counter() - start
    times = time_interleaved(paths, device, args.warmup, args.repeats, args.steps, args.clock)
    if not math.isfinite(async_mean_loss()):
        raise RuntimeError("the async path's loss became non-finite")
    results = report(times, flops, peak)
    utilisation = report_utilisation(times, flops)
    speedup = None
    if args.compile == "both":
        speedup, low, high = ratio_spread(times, "model only", "model only, eager")
        print(f"compile: {speedup:.3f}x eager's speed (rounds {low:.3f} to {high:.3f})")
    if first_step_s is not None:
        print(f"first compiled step (compilation included): {first_step_s:.1f} s wall")
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
                      "compile": args.compile if args.compile == "both" else compiled,
                      "data": source, "flops_per_step": flops.step, "peak_tflops": peak,
                      "flop_utilisation": utilisation, "compile_speedup": speedup,
                      "first_compiled_step_s": first_step_s,
                      "results": results, "times_s": times}  # fmt: skip
            json.dump(record, f, indent=2)
    print(f"images_per_s_async={results['pipeline, async']['images_per_s']:.1f}")
    print(f"images_per_s={main_row['images_per_s']:.1f}")
    print(f"epoch_s={epoch_s:.2f}")
    print(f"flop_utilisation={utilisation:.3f}")
    if speedup is not None:
        print(f"compile_speedup={speedup:.3f}")
    print(f"mfu={main_row['mfu']:.4f}" if main_row["mfu"] is not None else "mfu=unknown")
    return 0


if __name__ == "__main__":
    sys.exit(main())

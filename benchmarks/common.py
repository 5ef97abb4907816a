"""The benchmarks' one timing harness: the images, the training step, interleaved timing, and
counted FLOPs with the matmul ceiling they are measured against.

The step timed is the package's own, `mae_tutorial.training.train_step`; device, autocast dtype
and seeds come from `mae_tutorial.runtime`. The scripts import this file as `common` (Python puts
a script's own folder first on its path).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from mae_tutorial import MAEConfig, MaskedAutoencoder
from mae_tutorial.augment import random_resized_crop_flip
from mae_tutorial.config import PRESETS
from mae_tutorial.data import DeviceLoader, load_cifar10, make_synthetic_cifar
from mae_tutorial.pretrain import TrainSettings, make_optimizer
from mae_tutorial.runtime import autocast_dtype, generator, needs_grad_scaler, seeded
from mae_tutorial.training import lr_at, masking_noise, train_step

CIFAR10_TRAIN = 50_000


def add_shared_arguments(parser: argparse.ArgumentParser) -> None:
    """The options epoch.py and gpu.py share: --preset, --device, --clock, --data-dir, --json."""
    parser.add_argument(
        "--preset",
        default="vit_tiny",
        choices=sorted(PRESETS),
        help="model size (default vit_tiny)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU) or a torch device")
    parser.add_argument(
        "--clock", default="wall", choices=tuple(CLOCKS),
        help="wall time, or this process's CPU time (on a shared CPU with one thread)",
    )  # fmt: skip
    parser.add_argument(
        "--data-dir", default=None,
        help="folder holding cifar-10-batches-py (default $MAE_TUTORIAL_DATA; else synthetic data "
        "written to a temporary folder)",
    )  # fmt: skip
    parser.add_argument("--json", default=None, help="also write the results to this file")


def load_images(data_dir: str | None, n_synthetic: int, scratch: Path) -> tuple[torch.Tensor, str]:
    """The training images, and a description of where they came from.

    Real CIFAR-10 when `data_dir` or `$MAE_TUTORIAL_DATA` names a folder holding it (never a
    download); otherwise `n_synthetic` images from `make_synthetic_cifar`, written under `scratch`.

    Shapes:
        -> (N, 3, 32, 32) uint8 on the CPU.
    """
    root = data_dir or os.environ.get("MAE_TUTORIAL_DATA") or None
    if root is not None:
        return load_cifar10(root, download=False).train_images, f"CIFAR-10 ({root})"
    folder = make_synthetic_cifar(scratch, n_train=n_synthetic, n_test=10, seed=0)
    return load_cifar10(folder, download=False).train_images, f"synthetic ({n_synthetic} images)"


def endless_batches(loader: DeviceLoader) -> Iterator[torch.Tensor]:
    """The loader's batches epoch after epoch, as the training loop visits them."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        for x, _ in loader:
            yield x  # (B, C, H, W) normalised and augmented, on the device
        epoch += 1


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def time_interleaved(
    paths: dict[str, Callable[[], None]],
    device: torch.device,
    warmup: int,
    repeats: int,
    n: int,
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Seconds per call of each closure in each of `repeats` rounds.

    Each round runs every closure `n` times, in an order rotated by one per round, so no path
    always runs first after another; on a shared machine, compare paths round by round.
    `clock="cpu"` times this process's CPU time instead of the wall clock: on a CPU shared with
    other jobs and run on one thread, it leaves out the time other processes held the cores
    (with several threads it adds up every thread's time, so it measures work, not latency).
    """
    timer = CLOCKS[clock]
    for path in paths.values():
        for _ in range(warmup):
            path()
    names = list(paths)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            start = timer()
            for _ in range(n):
                paths[name]()
            sync(device)
            times[name].append((timer() - start) / n)
    return times


def median(times: dict[str, list[float]]) -> dict[str, float]:
    """The median seconds of each path."""
    return {name: statistics.median(t) for name, t in times.items()}


def ratio_spread(times: dict[str, list[float]], a: str, b: str) -> tuple[float, float, float]:
    """(median, min, max) over rounds of time[b] / time[a], i.e. a's speed relative to b's.

    Each round's two timings ran back to back, so the round-wise ratio cancels most of what other
    jobs on the machine do to both.
    """
    ratios = [tb / ta for ta, tb in zip(times[a], times[b])]
    return statistics.median(ratios), min(ratios), max(ratios)


class Stepper:
    """One model, its (optionally compiled) forward and one AdamW, stepped by `train_step`.

    Args:
        config: the model's size.
        settings: the optimiser recipe (the runner's `make_optimizer`), the seed and the amp mode.
        device: where the model lives (see `mae_tutorial.runtime.resolve_device`).
        compile_mode: None for eager, else `torch.compile`'s mode ("default" for its default).
        fused_adamw: `AdamW(fused=True)` instead of the default implementation.
    """

    def __init__(
        self,
        config: MAEConfig,
        settings: TrainSettings,
        device: torch.device,
        compile_mode: str | None = None,
        fused_adamw: bool = False,
    ) -> None:
        with seeded(settings.seed):
            self.model = MaskedAutoencoder(config).to(device).train()
        self.net: torch.nn.Module = self.model
        if compile_mode is not None:
            mode = None if compile_mode == "default" else compile_mode
            self.net = torch.compile(self.model, mode=mode)
        self.optimizer = make_optimizer(self.model, settings, fused=True if fused_adamw else None)
        self.device = device
        self.autocast_dtype = autocast_dtype(settings.amp, device)
        use_scaler = needs_grad_scaler(self.autocast_dtype)
        self.scaler = torch.amp.GradScaler(device.type) if use_scaler else None

    def step(self, x: torch.Tensor, noise: torch.Tensor, lr: float) -> torch.Tensor:
        """One optimiser step; the detached loss, on the device, unsynchronised.

        Shapes:
            x: (B, C, H, W), noise: (B, L) -> loss ().
        """
        return train_step(
            self.net, x, noise, self.optimizer, lr,
            scaler=self.scaler, autocast_dtype=self.autocast_dtype,
        )  # fmt: skip

    def loss_fn(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The eager model's loss under this stepper's autocast, for counting FLOPs."""

        def loss(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
            enabled = self.autocast_dtype is not None
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled):
                return self.model(x, noise=noise).loss

        return loss


def pipeline_paths(
    stepper: Stepper,
    images: torch.Tensor,
    settings: TrainSettings,
    *,
    with_async: bool = False,
) -> tuple[dict[str, Callable[[], None]], Callable[[], float]]:
    """The closures timed, all stepping `stepper`:

        model only       a fixed batch and fixed masking noise, already on the device.
        pipeline         what the runner does per step: a `DeviceLoader` batch (augmented on the
                         device), the lr from `lr_at`, the masking noise the runner draws
                         (`masking_noise`, on the CPU, then copied over), `train_step`, and the
                         loss read back to check it is finite.
        loader only      the pipeline's batches, lr and noise without the model.
        pipeline, async  (with_async) the same, but the noise drawn on the device and no
                         per-step read-back: what the loop could reach without the syncs.

    Returns:
        The closures by name, and a function returning the async path's mean loss so far (its
        finiteness check, made once at the end instead of every step).
    """
    device, config = stepper.device, stepper.model.config
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
    # A notional run of `epochs` epochs, so lr_at is exercised as in the loop.
    total_steps = len(loader) * settings.epochs
    warmup_steps = round(settings.warmup * len(loader))
    batches, async_batches = endless_batches(loader), endless_batches(loader)
    B, L = settings.batch_size, config.num_patches
    fixed_x = next(endless_batches(loader))  # (B, C, H, W), made once
    fixed_noise = masking_noise(B, L, settings.seed, 0).to(device)  # (B, L), made once
    noise_generator = generator(device, settings.seed)
    state = {"step": 0, "async_step": 0}
    async_loss = torch.zeros((), device=device)

    def next_inputs() -> tuple[torch.Tensor, torch.Tensor, float]:
        step = state["step"]
        state["step"] += 1
        lr = lr_at(step, total_steps, warmup_steps, settings.lr, settings.min_lr)
        noise = masking_noise(B, L, settings.seed, step).to(device)  # (B, L)
        return next(batches), noise, lr  # (B, C, H, W), (B, L), float

    def model_only() -> None:
        stepper.step(fixed_x, fixed_noise, settings.lr)

    def pipeline() -> None:
        value = stepper.step(*next_inputs()).float().item()  # the loop's finiteness check
        if not math.isfinite(value):
            raise RuntimeError(f"non-finite loss {value} at pipeline step {state['step']}")

    def loader_only() -> None:
        next_inputs()

    def pipeline_async() -> None:
        step = state["async_step"]
        state["async_step"] += 1
        lr = lr_at(step, total_steps, warmup_steps, settings.lr, settings.min_lr)
        where = noise_generator.device
        noise = torch.rand(B, L, generator=noise_generator, device=where).to(device)  # (B, L)
        async_loss.add_(stepper.step(next(async_batches), noise, lr).float())

    def async_mean_loss() -> float:
        return async_loss.item() / max(1, state["async_step"])

    paths = {"model only": model_only, "pipeline": pipeline, "loader only": loader_only}
    if with_async:
        paths["pipeline, async"] = pipeline_async
    return paths, async_mean_loss


# Counting FLOPs. The fused attention kernels of the CPU are invisible to FlopCounterMode, so the
# counts run attention on PyTorch's math backend, whose two products are ordinary batched matmuls.
MATMULS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default,
}


def forward_flops(loss_fn: Callable[[], torch.Tensor]) -> int:
    """FLOPs of one forward pass (`loss_fn()`), attention's matmuls included."""
    with sdpa_kernel(SDPBackend.MATH), torch.no_grad(), FlopCounterMode(display=False) as counter:
        loss_fn()
    return counter.get_total_flops()


def forward_backward_flops(loss_fn: Callable[[], torch.Tensor]) -> int:
    """FLOPs of one forward and backward pass of `loss_fn()` (matmuls, attention's included, and
    convolutions); the caller clears the gradients it leaves."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss_fn().backward()
    return counter.get_total_flops()


Call = tuple[torch._ops.OpOverload, tuple[torch.Size, ...], torch.dtype]


class MatmulRecord(TorchDispatchMode):
    """Records each matmul run inside it (mm, addmm, bmm, baddbmm): op, operand shapes, dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in MATMULS:
            shapes = tuple(a.shape for a in args if isinstance(a, torch.Tensor))
            self.calls.append((func, shapes, args[-1].dtype))
        return func(*args, **(kwargs or {}))


def matmul_flops(call: Call) -> int:
    """2 * m * n * k (times the batch) of one recorded matmul."""
    func, shapes, _ = call
    a, b = shapes[-2], shapes[-1]  # addmm/baddbmm: (bias, a, b)
    batch = a[0] if len(a) == 3 else 1
    return 2 * batch * a[-2] * a[-1] * b[-1]


def record_step_matmuls(
    loss_fn: Callable[[], torch.Tensor],
) -> list[Call]:
    """The matmuls of one forward + backward of `loss_fn()` (math-backend attention)."""
    with sdpa_kernel(SDPBackend.MATH), MatmulRecord() as record:
        loss_fn().backward()
    return record.calls


def matmul_replay(
    calls: list[Call],
    device: torch.device,
) -> Callable[[], None]:
    """A closure running plain matmuls of exactly the recorded shapes and dtypes: the ceiling a
    step made of those products could reach on this machine. Operands are made once per shape."""
    operands: dict[tuple[torch.Size, torch.dtype], torch.Tensor] = {}

    def operand(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        if (shape, dtype) not in operands:
            operands[shape, dtype] = torch.randn(shape, device=device, dtype=dtype)
        return operands[shape, dtype]

    plan = [(func, [operand(s, dtype) for s in shapes]) for func, shapes, dtype in calls]

    def replay() -> None:
        for func, args in plan:
            func(*args)

    return replay


@dataclass(frozen=True)
class FlopReport:
    """What one training step's matrix work is, counted."""

    forward: int  # FLOPs of one forward pass of the batch
    step: int  # FLOPs of the recorded forward + backward matmuls (~3x forward)
    batch: int

    @property
    def per_image(self) -> float:
        return self.step / self.batch


def count_step(
    stepper: Stepper, x: torch.Tensor, noise: torch.Tensor
) -> tuple[FlopReport, Callable[[], None]]:
    """Count one step's FLOPs on `x`, `noise` and build the matmul replay of the same shapes.

    Shapes:
        x: (B, C, H, W), noise: (B, L).
    """
    loss = stepper.loss_fn()
    forward = forward_flops(lambda: loss(x, noise))
    calls = record_step_matmuls(lambda: loss(x, noise))
    stepper.optimizer.zero_grad(set_to_none=True)
    report = FlopReport(forward=forward, step=sum(map(matmul_flops, calls)), batch=x.shape[0])
    return report, matmul_replay(calls, stepper.device)


def with_ceiling(
    paths: dict[str, Callable[[], None]], stepper: Stepper, x: torch.Tensor, noise: torch.Tensor
) -> tuple[dict[str, Callable[[], None]], FlopReport]:
    """`paths` plus "matmuls only" (the step's matmuls replayed, see `matmul_replay`), and the
    step's counted FLOPs.

    Shapes:
        x: (B, C, H, W), noise: (B, L): any batch of the step's shape (values do not matter).
    """
    flops, replay = count_step(stepper, x, noise)
    return {**paths, "matmuls only": replay}, flops


def report(
    times: dict[str, list[float]], flops: FlopReport, peak_tflops: float | None = None
) -> dict[str, dict[str, float | None]]:
    """Print one row per path (images/s, ms/step, achieved TFLOP/s, MFU against `peak_tflops`)
    and return the rows. Every path is charged the step's FLOPs, so "loader only" reads 0."""
    rows: dict[str, dict[str, float | None]] = {}
    mfu_head = f" {'MFU':>7}" if peak_tflops else ""
    print(f"{'path':20} {'images/s':>10} {'ms/step':>9} {'TFLOP/s':>9}{mfu_head}")
    for name, t in median(times).items():
        work = 0 if name == "loader only" else flops.step
        achieved = work / t / 1e12
        rows[name] = {
            "images_per_s": flops.batch / t,
            "ms_per_step": 1e3 * t,
            "tflops": achieved,
            "mfu": achieved / peak_tflops if peak_tflops else None,
        }
        mfu = f" {achieved / peak_tflops:7.1%}" if peak_tflops else ""
        print(f"{name:20} {flops.batch / t:10.1f} {1e3 * t:9.1f} {achieved:9.4f}{mfu}")
    return rows


def report_utilisation(times: dict[str, list[float]], flops: FlopReport) -> float:
    """Print the step's counted FLOPs and its FLOP utilisation: the model-only step's FLOP/s over
    the FLOP/s of the same matmuls run alone, round by round (median, and min to max over rounds).
    Returns the median."""
    mid, low, high = ratio_spread(times, "model only", "matmuls only")
    print(
        f"GFLOP per image (forward + backward matmuls, attention included): "
        f"{flops.per_image / 1e9:.3f} ({flops.step / flops.forward:.2f}x the forward's)"
    )
    print(
        f"FLOP utilisation (model-only step against its own matmuls alone): {mid:.1%} "
        f"(rounds {low:.1%} to {high:.1%})"
    )
    return mid

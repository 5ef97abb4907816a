"""What the benchmarks share: where the images come from, endless batches, and interleaved timing.

The scripts import it as `common` (Python puts a script's own folder first on its path).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from mae_tutorial.data import DeviceLoader, load_cifar10, make_synthetic_cifar


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


def time_interleaved(
    paths: dict[str, Callable[[], None]], device: torch.device, warmup: int, repeats: int, n: int
) -> dict[str, float]:
    """Median seconds per step of each closure; each round runs every closure `n` times, in an
    order rotated by one per round so no path always runs first after another."""
    for path in paths.values():
        for _ in range(warmup):
            path()
    names = list(paths)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            start = time.perf_counter()
            for _ in range(n):
                paths[name]()
            sync(device)
            times[name].append((time.perf_counter() - start) / n)
    return {name: statistics.median(t) for name, t in times.items()}

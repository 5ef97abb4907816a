"""CIFAR-10 for the MAE tutorial: load it, hold it on the device, augment it there.

`load_cifar10` finds (or downloads, see `mae_tutorial.download`) the canonical
``cifar-10-batches-py`` folder and returns uint8 tensors; `make_synthetic_cifar` writes small data in
the same format for tests and quick runs.

Training follows KellerJordan/cifar10-airbench rather than ``torch.utils.data``: the whole set sits
on the device as uint8, and each batch is indexed, normalised and augmented there with batched
tensor ops. Every random choice comes from a generator seeded by (seed, epoch, ...), so a resumed
run sees exactly the batches it would have seen.
"""

import functools
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mae_tutorial.augment import random_crop_flip, random_resized_crop_flip
from mae_tutorial.download import (
    CIFAR10_FOLDER,
    CIFAR10_MD5,
    CIFAR10_URL,
    TRAIN_FILES,
    default_cache_dir,
    read_batch,
    resolve_cifar10_folder,
)
from mae_tutorial.runtime import generator

# Where the data is found is part of this module's API too: `load_cifar10` documents it.
__all__ = [
    "CIFAR10",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DeviceLoader",
    "default_cache_dir",
    "denormalize",
    "load_cifar10",
    "make_synthetic_cifar",
    "normalize",
    "random_crop_flip",
    "random_resized_crop_flip",
    "resolve_cifar10_folder",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_ROW = 3 * 32 * 32  # one image: R, G, B planes of 32 x 32, row-major


@dataclass(frozen=True)
class CIFAR10:
    """CIFAR-10 as uint8 image tensors and int64 label tensors, on the CPU.

    Shapes:
        train_images: (N, 3, 32, 32) uint8, N = 50000 for the real set.
        train_labels: (N,) int64 in [0, 9].
        test_images: (M, 3, 32, 32) uint8, M = 10000 for the real set.
        test_labels: (M,) int64 in [0, 9].
        classes: the 10 class names, index = label.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]


def _read_images(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one batch file, validated."""
    batch = read_batch(path)
    data, labels = batch.get(b"data"), np.asarray(batch.get(b"labels"))
    if not isinstance(data, np.ndarray):
        raise ValueError(f"{path}: b'data' must be a numpy array, got {type(data).__name__}")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        raise ValueError(
            f"{path}: b'data' must be uint8 (N, {_ROW}), got {data.dtype} {data.shape}"
        )
    if labels.shape != (len(data),) or (labels.dtype.kind not in "iu" and labels.size):
        raise ValueError(
            f"{path}: b'labels' must be {len(data)} integers, got {labels.dtype} {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise ValueError(f"{path}: labels must lie in [0, 9], got [{labels.min()}, {labels.max()}]")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)  # (N, 3, 32, 32)


def _read_classes(path: Path) -> tuple[str, ...]:
    names = read_batch(path).get(b"label_names")
    if not isinstance(names, list) or len(names) != len(CIFAR10_CLASSES):
        raise ValueError(f"{path}: b'label_names' must be a list of 10 names, got {names!r}")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def load_cifar10(
    root: str | Path | None = None,
    download: bool = True,
    *,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
) -> CIFAR10:
    """Load CIFAR-10 (train and test) as uint8 tensors, finding or downloading it first.

    Args:
        root: A folder holding ``cifar-10-batches-py``, or that folder itself; see
            :func:`resolve_cifar10_folder` for the fallbacks (``$MAE_TUTORIAL_DATA``, the cache).
        download: Download into the cache folder when the data is nowhere to be found.
        url: Where to download the archive from.
        md5: The archive's expected MD5 hex digest.

    Returns:
        A :class:`CIFAR10` with every row of the five training batches and the test batch.

    Shapes:
        train_images (N, 3, 32, 32) uint8, train_labels (N,) int64, likewise for test.
    """
    folder = resolve_cifar10_folder(root, download, url=url, md5=md5)
    train = [_read_images(folder / name) for name in TRAIN_FILES]
    test_images, test_labels = _read_images(folder / "test_batch")
    return CIFAR10(
        train_images=torch.from_numpy(np.concatenate([x for x, _ in train])),  # (N, 3, 32, 32)
        train_labels=torch.from_numpy(np.concatenate([y for _, y in train])),  # (N,)
        test_images=torch.from_numpy(np.ascontiguousarray(test_images)),
        test_labels=torch.from_numpy(test_labels),
        classes=_read_classes(folder / "batches.meta"),
    )


# -------------------------------------------------------------------------------- synthetic data


def _synthetic_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Images whose colour, gradient direction and stripe frequency depend on the class."""
    classes = np.arange(len(CIFAR10_CLASSES))
    colour = 0.25 + 0.5 * np.stack([(classes * k % 10) / 9 for k in (1, 3, 7)], axis=1)  # (10, 3)
    angle = 2 * np.pi * classes / len(classes)
    yy, xx = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 32), indexing="ij")  # (32, 32)
    cos, sin = np.cos(angle)[labels, None, None], np.sin(angle)[labels, None, None]  # (N, 1, 1)
    along = cos * xx + sin * yy  # (N, 32, 32) position along the class's gradient direction
    phase = rng.uniform(0, 2 * np.pi, size=(len(labels), 1, 1))
    stripes = 0.1 * np.sin((1 + labels % 3)[:, None, None] * np.pi * along + phase)
    x = colour[labels, :, None, None] + (0.2 * along + stripes)[:, None]  # (N, 3, 32, 32)
    x = x + rng.normal(0, 0.05, size=(len(labels), 3, 1, 1)) + rng.normal(0, 0.03, size=x.shape)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8).reshape(len(labels), _ROW)  # (N, 3072)


def make_synthetic_cifar(
    folder: str | Path, n_train: int = 500, n_test: int = 100, seed: int = 0
) -> Path:
    """Write a small ``cifar-10-batches-py`` folder in the official format, for tests and demos.

    The images are learnable: each class has its own colour, gradient direction and stripe
    frequency, with per-image phase, brightness and pixel noise. Labels are balanced.

    Args:
        folder: Where to create ``cifar-10-batches-py`` (created if missing).
        n_train: Training images, split over the five ``data_batch_*`` files.
        n_test: Test images in ``test_batch``.
        seed: Seed for labels, noise and phases.

    Returns:
        ``folder`` (the folder holding ``cifar-10-batches-py``), ready for :func:`load_cifar10`.

    Shapes:
        Each batch's ``b'data'`` is (rows, 3072) uint8, rows summing to ``n_train`` / ``n_test``.
    """
    for value, what in ((n_train, "n_train"), (n_test, "n_test")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive int, got {value!r}")
    rng = np.random.default_rng(seed)
    batches = Path(folder) / CIFAR10_FOLDER
    batches.mkdir(parents=True, exist_ok=True)
    train_sizes = [len(part) for part in np.array_split(np.arange(n_train), len(TRAIN_FILES))]
    parts = zip(TRAIN_FILES, train_sizes, strict=True)
    files = [(name, n, f"training batch {i + 1} of 5") for i, (name, n) in enumerate(parts)]
    for name, n, batch_label in [*files, ("test_batch", n_test, "testing batch 1 of 1")]:
        labels = rng.permutation(np.arange(n) % len(CIFAR10_CLASSES))
        batch = {
            b"batch_label": batch_label.encode(),
            b"labels": labels.tolist(),
            b"data": _synthetic_images(labels, rng),
            b"filenames": [f"synthetic_{name}_{i:05d}.png".encode() for i in range(n)],
        }
        # Protocol 3 keeps bytes as bytes (protocol 2 would need the _codecs global we refuse).
        (batches / name).write_bytes(pickle.dumps(batch, protocol=3))
    meta = {
        b"num_cases_per_batch": max(train_sizes),
        b"label_names": [c.encode() for c in CIFAR10_CLASSES],
        b"num_vis": _ROW,
    }
    (batches / "batches.meta").write_bytes(pickle.dumps(meta, protocol=3))
    return Path(folder)


# ------------------------------------------------------------------- normalisation, augmentation


def _stats(values: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    """Per-channel statistics shaped (1, C, 1, 1) on ``x``'s device."""
    if len(values) != x.shape[1]:
        raise ValueError(f"got {len(values)} channel statistics for {x.shape[1]} channels")
    return _stats_on(tuple(float(v) for v in values), x.device)


@functools.cache
def _stats_on(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    # Cached: a fresh host-to-GPU copy on every batch would stall the GPU pipeline.
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1).to(device)  # (1, C, 1, 1)


def normalize(
    images: torch.Tensor,
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
) -> torch.Tensor:
    """uint8 images to float32, scaled to [0, 1] then standardised per channel.

    Shapes:
        images: (B, C, H, W) uint8 -> (B, C, H, W) float32.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(
            f"expected uint8 images of shape (B, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    return (images.float() / 255 - _stats(mean, images)) / _stats(std, images)


def denormalize(
    x: torch.Tensor,
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
) -> torch.Tensor:
    """Undo :func:`normalize` for plotting: float images clamped to [0, 1].

    Shapes:
        x: (B, C, H, W) float -> (B, C, H, W) float in [0, 1].
    """
    if not x.is_floating_point() or x.ndim != 4:
        raise TypeError(
            f"expected float images of shape (B, C, H, W), got {x.dtype} {tuple(x.shape)}"
        )
    return (x * _stats(std, x).to(x.dtype) + _stats(mean, x).to(x.dtype)).clamp(0, 1)


# ------------------------------------------------------------------------------------- batching


class DeviceLoader:
    """Batches of normalised, augmented images from uint8 data held once on ``device``.

    Each epoch's order is a permutation drawn from a generator seeded by (seed, epoch), the same on
    every rank, and cut into ``world_size`` equal shards (the last ``N % world_size`` of the order
    are dropped). Batch ``i`` is augmented with a generator seeded by (seed, epoch, rank, i), so
    :meth:`iter_from` can resume mid-epoch exactly. The order is drawn on the CPU and is the same on
    every device; augmentations are drawn on the GPU for CUDA data (reproducible there, but not
    equal to the CPU's draws) and on the CPU otherwise.

    Args:
        images: The whole set, uint8.
        labels: Integer labels.
        batch_size: Images per batch on this rank.
        shuffle: Draw a new order each epoch; otherwise keep the stored order.
        drop_last: Drop the last short batch of the shard.
        augment: Called as ``augment(x, generator=g)`` on each normalised float batch, e.g.
            :func:`random_resized_crop_flip` or a ``functools.partial`` of it.
        device: Where data and batches live; defaults to where ``images`` are.
        seed: Non-negative base seed.
        rank: This process's index among ``world_size`` (DDP).
        world_size: Number of processes sharing the data.

    Shapes:
        images: (N, C, H, W) uint8; labels: (N,).
        Yields x (batch, C, H', W') float32 and y (batch,) int64, batch <= batch_size.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = True,
        augment: Callable[..., torch.Tensor] | None = None,
        device: torch.device | str | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            what = f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else images
            raise TypeError(f"images must be a uint8 (N, C, H, W) tensor, got {what!r:.80}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.shard_size = len(images) // world_size
        if batch_size < 1 or (drop_last and batch_size > self.shard_size):
            raise ValueError(
                f"batch_size must lie in [1, {self.shard_size}] (the images per rank) with "
                f"drop_last={drop_last}, got {batch_size}"
            )
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)  # (N, C, H, W) uint8, moved once
        self.labels = labels.to(self.device, torch.int64)  # (N,)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment, self.seed, self.rank, self.world_size = augment, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order and augmentations the next iteration reproduces."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        full, rest = divmod(self.shard_size, self.batch_size)
        return full + int(rest > 0 and not self.drop_last)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def shard_indices(self) -> torch.Tensor:
        """This rank's indices into the data for the current epoch, in visiting order.

        Shapes:
            (shard_size,) int64 on the CPU.
        """
        n, g = len(self.images), generator(torch.device("cpu"), self.seed, self.epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        return order[: self.shard_size * self.world_size][self.rank :: self.world_size]

    def iter_from(self, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over the current epoch from batch ``start_batch`` on (0 = the whole epoch).

        The batches are identical to the tail of a full iteration, which makes resuming exact.
        """
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must lie in [0, {len(self)}], got {start_batch}")
        return self._batches(self.shard_indices().to(self.device), start_batch)

    def _batches(
        self, indices: torch.Tensor, start_batch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(start_batch, len(self)):
            batch = indices[i * self.batch_size : (i + 1) * self.batch_size]
            x = normalize(self.images[batch])  # (batch, C, H, W) float32
            if self.augment is not None:
                g = generator(self.device, self.seed, self.epoch, self.rank, i)
                x = self.augment(x, generator=g)
            yield x, self.labels[batch]

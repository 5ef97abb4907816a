"""Tests for mae_tutorial.data: reading, augmenting and batching CIFAR-10.

Everything runs on small synthetic data in the CIFAR format, on the CPU, without the network
One test reads the real offline copy when it is available.
"""

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from mae_tutorial.augment import random_resized_crop_flip
from mae_tutorial.data import (
    CIFAR10,
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    DeviceLoader,
    denormalize,
    load_cifar10,
    make_synthetic_cifar,
    normalize,
)
from mae_tutorial.download import CIFAR10_FOLDER
from mae_tutorial.runtime import generator

N_TRAIN, N_TEST = 500, 100  # the sizes of conftest.synthetic_root


@pytest.fixture(scope="module")
def data(synthetic_root: Path) -> CIFAR10:
    return load_cifar10(synthetic_root, download=False)


# ------------------------------------------------------------------------------- finding, reading


def test_load_synthetic_shapes_dtypes_labels(data) -> None:
    assert data.train_images.shape == (N_TRAIN, 3, 32, 32)
    assert data.test_images.shape == (N_TEST, 3, 32, 32)
    assert data.train_images.dtype == data.test_images.dtype == torch.uint8
    assert data.train_labels.shape == (N_TRAIN,) and data.test_labels.shape == (N_TEST,)
    assert data.train_labels.dtype == data.test_labels.dtype == torch.int64
    assert data.train_labels.min() >= 0 and data.train_labels.max() <= 9
    assert torch.bincount(data.train_labels).tolist() == [N_TRAIN // 10] * 10
    assert data.classes == CIFAR10_CLASSES


def test_root_may_be_the_batches_folder_itself(synthetic_root: Path, data) -> None:
    other = load_cifar10(synthetic_root / CIFAR10_FOLDER, download=False)
    assert torch.equal(other.train_images, data.train_images)


@pytest.mark.parametrize("inner", [False, True])
def test_env_var_names_the_folder(synthetic_root, data, cache, monkeypatch, inner) -> None:
    path = synthetic_root / CIFAR10_FOLDER if inner else synthetic_root
    monkeypatch.setenv("MAE_TUTORIAL_DATA", str(path))
    assert torch.equal(load_cifar10(download=False).test_labels, data.test_labels)


def test_cache_folder_is_used(cache: Path) -> None:
    make_synthetic_cifar(cache, n_train=3, n_test=1)  # two of the five training batches are empty
    assert load_cifar10(download=False).train_images.shape == (3, 3, 32, 32)


def test_missing_data_errors_explain_how_to_point_at_it(tmp_path, cache, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match="MAE_TUTORIAL_DATA"):
        load_cifar10(download=False)
    with pytest.raises(FileNotFoundError, match="root=.*neither"):
        load_cifar10(tmp_path)  # an explicit folder without the data is never downloaded into
    monkeypatch.setenv("MAE_TUTORIAL_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="MAE_TUTORIAL_DATA=.*neither"):
        load_cifar10()


def _copy(synthetic_root: Path, tmp_path: Path) -> Path:
    shutil.copytree(synthetic_root / CIFAR10_FOLDER, tmp_path / CIFAR10_FOLDER)
    return tmp_path / CIFAR10_FOLDER


def test_truncated_batch_is_a_value_error_naming_the_file(synthetic_root, tmp_path) -> None:
    batch = _copy(synthetic_root, tmp_path) / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[: batch.stat().st_size // 2])
    with pytest.raises(ValueError, match="data_batch_3"):
        load_cifar10(tmp_path, download=False)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (
            {b"data": torch.zeros(2, 3072, dtype=torch.uint8).numpy(), b"labels": [0, 10]},
            r"\[0, 9\]",
        ),
        ({b"data": torch.zeros(2, 3000, dtype=torch.uint8).numpy(), b"labels": [0, 1]}, "3072"),
        ({b"data": torch.zeros(2, 3072, dtype=torch.uint8).numpy(), b"labels": [0]}, "2 integers"),
        ([1, 2, 3], "expected a dict"),
    ],
)
def test_malformed_batch_is_refused(synthetic_root, tmp_path, content, match) -> None:
    (_copy(synthetic_root, tmp_path) / "test_batch").write_bytes(pickle.dumps(content, protocol=3))
    with pytest.raises(ValueError, match=f"test_batch.*{match}"):
        load_cifar10(tmp_path, download=False)


def test_synthetic_images_are_learnable(data) -> None:
    """A nearest-class-mean classifier beats chance (10%) by far."""
    x_train, x_test = data.train_images.flatten(1).float(), data.test_images.flatten(1).float()
    means = torch.stack([x_train[data.train_labels == c].mean(0) for c in range(10)])
    predicted = torch.cdist(x_test, means).argmin(1)
    assert (predicted == data.test_labels).float().mean() > 0.5


def test_real_data_if_available() -> None:
    root = Path(os.environ.get("MAE_TUTORIAL_DATA") or Path(__file__).parents[2] / "shared/data")
    if not any((p / "batches.meta").is_file() for p in (root, root / CIFAR10_FOLDER)):
        pytest.skip(f"no CIFAR-10 at {root}")
    real = load_cifar10(root, download=False)
    assert real.train_images.shape == (50000, 3, 32, 32) and len(real.test_labels) == 10000
    mean = real.train_images.sum(dim=(0, 2, 3), dtype=torch.int64) / (50000 * 32 * 32 * 255)
    assert torch.allclose(mean, torch.tensor(CIFAR10_MEAN, dtype=mean.dtype), atol=5e-4)


# --------------------------------------------------------------------------------- normalisation


def test_normalize_round_trip(data) -> None:
    images = data.train_images[:8]
    x = normalize(images)
    assert x.dtype == torch.float32 and x.shape == images.shape
    assert torch.allclose(denormalize(x), images / 255, atol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        normalize(x)


# ------------------------------------------------------------------------------------- batching


def _batches(loader: DeviceLoader, epoch: int, start: int = 0) -> list[tuple[torch.Tensor, ...]]:
    loader.set_epoch(epoch)
    return list(loader.iter_from(start))


def _same(first: list[tuple[torch.Tensor, ...]], second: list[tuple[torch.Tensor, ...]]) -> bool:
    pairs = zip(first, second, strict=True)
    return all(torch.equal(a, b) for xy, xy2 in pairs for a, b in zip(xy, xy2, strict=True))


def _loader(data, **kwargs) -> DeviceLoader:
    kwargs = {"augment": random_resized_crop_flip, "seed": 3, **kwargs}
    return DeviceLoader(data.train_images, data.train_labels, 64, **kwargs)


def test_loader_batches_are_normalised_images_with_their_labels(data) -> None:
    loader = DeviceLoader(data.train_images, data.train_labels, 64, shuffle=False, drop_last=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 8 and len(batches[-1][1]) == N_TRAIN - 7 * 64
    assert torch.equal(batches[0][0], normalize(data.train_images[:64]))
    assert torch.equal(torch.cat([y for _, y in batches]), data.train_labels)
    assert len(_loader(data)) == N_TRAIN // 64


def test_loader_is_reproducible_per_epoch(data) -> None:
    first, second = _batches(_loader(data), 2), _batches(_loader(data), 2)
    assert _same(first, second)
    other = _batches(_loader(data), 3)
    assert not torch.equal(first[0][1], other[0][1])


def test_iter_from_is_the_tail_of_a_full_epoch(data) -> None:
    loader = _loader(data)
    full, tail = _batches(loader, 1), _batches(loader, 1, start=3)
    assert len(tail) == len(full) - 3
    assert _same(full[3:], tail)
    with pytest.raises(ValueError, match="start_batch"):
        loader.iter_from(len(loader) + 1)


def test_rank_shards_are_disjoint_and_cover_the_data(data) -> None:
    loaders = [
        DeviceLoader(data.train_images, data.train_labels, 25, rank=r, world_size=4, seed=5)
        for r in range(4)
    ]
    for loader in loaders:
        loader.set_epoch(7)
    shards = [loader.shard_indices() for loader in loaders]
    assert all(len(s) == N_TRAIN // 4 for s in shards) and len({len(lo) for lo in loaders}) == 1
    assert torch.equal(torch.cat(shards).sort().values, torch.arange(N_TRAIN))
    seen = torch.cat([y for loader in loaders for _, y in loader])
    assert torch.equal(torch.bincount(seen), torch.bincount(data.train_labels))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"batch_size": 1000}, "batch_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_loader_rejects_bad_arguments(data, kwargs, match) -> None:
    batch_size = kwargs.pop("batch_size", 64)
    with pytest.raises(ValueError, match=match):
        DeviceLoader(data.train_images, data.train_labels, batch_size, **kwargs)


def test_loader_refuses_images_that_are_not_a_uint8_tensor(data) -> None:
    for images in (data.train_images.float(), data.train_images.tolist()[:2]):
        with pytest.raises(TypeError, match=r"uint8 \(N, C, H, W\) tensor"):
            DeviceLoader(images, data.train_labels, 64)


def test_loader_draws_from_runtime_generators_seeded_by_seed_and_epoch(data) -> None:
    """The one seeding rule (runtime.generator): order by (seed, epoch), so resuming is exact."""
    loader = _loader(data, seed=4)
    loader.set_epoch(2)
    order = torch.randperm(N_TRAIN, generator=generator(torch.device("cpu"), 4, 2))
    assert torch.equal(loader.shard_indices(), order)

"""Shared fixtures: seeded RNG, the tiny preset, images and noise, synthetic CIFAR-10 on disk, the
reference model."""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from mae_tutorial.config import MAEConfig
from mae_tutorial.data import CIFAR10, load_cifar10, make_synthetic_cifar, normalize
from mae_tutorial.download import CIFAR10_FOLDER
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.pretrained import pretrained

N_TRAIN, N_TEST = 500, 100


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    """The tests' tensors are tiny: one thread is faster for them, and on a 2-core machine shared
    with other jobs a threaded op can spend most of its time waiting for the other core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same global RNG state, so failures reproduce."""
    torch.manual_seed(0)


@pytest.fixture
def tiny() -> MAEConfig:
    """The CI-sized preset: 32x32 images, 8x8 patches (L = 16), width 32."""
    return MAEConfig.from_preset("tiny")


@pytest.fixture
def make_images() -> Callable[..., torch.Tensor]:
    """Factory for a reproducible float batch of images of the size a config expects.

    Shapes:
        make_images(config, batch) -> (batch, C, H, W).
    """

    def make(config: MAEConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        size = (batch, config.in_chans, config.image_size, config.image_size)
        return torch.randn(size, generator=gen)

    return make


@pytest.fixture
def make_noise() -> Callable[..., torch.Tensor]:
    """Factory for reproducible masking noise: uniform in [0, 1) per patch.

    Shapes:
        make_noise(config, batch) -> (batch, L).
    """

    def make(config: MAEConfig, batch: int = 2, seed: int = 1) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(batch, config.num_patches, generator=gen)

    return make


@pytest.fixture
def make_pixel_images() -> Callable[..., torch.Tensor]:
    """Factory for a reproducible batch of normalised 32x32 images of random uint8 pixels, as
    the picture tests (reconstruction, attention, viz) draw them.

    Shapes:
        make_pixel_images(n) -> (n, 3, 32, 32).
    """

    def make(n: int = 3) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        size = (n, 3, 32, 32)
        return normalize(torch.randint(0, 256, size, dtype=torch.uint8, generator=generator))

    return make


@pytest.fixture(scope="module")
def reference() -> MaskedAutoencoder:
    """The packaged pretrained model `cifar10-cpu`, loaded once per test module."""
    return pretrained("cifar10-cpu")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_cifar(tmp_path_factory.mktemp("synthetic"), N_TRAIN, N_TEST, seed=0)


@pytest.fixture(scope="session")
def small_cifar(tmp_path_factory: pytest.TempPathFactory) -> CIFAR10:
    """200 training and 50 test images of synthetic CIFAR-10, loaded once: chapter 8's tests."""
    root = make_synthetic_cifar(tmp_path_factory.mktemp("small_cifar"), 200, 50, seed=0)
    return load_cifar10(root, download=False)


@pytest.fixture(scope="session")
def archive(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A .tar.gz of the synthetic folder laid out like the official archive, and its MD5."""
    path = tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(synthetic_root / CIFAR10_FOLDER, arcname=CIFAR10_FOLDER)
    return path, hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No MAE_TUTORIAL_DATA, and an empty cache under a temporary XDG_CACHE_HOME."""
    monkeypatch.delenv("MAE_TUTORIAL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "mae_tutorial"

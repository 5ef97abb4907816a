"""Shared fixtures for the model-core tests: seeded RNG, the tiny preset, images and noise."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from mae_tutorial.config import MAEConfig


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

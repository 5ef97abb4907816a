"""Tests of the reconstruction pictures: a perfect prediction must reproduce the images exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from mae_tutorial.config import MAEConfig
from mae_tutorial.data import denormalize, normalize
from mae_tutorial.losses import normalize_patches
from mae_tutorial.masking import random_masking
from mae_tutorial.model import MAEOutput, MaskedAutoencoder
from mae_tutorial.patches import patchify, unpatchify
from mae_tutorial.viz import (
    MASK_GREY,
    architecture_shapes,
    draw_architecture,
    reconstruct_images,
    reconstruction_grid,
    visible_patch_stats,
)


class PerfectMAE(nn.Module):
    """Predicts every patch exactly (as the loss target), so the pictures can be checked."""

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> MAEOutput:
        target = patchify(images, self.config.patch_size)  # (B, L, P*P*C)
        _, mask, _ = random_masking(target, self.config.mask_ratio, noise)  # (B, L)
        pred = normalize_patches(target) if self.config.norm_pix_loss else target
        return MAEOutput(loss=torch.zeros(()), pred=pred, mask=mask)


def _images(n: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return normalize(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator))


@pytest.mark.parametrize("norm_pix", [True, False])
def test_a_perfect_prediction_reproduces_the_images(norm_pix: bool) -> None:
    config = MAEConfig.from_preset("tiny", norm_pix_loss=norm_pix)
    model = PerfectMAE(config).train()
    images = _images()
    noise = torch.rand(3, config.num_patches, generator=torch.Generator().manual_seed(1))
    parts = reconstruct_images(model, images, noise)
    assert model.training  # the mode is restored
    original = denormalize(images)
    torch.testing.assert_close(parts["original"], original)
    torch.testing.assert_close(parts["reconstruction"], original, atol=1e-4, rtol=0)
    torch.testing.assert_close(parts["pasted"], original, atol=1e-4, rtol=0)
    mask = parts["mask"]
    assert mask.shape == (3, config.num_patches) and mask.sum() == 3 * 12  # 75% of 16 removed
    grid = mask.view(3, 1, 4, 1, 4, 1).expand(3, 3, 4, 8, 4, 8).reshape(3, 3, 32, 32)
    assert torch.all(parts["masked"][grid == 1] == MASK_GREY)
    assert torch.equal(parts["masked"][grid == 0], original[grid == 0])


def test_reconstruction_grid_draws_four_rows(tmp_path: Path) -> None:
    model = MaskedAutoencoder(MAEConfig.from_preset("tiny"))
    fig = reconstruction_grid(model, _images(5))
    assert isinstance(fig, Figure) and len(fig.axes) == 4 * 5
    assert [fig.axes[5 * r].get_ylabel() for r in range(4)] == [
        "original", "masked 75%", "reconstruction", "reconstruction\n+ visible",
    ]  # fmt: skip
    fig.savefig(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_visible_stats_never_look_at_the_removed_pixels() -> None:
    config = MAEConfig.from_preset("tiny")
    images = _images()
    target = patchify(images, config.patch_size)  # (B, L, P*P*C)
    noise = torch.rand(3, config.num_patches, generator=torch.Generator().manual_seed(2))
    _, mask, _ = random_masking(target, config.mask_ratio, noise)  # (B, L)
    mean, var = visible_patch_stats(target, mask, config.grid_size)
    # Visible patches keep their own statistics.
    visible = ~mask.bool()
    torch.testing.assert_close(mean[..., 0][visible], target.mean(-1)[visible])
    torch.testing.assert_close(var[..., 0][visible], target.var(-1)[visible])
    # Changing what is hidden changes nothing.
    scrambled = target + 5 * torch.randn_like(target) * mask[..., None]
    mean2, var2 = visible_patch_stats(scrambled, mask, config.grid_size)
    torch.testing.assert_close(mean2, mean)
    torch.testing.assert_close(var2, var)
    # With the true statistics instead, they would have changed.
    assert not torch.allclose(scrambled.mean(-1), target.mean(-1))


def test_visible_stats_are_exact_when_every_patch_has_the_same_statistics() -> None:
    config = MAEConfig.from_preset("tiny")
    one = torch.randn(1, 1, 3 * config.patch_size**2)  # (1, 1, P*P*C)
    target = one.expand(2, config.num_patches, -1)  # every patch identical
    mask = torch.zeros(2, config.num_patches)
    mask[:, ::2] = 1
    mean, var = visible_patch_stats(target, mask, config.grid_size)
    torch.testing.assert_close(mean, target.mean(-1, keepdim=True))
    torch.testing.assert_close(var, target.var(-1, keepdim=True))


def test_honest_pictures_keep_the_visible_patches_and_reject_unknown_stats() -> None:
    config = MAEConfig.from_preset("tiny")
    model = PerfectMAE(config)
    images = _images()
    noise = torch.rand(3, config.num_patches, generator=torch.Generator().manual_seed(1))
    parts = reconstruct_images(model, images, noise, stats="visible")
    keep = unpatchify(
        (1 - parts["mask"])[..., None].expand(-1, -1, 3 * config.patch_size**2),
        config.patch_size,
        config.image_size,
    )  # (B, C, H, W), 1 = visible
    torch.testing.assert_close(parts["reconstruction"] * keep, parts["original"] * keep)
    with pytest.raises(ValueError, match="stats must be one of"):
        reconstruct_images(model, images, noise, stats="oracle")


def _texts(fig: Figure) -> str:
    return "\n".join(text.get_text() for ax in fig.axes for text in ax.texts)


def test_architecture_prints_the_letters_and_a_configs_numbers(tmp_path: Path) -> None:
    symbolic = _texts(draw_architecture())
    for shape in ("(B, C, H, W)", "(B, L, P·P·C)", "(B, 1+K, D)", "(B, 1+L, E)", "(B, L)"):
        assert shape in symbolic
    assert "= (B," not in symbolic  # no numbers without a config
    config = MAEConfig.from_preset("cpu")
    fig = draw_architecture(config)
    text = _texts(fig)
    k, length = config.num_visible, config.num_patches
    assert f"(B, 1+K, D)\n= (B, {1 + k}, {config.embed_dim})" in text
    assert f"(B, 1+L, E)\n= (B, {1 + length}, {config.decoder_embed_dim})" in text
    assert f"(B, L, P·P·C)\n= (B, {length}, {config.patch_dim})" in text
    assert f"{config.depth} blocks" in text and f"{config.decoder_depth} blocks" in text
    assert "75% removed" in text and "normalised" in text
    assert architecture_shapes(config)["encoder"] == "(B, 1+K, D)\n= (B, 17, 128)"
    fig.savefig(tmp_path / "architecture.png")
    assert (tmp_path / "architecture.png").read_bytes()[:4] == b"\x89PNG"

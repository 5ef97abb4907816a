"""Tests of `mae_tutorial.reconstruction`: a perfect prediction must reproduce the images exactly,
and the honest (visible-statistics) pictures never look at the removed pixels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mae_tutorial.config import MAEConfig
from mae_tutorial.data import denormalize
from mae_tutorial.losses import normalize_patches
from mae_tutorial.masking import random_masking
from mae_tutorial.model import MAEOutput
from mae_tutorial.patches import patchify, unpatchify
from mae_tutorial.reconstruction import MASK_GREY, reconstruct_images, visible_patch_stats


class PerfectMAE(nn.Module):
    """Predicts every patch exactly (as the loss target), so the pictures can be checked."""

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(
        self,
        images: torch.Tensor,
        noise: torch.Tensor | None = None,
        mask_ratio: float | None = None,
    ) -> MAEOutput:
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        target = patchify(images, self.config.patch_size)  # (B, L, P*P*C)
        _, mask, _ = random_masking(target, ratio, noise)  # (B, L)
        pred = normalize_patches(target) if self.config.norm_pix_loss else target
        return MAEOutput(loss=torch.zeros(()), pred=pred, mask=mask)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_a_perfect_prediction_reproduces_the_images(make_pixel_images, norm_pix: bool) -> None:
    config = MAEConfig.from_preset("tiny", norm_pix_loss=norm_pix)
    model = PerfectMAE(config).train()
    images = make_pixel_images()
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


def test_visible_stats_never_look_at_the_removed_pixels(make_pixel_images) -> None:
    config = MAEConfig.from_preset("tiny")
    images = make_pixel_images()
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


def test_honest_pictures_keep_the_visible_patches_and_reject_unknown_stats(
    make_pixel_images,
) -> None:
    config = MAEConfig.from_preset("tiny")
    model = PerfectMAE(config)
    images = make_pixel_images()
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


def test_other_mask_ratios_run_the_models_own_parts(make_pixel_images, reference) -> None:
    images = make_pixel_images(2)
    noise = torch.rand(2, reference.config.num_patches, generator=torch.Generator().manual_seed(3))
    own = reconstruct_images(reference, images, noise, stats="visible")
    same = reconstruct_images(reference, images, noise, stats="visible", mask_ratio=0.75)
    for key in ("pasted", "mask", "loss"):
        torch.testing.assert_close(same[key], own[key])
    low = reconstruct_images(reference, images, noise, mask_ratio=0.25)["mask"]
    high = reconstruct_images(reference, images, noise, mask_ratio=0.9)["mask"]
    assert low.sum() == 2 * 16 and high.sum() == 2 * (64 - 6)
    assert torch.all(high >= low)  # one noise: a higher ratio removes a superset

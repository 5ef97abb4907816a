"""Tests for mae_tutorial.patches: patchify/unpatchify layout and round trip, PatchEmbed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mae_tutorial.config import PRESETS, MAEConfig
from mae_tutorial.patches import PatchEmbed, patchify, unpatchify


def patchify_by_loops(images: torch.Tensor, p: int) -> torch.Tensor:
    """`b c (h p1) (w p2) -> b (h w) (p1 p2 c)` written out index by index, independently of einops."""
    batch, chans, height, width = images.shape
    grid_h, grid_w = height // p, width // p
    out = torch.empty(batch, grid_h * grid_w, p * p * chans, dtype=images.dtype)
    for b in range(batch):
        for i in range(grid_h):
            for j in range(grid_w):
                for p1 in range(p):
                    for p2 in range(p):
                        for c in range(chans):
                            out[b, i * grid_w + j, (p1 * p + p2) * chans + c] = images[
                                b, c, i * p + p1, j * p + p2
                            ]
    return out


@pytest.mark.parametrize(
    ("batch", "chans", "height", "width", "p"),
    [(2, 3, 32, 32, 4), (1, 3, 32, 32, 8), (3, 1, 8, 12, 2), (2, 2, 6, 9, 3), (1, 3, 4, 4, 4)],
)
def test_patchify_shape(batch: int, chans: int, height: int, width: int, p: int) -> None:
    patches = patchify(torch.randn(batch, chans, height, width), p)
    assert patches.shape == (batch, (height // p) * (width // p), p * p * chans)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_patchify_shape_for_presets(name: str) -> None:
    config = PRESETS[name]
    images = torch.randn(2, config.in_chans, config.image_size, config.image_size)
    patches = patchify(images, config.patch_size)
    assert patches.shape == (2, config.num_patches, config.patch_dim)
    assert unpatchify(patches, config.patch_size, config.image_size).shape == images.shape


@pytest.mark.parametrize(
    ("chans", "height", "width", "p"), [(3, 8, 8, 2), (2, 6, 9, 3), (3, 4, 8, 2)]
)
def test_layout_matches_the_einops_pattern_by_loops(
    chans: int, height: int, width: int, p: int
) -> None:
    images = torch.randn(2, chans, height, width)
    assert torch.equal(patchify(images, p), patchify_by_loops(images, p))


def test_layout_on_a_readable_example() -> None:
    # One 2-channel 4x4 image; channel 0 holds 0..15 row by row, channel 1 holds 100..115.
    plane = torch.arange(16.0).reshape(4, 4)
    images = torch.stack([plane, plane + 100])[None]  # (1, 2, 4, 4)
    patches = patchify(images, 2)  # (1, 4, 8)
    # Patch 1 is grid row 0, column 1: pixels (0,2), (0,3), (1,2), (1,3), channels interleaved.
    assert patches[0, 1].tolist() == [2, 102, 3, 103, 6, 106, 7, 107]
    # Patch 2 is grid row 1, column 0 (patches are numbered row by row).
    assert patches[0, 2].tolist() == [8, 108, 9, 109, 12, 112, 13, 113]


@pytest.mark.parametrize(
    ("chans", "height", "width", "p"), [(3, 32, 32, 4), (3, 16, 24, 4), (1, 6, 15, 3)]
)
def test_unpatchify_inverts_patchify_exactly(chans: int, height: int, width: int, p: int) -> None:
    images = torch.randn(2, chans, height, width)
    size = height if height == width else (height, width)
    assert torch.equal(unpatchify(patchify(images, p), p, size), images)


def test_patchify_inverts_unpatchify_exactly() -> None:
    patches = torch.randn(2, 12, 4 * 4 * 3)
    assert torch.equal(patchify(unpatchify(patches, 4, (12, 16)), 4), patches)


def test_patchify_rejects_indivisible_sizes() -> None:
    with pytest.raises(ValueError, match="30"):
        patchify(torch.randn(1, 3, 30, 32), 4)
    with pytest.raises(ValueError, match="patch_size=4"):
        patchify(torch.randn(1, 3, 32, 30), 4)


def test_patchify_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"\(3, 32, 32\)"):
        patchify(torch.randn(3, 32, 32), 4)


def test_unpatchify_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="30"):
        unpatchify(torch.randn(1, 64, 48), 4, 30)
    with pytest.raises(ValueError, match=r"\(1, 63, 48\)"):
        unpatchify(torch.randn(1, 63, 48), 4, 32)
    with pytest.raises(ValueError, match="50"):
        unpatchify(torch.randn(1, 64, 50), 4, 32)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_patch_embed_shapes(name: str) -> None:
    config = PRESETS[name]
    embed = PatchEmbed(config.patch_size, config.in_chans, config.embed_dim)
    images = torch.randn(2, config.in_chans, config.image_size, config.image_size)
    assert embed(images).shape == (2, config.num_patches, config.embed_dim)
    subset = patchify(images, config.patch_size)[:, :5]  # (2, 5, P*P*C)
    assert embed.embed_patches(subset).shape == (2, 5, config.embed_dim)
    assert embed.conv_weight().shape == (
        config.embed_dim,
        config.in_chans,
        config.patch_size,
        config.patch_size,
    )


@pytest.mark.parametrize(
    ("chans", "height", "width", "p", "dim"), [(3, 32, 32, 4, 16), (2, 12, 8, 4, 8)]
)
def test_patch_embed_equals_a_strided_conv(
    chans: int, height: int, width: int, p: int, dim: int
) -> None:
    embed = PatchEmbed(p, chans, dim)
    with torch.no_grad():
        embed.proj.bias.normal_()  # a zero bias would hide a bias mix-up
    conv = torch.nn.Conv2d(chans, dim, kernel_size=p, stride=p)
    with torch.no_grad():
        conv.weight.copy_(embed.conv_weight())
        conv.bias.copy_(embed.proj.bias)
    images = torch.randn(2, chans, height, width)
    expected = conv(images).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, L, D)
    torch.testing.assert_close(embed(images), expected, atol=1e-5, rtol=1e-5)
    # And the functional form, independently of the module.
    functional = F.conv2d(images, embed.conv_weight(), embed.proj.bias, stride=p)
    torch.testing.assert_close(
        embed(images), functional.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5
    )


def test_patch_embed_embeds_patchified_input() -> None:
    config = MAEConfig.from_preset("tiny")
    embed = PatchEmbed(config.patch_size, config.in_chans, config.embed_dim)
    images = torch.randn(2, config.in_chans, config.image_size, config.image_size)
    patches = patchify(images, config.patch_size)
    torch.testing.assert_close(embed(images), embed.proj(patches))


def test_patch_embed_rejects_wrong_channels() -> None:
    embed = PatchEmbed(4, 3, 16)
    with pytest.raises(ValueError, match=r"3.*\(2, 1, 32, 32\)"):
        embed(torch.randn(2, 1, 32, 32))

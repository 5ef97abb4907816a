"""Tests of `mae_tutorial.attention_weights`: the weights read from the running model reproduce each
block's fused attention, and the mean attention distance of known patterns."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch import nn

from mae_tutorial.attention_weights import (
    attention_distance,
    encoder_attention,
    mean_attention_distance,
    patch_attention,
    patch_distances,
)
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.runtime import seeded


def test_attention_weights_reproduce_each_blocks_fused_attention(
    make_pixel_images, reference
) -> None:
    images = make_pixel_images(4)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (input, output) of each Attention

    def record(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen.append((args[0], output))

    attns = [block.attn for block in reference.encoder.blocks]
    assert all(attn.fused for attn in attns)  # the model runs F.scaled_dot_product_attention
    handles = [attn.register_forward_hook(record) for attn in attns]
    reference.train()
    try:
        weights = encoder_attention(reference, images)
    finally:
        for handle in handles:
            handle.remove()
    assert all(m.training for m in reference.modules())  # modes restored
    reference.eval()
    assert all(not attn._forward_hooks for attn in attns)  # its hooks are gone
    config = reference.config
    n, h = 1 + config.num_patches, config.num_heads
    assert len(weights) == config.depth == len(seen)
    for w, attn, (x, output) in zip(weights, attns, seen):
        assert w.shape == (4, h, n, n)
        torch.testing.assert_close(w.sum(-1), torch.ones(4, h, n))
        with torch.no_grad():
            v = rearrange(attn.qkv(x), "b n (three h d) -> three b h n d", three=3, h=h)[2]
            mixed = rearrange(w @ v, "b h n d -> b n (h d)")  # (B, 1 + L, D)
            torch.testing.assert_close(attn.proj(mixed), output, atol=1e-5, rtol=0)


def test_encoder_attention_takes_an_encoder_or_a_model_and_rejects_others(
    make_pixel_images, reference
) -> None:
    images = make_pixel_images(2)
    for one, two in zip(
        encoder_attention(reference, images), encoder_attention(reference.encoder, images)
    ):
        torch.testing.assert_close(one, two)
    with pytest.raises(TypeError, match="expected a MaskedAutoencoder"):
        encoder_attention(nn.Linear(2, 2), images)


def test_attention_distance_of_known_patterns() -> None:
    grid, p = 4, 8
    length = grid * grid
    dist = patch_distances(grid, p)
    assert dist.shape == (length, length) and dist[0, 1] == p and dist[0, 5] == p * 2**0.5

    def with_cls(patches: torch.Tensor, cls_share: float) -> torch.Tensor:
        w = torch.zeros(1, 1, 1 + length, 1 + length)
        w[..., 1:, 1:] = (1 - cls_share) * patches
        w[..., 1:, 0] = cls_share
        w[..., 0, :] = 1 / (1 + length)
        return w

    assert attention_distance(with_cls(torch.eye(length), 0.0), p).item() == 0
    uniform = torch.full((length, length), 1 / length)
    for share in (0.0, 0.9):  # the share sent to the cls token does not count
        torch.testing.assert_close(
            attention_distance(with_cls(uniform, share), p), dist.mean().view(1, 1)
        )
    right = torch.zeros(length, length)  # every patch looks at its right neighbour, or the left one
    for i in range(length):
        right[i, i + 1 if i % grid < grid - 1 else i - 1] = 1
    torch.testing.assert_close(
        attention_distance(with_cls(right, 0.5), p), torch.full((1, 1), float(p))
    )


def test_patch_attention_picks_the_cls_row_or_averages_the_patch_rows() -> None:
    w = torch.rand(2, 3, 5, 5).softmax(-1)
    torch.testing.assert_close(patch_attention(w, "cls"), w[:, :, 0, 1:])
    torch.testing.assert_close(patch_attention(w, "mean"), w[:, :, 1:, 1:].mean(2))
    with pytest.raises(ValueError, match="query must be one of"):
        patch_attention(w, "max")


def test_the_reference_attends_more_locally_than_random_init(make_pixel_images, reference) -> None:
    images = make_pixel_images(8)
    trained = mean_attention_distance(reference, images)
    with seeded(0):
        random_init = MaskedAutoencoder(reference.config)
    untrained = mean_attention_distance(random_init, images)
    config = reference.config
    assert trained.shape == untrained.shape == (config.depth, config.num_heads)
    uniform = patch_distances(config.grid_size, config.patch_size).mean()
    assert (untrained - uniform).abs().max() < 1.5  # random init spreads attention almost evenly
    # Its late blocks look nearer, even on these noise images (on CIFAR-10 the gap is wider).
    assert trained[-3:].mean() < untrained[-3:].mean() - 1

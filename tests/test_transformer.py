"""Tests for mae_tutorial.transformer: Mlp, DropPath and the pre-norm Block."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mae_tutorial.config import PRESETS
from mae_tutorial.transformer import Block, DropPath, Mlp


def randomised(module: torch.nn.Module) -> torch.nn.Module:
    """Non-default values everywhere (LayerNorm weights included), so mix-ups cannot hide."""
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(std=0.3)
    return module


def test_mlp_shape_and_formula() -> None:
    mlp = randomised(Mlp(8, 20))
    x = torch.randn(2, 5, 8)
    out = mlp(x)
    assert out.shape == (2, 5, 8)
    hidden = F.gelu(x @ mlp.fc1.weight.T + mlp.fc1.bias)  # exact (erf) GELU, as nn.GELU()
    assert mlp.fc1.weight.shape == (20, 8)
    torch.testing.assert_close(out, hidden @ mlp.fc2.weight.T + mlp.fc2.bias)


def test_mlp_acts_on_each_token_alone() -> None:
    mlp = randomised(Mlp(8, 16))
    x = torch.randn(1, 4, 8)
    torch.testing.assert_close(mlp(x)[0, 2], mlp(x[:, 2:3])[0, 0])


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_drop_path_is_identity_in_eval(p: float) -> None:
    drop = DropPath(p).eval()
    x = torch.randn(16, 3, 4)
    assert torch.equal(drop(x), x)


def test_drop_path_zero_is_identity_in_training() -> None:
    drop = DropPath(0.0).train()
    x = torch.randn(16, 3, 4)
    assert torch.equal(drop(x), x)


def test_drop_path_drops_whole_samples_and_rescales_the_rest() -> None:
    drop = DropPath(0.5).train()
    x = torch.randn(256, 3, 4)
    out = drop(x)
    assert out.shape == x.shape
    dropped = (out == 0).flatten(1).all(dim=1)  # (B,)
    kept = torch.isclose(out, 2 * x).flatten(1).all(dim=1)  # (B,) scaled by 1 / (1 - p) = 2
    assert (dropped | kept).all(), "every sample is either dropped whole or kept whole"
    assert 0 < dropped.sum() < 256
    assert 64 < dropped.sum() < 192  # about half, not a handful (binomial sd is 8)


def test_drop_path_keeps_the_expectation() -> None:
    drop = DropPath(0.25).train()
    x = torch.ones(20000, 1)
    assert drop(x).mean().item() == pytest.approx(1.0, abs=0.05)
    assert "p=0.25" in repr(drop)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_block_shapes(name: str) -> None:
    config = PRESETS[name]
    for dim, heads, hidden in [
        (config.embed_dim, config.num_heads, config.mlp_hidden_dim),
        (config.decoder_embed_dim, config.decoder_num_heads, config.decoder_mlp_hidden_dim),
    ]:
        block = Block(dim, heads, hidden, config.layer_norm_eps)
        assert block(torch.randn(2, 1 + config.num_patches, dim)).shape == (
            2,
            1 + config.num_patches,
            dim,
        )
        assert block.mlp.fc1.out_features == hidden
        assert block.norm1.eps == config.layer_norm_eps


def test_block_is_pre_norm_residual() -> None:
    block = randomised(Block(16, 2, 32, layer_norm_eps=1e-6))
    x = torch.randn(2, 5, 16)
    h = x + block.attn(F.layer_norm(x, (16,), block.norm1.weight, block.norm1.bias, 1e-6))
    expected = h + block.mlp(F.layer_norm(h, (16,), block.norm2.weight, block.norm2.bias, 1e-6))
    torch.testing.assert_close(block(x), expected)


def test_block_drop_path_only_acts_in_training() -> None:
    block = randomised(Block(16, 2, 32, drop_path=0.5))
    plain = copy.deepcopy(block)
    plain.drop_path = DropPath(0.0)
    x = torch.randn(64, 5, 16)
    block.eval()
    torch.testing.assert_close(block(x), plain(x))
    block.train()
    out = block(x)
    # With both branches dropped a sample passes through unchanged; with p = 0.5 that is 1 in 4.
    unchanged = (out == x).flatten(1).all(dim=1)
    assert 0 < unchanged.sum() < 64


def test_block_gradients_reach_every_parameter() -> None:
    block = randomised(Block(16, 2, 32))
    block(torch.randn(2, 5, 16)).square().sum().backward()
    for name, param in block.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_block_rejects_width_not_divisible_by_heads() -> None:
    with pytest.raises(ValueError, match="100.*3"):
        Block(100, 3, 400)

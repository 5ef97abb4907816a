"""Tests for mae_tutorial.attention: the explicit formula, the fused path, and multi-head attention."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import mae_tutorial.attention as attention_module
from mae_tutorial.attention import Attention, attention_explicit, attention_weights
from mae_tutorial.config import PRESETS


def attention_by_hand(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-head self-attention computed head by head from the qkv weights split by hand.

    The fused qkv projection's rows are q, then k, then v; within each, head i owns rows
    i*d .. (i+1)*d. Returns the output (B, N, dim) and the weights (B, h, N, N).
    """
    dim = x.shape[-1]
    heads = attn.num_heads
    d = dim // heads
    w, b = attn.qkv.weight, attn.qkv.bias  # (3 * dim, dim), (3 * dim,)
    w_q, w_k, w_v = w[:dim], w[dim : 2 * dim], w[2 * dim :]
    b_q, b_k, b_v = b[:dim], b[dim : 2 * dim], b[2 * dim :]
    outs, maps = [], []
    for i in range(heads):
        rows = slice(i * d, (i + 1) * d)
        q = x @ w_q[rows].T + b_q[rows]  # (B, N, d)
        k = x @ w_k[rows].T + b_k[rows]
        v = x @ w_v[rows].T + b_v[rows]
        scores = torch.einsum("bnd,bmd->bnm", q, k) / math.sqrt(d)  # (B, N, N)
        weights = torch.exp(scores - scores.amax(-1, keepdim=True))
        weights = weights / weights.sum(-1, keepdim=True)
        maps.append(weights)
        outs.append(weights @ v)  # (B, N, d)
    concat = torch.cat(outs, dim=-1)  # (B, N, dim), heads side by side
    return concat @ attn.proj.weight.T + attn.proj.bias, torch.stack(maps, dim=1)


def randomised(attn: Attention, std: float = 0.3) -> Attention:
    """Give every weight and bias fresh normal values, so a bias or head mix-up cannot hide."""
    with torch.no_grad():
        for param in attn.parameters():
            param.normal_(std=std)
    return attn


def test_attention_weights_shape_and_rows_sum_to_one() -> None:
    q, k = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4)
    weights = attention_weights(q, k)
    assert weights.shape == (2, 3, 5, 7)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 5))


def test_attention_weights_are_the_scaled_softmax() -> None:
    q, k = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    scores = torch.tensor(
        [
            [sum(q[0, 0, i, c] * k[0, 0, j, c] for c in range(4)) / 2.0 for j in range(3)]
            for i in range(3)
        ]
    )
    expected = scores.exp() / scores.exp().sum(-1, keepdim=True)
    torch.testing.assert_close(attention_weights(q, k)[0, 0], expected)


def test_attention_explicit_equals_pytorch_fused() -> None:
    q, k, v = (torch.randn(2, 3, 6, 8) for _ in range(3))
    out = attention_explicit(q, k, v)
    assert out.shape == (2, 3, 6, 8)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("dim", "heads"), [(32, 2), (128, 4), (192, 3), (12, 1)])
def test_attention_shape(dim: int, heads: int) -> None:
    attn = Attention(dim, heads)
    assert attn(torch.randn(2, 17, dim)).shape == (2, 17, dim)
    assert attn.attention_map(torch.randn(2, 17, dim)).shape == (2, heads, 17, 17)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_fused_and_explicit_paths_agree(name: str) -> None:
    config = PRESETS[name]
    # Weights at the scale the model initialises them (xavier-uniform is about 1 / sqrt(dim)).
    fused = randomised(Attention(config.embed_dim, config.num_heads), std=config.embed_dim**-0.5)
    assert fused.fused
    explicit = copy.deepcopy(fused)
    explicit.fused = False
    x = torch.randn(2, 1 + config.num_patches, config.embed_dim)
    torch.testing.assert_close(fused(x), explicit(x), atol=1e-5, rtol=1e-5)


def test_cpu_autocast_takes_the_explicit_path_and_agrees_with_the_fused_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Under CPU bf16 autocast a fused module must route through `attention_explicit` (the fused
    # kernel's backward is slow there), and still compute what the fused path does in fp32.
    calls = []

    def counting(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        calls.append(q.dtype)
        return attention_explicit(q, k, v)

    monkeypatch.setattr(attention_module, "attention_explicit", counting)
    attn = randomised(Attention(64, 4), std=64**-0.5)
    assert attn.fused
    x = torch.randn(2, 17, 64)
    fused = attn(x)  # fp32: the fused kernel
    assert calls == []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explicit = attn(x)
    assert calls == [torch.bfloat16]
    torch.testing.assert_close(explicit.float(), fused, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("fused", [True, False])
def test_attention_equals_a_hand_computation(fused: bool) -> None:
    attn = randomised(Attention(24, 3, fused=fused))
    x = torch.randn(2, 7, 24)
    expected, _ = attention_by_hand(attn, x)
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_attention_map_equals_a_hand_computation_and_rows_sum_to_one() -> None:
    attn = randomised(Attention(24, 3))
    x = torch.randn(2, 7, 24)
    weights = attn.attention_map(x)
    _, expected = attention_by_hand(attn, x)
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 7))


def test_attention_mixes_tokens() -> None:
    # Changing one token changes the others' outputs: the layer really attends across tokens.
    attn = randomised(Attention(16, 2))
    x = torch.randn(1, 5, 16)
    y = x.clone()
    y[0, 4] += 1.0
    assert not torch.allclose(attn(x)[0, :4], attn(y)[0, :4])


def test_attention_gradients_reach_every_parameter() -> None:
    attn = randomised(Attention(16, 2))
    attn(torch.randn(2, 5, 16)).square().sum().backward()
    for name, param in attn.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_attention_rejects_width_not_divisible_by_heads() -> None:
    with pytest.raises(ValueError, match="100.*3"):
        Attention(100, 3)

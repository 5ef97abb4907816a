# Generated from notebooks/02_attention.ipynb by `make export`; edit the notebook, not this file.
"""Multi-head self-attention, written out and fused.

Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V, computed for h heads of width d = D / h at once.
`attention_explicit` is the formula line by line (for teaching and for attention maps);
`F.scaled_dot_product_attention` computes the same thing without storing the (N x N) weights, and is
what `Attention` uses by default.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)): how much each query token attends to each key token.

    Shapes:
        q, k: (B, h, N, d) -> (B, h, N, N), each row summing to 1.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, h, N, N)
    return scores.softmax(dim=-1)


def attention_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention as the equation reads.

    Shapes:
        q, k, v: (B, h, N, d) -> (B, h, N, d).
    """
    return attention_weights(q, k) @ v  # (B, h, N, d)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection, as in the official MAE.

    Args:
        dim: token width (D in the encoder, E in the decoder).
        num_heads: h; must divide `dim`.
        fused: use `F.scaled_dot_product_attention` (default) instead of `attention_explicit`,
            except under CPU autocast (bf16), where the fused kernel's backward is slow: in our
            benchmark it took 38% of a training step, and the explicit form made the step 1.6x
            faster (book/performance.md).

    Shapes:
        x: (B, N, dim) -> (B, N, dim).
    """

    def __init__(self, dim: int, num_heads: int, fused: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.fused = fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qkv = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        return qkv.unbind(0)  # q, k, v: each (B, h, N, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        if self.fused and not (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")):
            out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        else:
            out = attention_explicit(q, k, v)  # (B, h, N, d)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))  # (B, N, dim)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights this layer computes for `x`, for pictures.

        Shapes:
            x: (B, N, dim) -> (B, h, N, N).
        """
        q, k, _ = self._qkv(x)
        return attention_weights(q, k)

# Generated from notebooks/02_attention.ipynb by `make export`; edit the notebook, not this file.
"""The pre-norm transformer block of ViT: x + Attn(LN(x)), then x + MLP(LN(x)).

Encoder and decoder are stacks of the same `Block`; only their widths and depths differ.
"""

from __future__ import annotations

import torch
from torch import nn

from mae_tutorial.attention import Attention


class Mlp(nn.Module):
    """Two linear layers with a GELU between them, applied to every token independently.

    Shapes:
        x: (B, N, dim) -> (B, N, dim).
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (B, N, hidden) -> (B, N, dim)


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a sample's whole residual branch with probability `p`.

    Kept branches are scaled by 1 / (1 - p) so the expected output is unchanged.

    Shapes:
        x: (B, ...) -> (B, ...).
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-norm transformer block.

    Args:
        dim: token width.
        num_heads: attention heads; must divide `dim`.
        mlp_hidden_dim: hidden width of the MLP (4 * dim in ViT).
        layer_norm_eps: LayerNorm epsilon.
        drop_path: stochastic depth rate of both residual branches.

    Shapes:
        x: (B, N, dim) -> (B, N, dim).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden_dim: int,
        layer_norm_eps: float = 1e-6,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.mlp = Mlp(dim, mlp_hidden_dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

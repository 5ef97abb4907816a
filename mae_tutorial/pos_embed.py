# Generated from notebooks/01_patches.ipynb by `make export`; edit the notebook, not this file.
"""Fixed 2-D sin-cos position embeddings, as the MAE paper uses in encoder and decoder.

Half of the D channels encode the patch's row, half its column; each half is the 1-D sin-cos table
of "Attention Is All You Need": sin(pos * w_k) then cos(pos * w_k) with w_k = 1 / 10000^(k / (D/4)).
Row 0 of the table belongs to the cls token and is all zeros.
"""

from __future__ import annotations

import torch


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """1-D sin-cos embedding of integer or real positions.

    Shapes:
        positions: (N,) -> (N, embed_dim), sines in the first half, cosines in the second.
    """
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even for a sin-cos table, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # (embed_dim/2,)
    angles = positions.to(torch.float64)[:, None] * omega[None, :]  # (N, embed_dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (N, embed_dim)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """2-D sin-cos position table for a square grid of patches, numbered row by row.

    Args:
        embed_dim: D; must be divisible by 4.
        grid_size: patches along one side, H / P.
        cls_token: prepend a row of zeros for the cls token.

    Returns:
        A float32 table; the first D/2 channels encode the row, the last D/2 the column.

    Shapes:
        returns (1 + L, D) with cls_token, else (L, D), where L = grid_size**2.
    """
    if embed_dim % 4:
        raise ValueError(
            f"embed_dim must be divisible by 4 for a 2-D sin-cos table, got {embed_dim}"
        )
    coords = torch.arange(grid_size)
    rows = coords.repeat_interleave(grid_size)  # (L,) 0,0,..,1,1,..
    cols = coords.repeat(grid_size)  # (L,) 0,1,..,0,1,..
    table = torch.cat([sincos_1d(embed_dim // 2, rows), sincos_1d(embed_dim // 2, cols)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, embed_dim, dtype=table.dtype), table], dim=0)
    return table.float()  # (1 + L, D)

# Generated from notebooks/03_masking.ipynb by `make export`; edit the notebook, not this file.
"""Which patches the encoder sees: random masking by an argsort of noise.

Every sampling strategy here is expressed as *noise*: a score per patch where low means "keep".
`random_masking` sorts the noise, keeps the K = int(L * (1 - mask_ratio)) lowest, and remembers how to
undo the shuffle (`ids_restore`). Uniform noise gives the paper's random sampling; `block_noise` and
`grid_noise` give the block-wise and grid-wise sampling of the paper's Figure 6 through the same path.

Masks are 1 = removed (masked), 0 = kept (visible), shape (B, L).
"""

from __future__ import annotations

import torch


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Pick tokens by index, per sample.

    Shapes:
        tokens: (B, L, D), ids: (B, N) -> (B, N, D).
    """
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def random_masking(
    tokens: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random subset of tokens per sample, as the MAE paper's implementation does.

    Args:
        tokens: the sequence to mask (patch embeddings, or raw patches).
        mask_ratio: fraction of tokens removed, in (0, 1).
        noise: per-token scores; the lowest K are kept. Uniform in [0, 1) when None. Passing it makes
            masking deterministic, as `ViTMAEForPreTraining(pixel_values, noise=...)` does.

    Returns:
        visible: the kept tokens, in ascending order of their noise.
        mask: 1 = removed (masked), 0 = kept (visible), in the original token order.
        ids_restore: indices that undo the shuffle: `gather(shuffled, ids_restore)` is the original
            order.

    Shapes:
        tokens: (B, L, D), noise: (B, L) -> visible (B, K, D), mask (B, L), ids_restore (B, L),
        with K = int(L * (1 - mask_ratio)).
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio!r}")
    batch, length, _ = tokens.shape
    num_keep = int(length * (1 - mask_ratio))
    if num_keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio} keeps no token out of {length}")
    if noise is None:
        noise = torch.rand(batch, length, device=tokens.device)
    elif noise.shape != (batch, length):
        raise ValueError(f"expected noise of shape {(batch, length)}, got {tuple(noise.shape)}")
    noise = noise.to(tokens.device)

    ids_shuffle = torch.argsort(noise, dim=1)  # (B, L) ascending: the first are kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, L) the inverse permutation
    visible = gather_tokens(tokens, ids_shuffle[:, :num_keep])  # (B, K, D)

    mask = torch.ones(batch, length, device=tokens.device, dtype=tokens.dtype)
    mask[:, :num_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # (B, L) back in the original order
    return visible, mask, ids_restore


def block_noise(
    batch: int,
    grid_size: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Noise for block-wise masking (BEiT style): large square-ish blocks are removed together.

    Random rectangles of patches are marked until at least `mask_ratio` of the grid is covered; the
    marked patches get noise in [1, 2) and the others [0, 1), so `random_masking` removes whole blocks
    first and tops up (or trims) at random to hit the exact ratio.

    Shapes:
        returns (batch, grid_size**2).
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio!r}")
    length = grid_size * grid_size
    target = int(length * mask_ratio)
    marked = torch.zeros(batch, grid_size, grid_size)
    for b in range(batch):  # a handful of blocks per image: cheap, and only used for the ablation
        while marked[b].sum() < target:
            area = int(torch.randint(1, max(2, target // 2 + 1), (1,), generator=generator))
            side_h = max(1, min(grid_size, round(area**0.5)))
            side_w = max(1, min(grid_size, area // side_h))
            top = int(torch.randint(0, grid_size - side_h + 1, (1,), generator=generator))
            left = int(torch.randint(0, grid_size - side_w + 1, (1,), generator=generator))
            marked[b, top : top + side_h, left : left + side_w] = 1
    noise = torch.rand(batch, length, generator=generator) + marked.flatten(1)  # (B, L)
    return noise.to(device) if device is not None else noise


def grid_noise(
    batch: int,
    grid_size: int,
    stride: int = 2,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Noise for grid-wise masking: keep one patch in every `stride` x `stride` cell.

    With stride 2 this keeps 1 of 4 patches (mask ratio 0.75), at a random offset per image.

    Shapes:
        returns (batch, grid_size**2).
    """
    rows = torch.arange(grid_size).repeat_interleave(grid_size)  # (L,)
    cols = torch.arange(grid_size).repeat(grid_size)  # (L,)
    offset = torch.randint(0, stride, (batch, 2), generator=generator)  # (B, 2)
    kept = ((rows[None] % stride) == offset[:, :1]) & ((cols[None] % stride) == offset[:, 1:])
    noise = torch.rand(batch, grid_size * grid_size, generator=generator) + (~kept).float()
    return noise.to(device) if device is not None else noise

"""Tests for mae_tutorial.masking: random masking by argsort of noise, ids_restore, block and grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mae_tutorial.masking import block_noise, gather_tokens, grid_noise, random_masking

RATIOS = [0.15, 0.5, 0.75, 0.9]


def numbered_tokens(batch: int, length: int, dim: int = 3) -> torch.Tensor:
    """Tokens whose values say who they are: token l of sample b is 1000*b + l in every channel.

    Shapes:
        returns (batch, length, dim).
    """
    ids = torch.arange(batch)[:, None] * 1000 + torch.arange(length)[None]  # (B, L)
    return ids[..., None].expand(-1, -1, dim).float()


def masked_neighbours(mask: torch.Tensor, grid: int) -> float:
    """Average number of masked 4-neighbours of a masked patch."""
    m = mask.reshape(-1, 1, grid, grid)  # (B, 1, grid, grid)
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
    neighbours = F.conv2d(m, cross, padding=1)  # (B, 1, grid, grid), zero padding off the grid
    return ((neighbours * m).sum() / m.sum()).item()


def test_gather_tokens_shape_and_values() -> None:
    tokens = numbered_tokens(2, 6)
    ids = torch.tensor([[5, 0, 3], [1, 1, 4]])
    picked = gather_tokens(tokens, ids)
    assert picked.shape == (2, 3, 3)
    assert picked[..., 0].tolist() == [[5, 0, 3], [1001, 1001, 1004]]


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("length", [16, 64, 49])
def test_shapes_and_exact_visible_count(ratio: float, length: int) -> None:
    tokens = torch.randn(4, length, 8)
    visible, mask, ids_restore = random_masking(tokens, ratio)
    keep = int(length * (1 - ratio))
    assert visible.shape == (4, keep, 8)
    assert mask.shape == (4, length) and ids_restore.shape == (4, length)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask.sum(dim=1).tolist() == [length - keep] * 4


def test_visible_tokens_are_the_unmasked_ones() -> None:
    tokens = numbered_tokens(3, 16)
    visible, mask, _ = random_masking(tokens, 0.75)
    for b in range(3):
        kept_ids = set(visible[b, :, 0].long().tolist())
        unmasked_ids = {1000 * b + l for l in range(16) if mask[b, l] == 0}
        assert kept_ids == unmasked_ids  # mask 0 = kept (visible), 1 = removed


@pytest.mark.parametrize("ratio", RATIOS)
def test_ids_restore_inverts_the_shuffle(ratio: float) -> None:
    batch, length = 3, 20
    tokens = numbered_tokens(batch, length)
    visible, mask, ids_restore = random_masking(tokens, ratio)
    placeholder = torch.full((batch, length - visible.shape[1], 3), -1.0)  # (B, L - K, 3)
    restored = gather_tokens(torch.cat([visible, placeholder], dim=1), ids_restore)  # (B, L, 3)
    kept = mask == 0
    assert torch.equal(restored[kept], tokens[kept])  # each visible token back at its own index
    assert (restored[~kept] == -1).all()  # and the placeholders exactly where the mask says removed
    # ids_restore is a permutation of 0..L-1 per sample.
    assert torch.equal(ids_restore.sort(dim=1).values, torch.arange(length).expand(batch, -1))


def test_given_noise_keeps_the_lowest_noise_in_ascending_order() -> None:
    tokens = numbered_tokens(2, 8)
    noise = torch.tensor(
        [[0.9, 0.1, 0.5, 0.3, 0.8, 0.05, 0.7, 0.6], [0.2, 0.4, 0.6, 0.8, 0.1, 0.3, 0.5, 0.7]]
    )
    visible, mask, ids_restore = random_masking(tokens, 0.5, noise=noise)
    # K = 4 lowest noise, first lowest first: the first K of the ascending argsort are kept.
    assert visible[..., 0].tolist() == [[5, 1, 3, 2], [1004, 1000, 1005, 1001]]
    assert mask.tolist() == [[1, 0, 0, 0, 1, 0, 1, 1], [0, 0, 1, 1, 0, 0, 1, 1]]
    assert torch.equal(ids_restore, torch.argsort(torch.argsort(noise, dim=1), dim=1))


def test_given_noise_is_deterministic_and_matches_argsort() -> None:
    tokens = torch.randn(4, 64, 5)
    noise = torch.rand(4, 64)
    first = random_masking(tokens, 0.75, noise=noise)
    second = random_masking(tokens, 0.75, noise=noise.clone())
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    expected = gather_tokens(tokens, torch.argsort(noise, dim=1)[:, :16])
    assert torch.equal(first[0], expected)
    # The kept ones are exactly the 16 lowest-noise tokens of each sample.
    threshold = noise.sort(dim=1).values[:, 15:16]  # (B, 1)
    assert torch.equal(first[1] == 0, noise <= threshold)


def test_without_noise_masks_differ_between_samples_and_calls() -> None:
    tokens = torch.randn(8, 64, 2)
    _, mask_a, _ = random_masking(tokens, 0.75)
    _, mask_b, _ = random_masking(tokens, 0.75)
    assert not torch.equal(mask_a, mask_b)
    assert len({tuple(row.tolist()) for row in mask_a}) == 8


def test_uniform_masking_covers_every_position_about_equally() -> None:
    tokens = torch.zeros(4000, 16, 1)
    _, mask, _ = random_masking(tokens, 0.75)
    frequency = mask.mean(dim=0)  # (L,) each about 0.75
    assert (frequency - 0.75).abs().max() < 0.05


def test_mask_follows_tokens_device_and_dtype() -> None:
    tokens = torch.randn(2, 16, 4, dtype=torch.float64)
    visible, mask, _ = random_masking(tokens, 0.5)
    assert visible.dtype == torch.float64 and mask.dtype == torch.float64


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_bad_mask_ratio_raises(ratio: float) -> None:
    with pytest.raises(ValueError, match=str(ratio).replace(".", r"\.")):
        random_masking(torch.randn(2, 16, 4), ratio)


def test_ratio_that_keeps_nothing_raises() -> None:
    with pytest.raises(ValueError, match="0.9"):
        random_masking(torch.randn(2, 4, 4), 0.9)  # int(4 * 0.1) = 0


@pytest.mark.parametrize("shape", [(2, 15), (3, 16), (2, 16, 1), (16,)])
def test_wrong_noise_shape_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="noise"):
        random_masking(torch.randn(2, 16, 4), 0.75, noise=torch.rand(shape))


def test_block_noise_shape_and_exact_ratio() -> None:
    gen = torch.Generator().manual_seed(0)
    for ratio in (0.5, 0.75):
        noise = block_noise(16, 8, ratio, generator=gen)
        assert noise.shape == (16, 64)
        _, mask, _ = random_masking(torch.zeros(16, 64, 1), ratio, noise=noise)
        assert mask.sum(dim=1).tolist() == [64 - int(64 * (1 - ratio))] * 16


def test_block_noise_is_reproducible_with_a_generator() -> None:
    a = block_noise(4, 8, 0.5, generator=torch.Generator().manual_seed(3))
    b = block_noise(4, 8, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_block_masks_are_more_contiguous_than_random_ones() -> None:
    batch, grid, ratio = 64, 8, 0.5
    tokens = torch.zeros(batch, grid * grid, 1)
    noise = block_noise(batch, grid, ratio, generator=torch.Generator().manual_seed(0))
    _, block_mask, _ = random_masking(tokens, ratio, noise=noise)
    _, random_mask, _ = random_masking(tokens, ratio)
    # Uniform at 50%: about 1.75 of a masked patch's (on average 3.5) neighbours are masked.
    assert masked_neighbours(block_mask, grid) > masked_neighbours(random_mask, grid) + 0.3


def test_block_noise_rejects_bad_ratio() -> None:
    with pytest.raises(ValueError, match="1.5"):
        block_noise(2, 8, 1.5)


def test_grid_noise_keeps_one_patch_per_2x2_cell() -> None:
    batch, grid = 32, 8
    noise = grid_noise(batch, grid, stride=2, generator=torch.Generator().manual_seed(0))
    assert noise.shape == (batch, grid * grid)
    _, mask, _ = random_masking(torch.zeros(batch, grid * grid, 1), 0.75, noise=noise)
    kept = (1 - mask).reshape(batch, grid // 2, 2, grid // 2, 2)  # (B, cell row, 2, cell col, 2)
    assert torch.equal(kept.sum(dim=(2, 4)), torch.ones(batch, grid // 2, grid // 2))
    # And the kept patch sits at the same offset in every cell of an image: a regular grid.
    offsets = kept.permute(0, 1, 3, 2, 4).reshape(batch, -1, 4).argmax(-1)  # (B, cells)
    assert (offsets == offsets[:, :1]).all()
    assert len(offsets[:, 0].unique()) > 1  # the offset is random per image


def test_grid_noise_is_reproducible_with_a_generator() -> None:
    a = grid_noise(4, 8, generator=torch.Generator().manual_seed(5))
    b = grid_noise(4, 8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)

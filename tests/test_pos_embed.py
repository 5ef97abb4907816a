"""Tests for mae_tutorial.pos_embed: the fixed 1-D and 2-D sin-cos position tables."""

from __future__ import annotations

import math

import pytest
import torch

from mae_tutorial.config import PRESETS
from mae_tutorial.pos_embed import sincos_1d, sincos_pos_embed_2d


def test_sincos_1d_shape() -> None:
    assert sincos_1d(16, torch.arange(5)).shape == (5, 16)


def test_sincos_1d_matches_the_transformer_formula_by_hand() -> None:
    # PE(pos, i) = sin(pos / 10000^(2i/D)) in the first half and cos(...) in the second.
    dim = 8
    table = sincos_1d(dim, torch.arange(6))
    for pos, i in [(0, 0), (1, 0), (3, 1), (5, 3), (2, 2)]:
        angle = pos / 10000 ** (2 * i / dim)
        assert table[pos, i].item() == pytest.approx(math.sin(angle), abs=1e-12)
        assert table[pos, dim // 2 + i].item() == pytest.approx(math.cos(angle), abs=1e-12)
    # Two entries spelled out: pos 1, i 0 is sin(1) and cos(1); pos 3, i 1 is sin(3 / 10000^(1/4)).
    assert table[1, 0].item() == pytest.approx(0.8414709848, abs=1e-9)
    assert table[1, 4].item() == pytest.approx(0.5403023059, abs=1e-9)
    assert table[3, 1].item() == pytest.approx(math.sin(0.3), abs=1e-9)


def test_sincos_1d_accepts_real_positions() -> None:
    table = sincos_1d(4, torch.tensor([0.5]))
    assert table[0, 0].item() == pytest.approx(math.sin(0.5))


def test_sincos_1d_rejects_odd_width() -> None:
    with pytest.raises(ValueError, match="7"):
        sincos_1d(7, torch.arange(3))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_2d_shapes_for_presets(name: str) -> None:
    config = PRESETS[name]
    for dim in (config.embed_dim, config.decoder_embed_dim):
        with_cls = sincos_pos_embed_2d(dim, config.grid_size)
        assert with_cls.shape == (1 + config.num_patches, dim)
        assert with_cls.dtype == torch.float32
        assert sincos_pos_embed_2d(dim, config.grid_size, cls_token=False).shape == (
            config.num_patches,
            dim,
        )


def test_2d_cls_row_is_zero_and_the_rest_follows_it() -> None:
    with_cls = sincos_pos_embed_2d(16, 4, cls_token=True)
    without = sincos_pos_embed_2d(16, 4, cls_token=False)
    assert torch.equal(with_cls[0], torch.zeros(16))
    assert torch.equal(with_cls[1:], without)


def test_2d_values_are_bounded() -> None:
    table = sincos_pos_embed_2d(64, 8)
    assert table.min() >= -1 and table.max() <= 1
    assert table.abs().max() > 0.99  # not trivially small either


def test_2d_halves_encode_row_then_column() -> None:
    dim, grid = 32, 5
    table = sincos_pos_embed_2d(dim, grid, cls_token=False).reshape(
        grid, grid, dim
    )  # (row, col, D)
    first, second = table[..., : dim // 2], table[..., dim // 2 :]
    # The first half depends only on the row: equal across columns, different across rows.
    assert torch.equal(first, first[:, :1].expand_as(first))
    assert not torch.equal(first[0], first[1])
    # The second half depends only on the column.
    assert torch.equal(second, second[:1].expand_as(second))
    assert not torch.equal(second[:, 0], second[:, 1])
    # Each half is the 1-D table of that coordinate.
    one_d = sincos_1d(dim // 2, torch.arange(grid)).float()  # (grid, D/2)
    torch.testing.assert_close(first[:, 0], one_d)
    torch.testing.assert_close(second[0], one_d)


def test_2d_rows_are_numbered_row_by_row() -> None:
    dim, grid = 16, 4
    table = sincos_pos_embed_2d(dim, grid, cls_token=False)
    one_d = sincos_1d(dim // 2, torch.arange(grid)).float()
    patch = 6  # grid row 1, column 2
    torch.testing.assert_close(table[patch], torch.cat([one_d[1], one_d[2]]))


def test_2d_distinct_positions_get_distinct_rows() -> None:
    table = sincos_pos_embed_2d(32, 8, cls_token=False)  # (64, 32)
    distances = torch.cdist(table.double(), table.double())
    off_diagonal = distances + torch.eye(64, dtype=torch.float64) * 1e9
    assert off_diagonal.min() > 1e-3


def test_2d_rejects_width_not_divisible_by_4() -> None:
    with pytest.raises(ValueError, match="18"):
        sincos_pos_embed_2d(18, 4)

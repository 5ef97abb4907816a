"""Tests of `mae_tutorial.attention_maps`: one panel per head, and bad block or image indices are
rejected. (`attention_widget` is exercised with the mask-ratio widget in test_viz.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from mae_tutorial.attention_maps import attention_grid, attention_maps
from mae_tutorial.attention_weights import attention_distance_figure
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.runtime import seeded


def test_attention_figures_draw_one_panel_per_head(
    make_pixel_images, reference, tmp_path: Path
) -> None:
    images = make_pixel_images(3)
    config = reference.config
    fig = attention_maps(reference, images)
    assert len(fig.axes) == 3 * (1 + config.num_heads) + 1  # and the colour bar
    assert (
        fig._suptitle.get_text() == f"block {config.depth} of {config.depth}: cls token -> patches"
    )
    assert [ax.get_title() for ax in fig.axes[: 1 + config.num_heads]] == [
        "input",
        *[f"head {i + 1}" for i in range(config.num_heads)],
    ]
    fig.savefig(tmp_path / "maps.png")
    grid = attention_grid(reference, images, index=2, query="mean")
    assert len(grid.axes) == config.depth * (1 + config.num_heads) + 1
    assert "mean over patch queries" in grid._suptitle.get_text()
    with seeded(0):
        random_init = MaskedAutoencoder(reference.config)
    distance = attention_distance_figure(
        {"reference": reference, "random init": random_init}, images
    )
    assert [ax.get_title() for ax in distance.axes] == ["reference", "random init"]
    distance.savefig(tmp_path / "distance.png")
    with pytest.raises(ValueError, match="block must lie in"):
        attention_maps(reference, images, block=config.depth)
    with pytest.raises(ValueError, match="index must lie in"):
        attention_grid(reference, images, index=3)

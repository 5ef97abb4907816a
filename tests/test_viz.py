"""Tests of `mae_tutorial.viz`: the reconstruction grid, the mask-ratio figure and widgets, the
book's figure script, and that every picture still imports from `mae_tutorial.viz`.

The re-exported functions are tested beside the modules that define them (test_reconstruction.py,
test_architecture.py, test_attention_weights.py, test_attention_maps.py)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest
from matplotlib.figure import Figure

import mae_tutorial.viz as viz
from mae_tutorial.attention_maps import attention_widget
from mae_tutorial.config import MAEConfig
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.viz import mask_ratio_figure, mask_ratio_widget, reconstruction_grid

# What viz.py re-exports, by the module that defines it; the rest of `viz.__all__` lives in viz.py.
RE_EXPORTS = {
    "mae_tutorial.reconstruction": (
        "MASK_GREY", "STATS", "image_grid", "png_bytes", "prediction_to_images",
        "reconstruct_images", "visible_patch_stats",
    ),
    "mae_tutorial.architecture": ("architecture_shapes", "draw_architecture"),
    "mae_tutorial.attention_weights": (
        "QUERIES", "attention_distance", "attention_distance_figure", "encoder_attention",
        "encoder_of", "mean_attention_distance", "patch_attention", "patch_distances",
    ),
    "mae_tutorial.attention_maps": ("attention_grid", "attention_maps", "attention_widget"),
}  # fmt: skip
OWN = ("mask_ratio_figure", "mask_ratio_widget", "reconstruction_grid")


def test_every_picture_still_imports_from_viz() -> None:
    re_exported = [name for names in RE_EXPORTS.values() for name in names]
    assert sorted(viz.__all__) == sorted([*re_exported, *OWN])
    for module, names in RE_EXPORTS.items():
        defining = importlib.import_module(module)
        for name in names:
            assert getattr(viz, name) is getattr(defining, name), name
    for name in OWN:
        assert getattr(viz, name).__module__ == "mae_tutorial.viz"


def test_reconstruction_grid_draws_four_rows(make_pixel_images, tmp_path: Path) -> None:
    model = MaskedAutoencoder(MAEConfig.from_preset("tiny"))
    fig = reconstruction_grid(model, make_pixel_images(5))
    assert isinstance(fig, Figure) and len(fig.axes) == 4 * 5
    assert [fig.axes[5 * r].get_ylabel() for r in range(4)] == [
        "original", "masked 75%", "reconstruction", "reconstruction\n+ visible",
    ]  # fmt: skip
    fig.savefig(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_mask_ratio_figure_has_two_rows_per_ratio(make_pixel_images, reference) -> None:
    fig = mask_ratio_figure(reference, make_pixel_images(3), ratios=(0.5, 0.9))
    labels = [fig.axes[3 * r].get_ylabel() for r in range(5)]
    assert labels[:2] == ["original", "masked 50%"] and labels[3] == "masked 90%"
    assert labels[2].startswith("painted\nloss ") and len(fig.axes) == 5 * 3


def test_widgets_redraw_without_blocking_and_offer_only_valid_choices(make_pixel_images) -> None:
    ipywidgets = pytest.importorskip("ipywidgets")
    model = MaskedAutoencoder(MAEConfig.from_preset("tiny"))  # 16 patches: 95% would keep none
    images = make_pixel_images(2)
    box = mask_ratio_widget(model, images)
    assert isinstance(box, ipywidgets.VBox)
    slider, picture = box.children
    assert slider.value == 0.75 and max(slider.options, key=lambda o: o[1])[1] == 0.9
    before = picture.value
    assert before[:4] == b"\x89PNG"
    slider.value = 0.5
    assert picture.value != before
    box = attention_widget(model, images)
    (block, head), query, picture = box.children[0].children, box.children[1], box.children[2]
    assert block.max == model.config.depth and [o[1] for o in head.options] == [-1, 0, 1]
    for control, value in ((head, 1), (block, 1), (query, "mean")):
        before = picture.value
        control.value = value
        assert picture.value != before and picture.value[:4] == b"\x89PNG"


def _make_figures():
    path = Path(__file__).parents[1] / "book" / "make_figures.py"
    spec = importlib.util.spec_from_file_location("make_figures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_figures_draws_what_the_book_holds(tmp_path: Path) -> None:
    make_figures = _make_figures()
    images = Path(make_figures.__file__).parent / "images"
    for name in make_figures.FIGURES:
        assert (images / f"{name}.png").is_file(), f"run `make figures`: {name}.png is missing"
    make_figures.FIGURES["architecture"](tmp_path / "architecture.png")
    assert (tmp_path / "architecture.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="unknown figures"):
        make_figures.main(["no_such_figure"])

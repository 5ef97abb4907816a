"""Pictures of what an MAE does and what a trained one has learned, all importable from here.

`from mae_tutorial.viz import X` works for every picture; the code lives in one module per idea:

- here: reconstructions in the style of the paper's Figures 2-4, at the model's mask ratio or any
  other (`reconstruction_grid`, `mask_ratio_figure`, `mask_ratio_widget`):

      images -> model(images, noise) -> pred (B, L, P*P*C) -> un-normalise per patch -> unpatchify
             -> rows: original | masked | reconstruction | reconstruction with the visible patches

- `mae_tutorial.reconstruction`: the numbers behind them: un-normalising predictions with the
  visible patches' statistics or the hidden patch's own (`prediction_to_images`, `stats`),
  `reconstruct_images`, and `image_grid`, which lays rows of images out.
- `mae_tutorial.architecture`: the architecture at a glance, after the paper's Figure 1
  (`draw_architecture`).
- `mae_tutorial.attention_weights`: per block and head attention weights read from the running
  model (`encoder_attention`, `patch_attention`) and the mean attention distance of Dosovitskiy
  et al. (2021), Figure 7 (`mean_attention_distance`, `attention_distance_figure`).
- `mae_tutorial.attention_maps`: maps of those weights (`attention_maps`, `attention_grid`) and
  `attention_widget`.

Each widget (for a running kernel) has a static figure beside it for the rendered book. Figures are
built with `matplotlib.figure.Figure` directly (no pyplot), so nothing here depends on a display or
on pyplot's global state; `fig.savefig("grid.png")` works anywhere, and a notebook shows a
returned figure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from matplotlib.figure import Figure

from mae_tutorial.architecture import architecture_shapes, draw_architecture
from mae_tutorial.attention_maps import attention_grid, attention_maps, attention_widget
from mae_tutorial.attention_weights import (
    QUERIES,
    attention_distance,
    attention_distance_figure,
    encoder_attention,
    encoder_of,
    mean_attention_distance,
    patch_attention,
    patch_distances,
)
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.reconstruction import (
    MASK_GREY,
    STATS,
    image_grid,
    png_bytes,
    prediction_to_images,
    reconstruct_images,
    visible_patch_stats,
)

if TYPE_CHECKING:
    import ipywidgets as widgets

# Every picture keeps its `mae_tutorial.viz` name; the code lives in the modules above.
__all__ = [
    "MASK_GREY",
    "QUERIES",
    "STATS",
    "architecture_shapes",
    "attention_distance",
    "attention_distance_figure",
    "attention_grid",
    "attention_maps",
    "attention_widget",
    "draw_architecture",
    "encoder_attention",
    "encoder_of",
    "image_grid",
    "mask_ratio_figure",
    "mask_ratio_widget",
    "mean_attention_distance",
    "patch_attention",
    "patch_distances",
    "png_bytes",
    "prediction_to_images",
    "reconstruct_images",
    "reconstruction_grid",
    "visible_patch_stats",
]


def reconstruction_grid(
    model: MaskedAutoencoder,
    images: torch.Tensor,
    noise: torch.Tensor | None = None,
    *,
    title: str | None = None,
    stats: str = "true",
) -> Figure:
    """A grid of MAE reconstructions: one column per image, four rows.

    Rows: the original; the masked input (removed patches grey); the reconstruction of every
    patch; the reconstruction with the visible patches pasted back (the paper's figures). See
    `prediction_to_images` for how normalised-pixel predictions are un-normalised (`stats`).

    Args:
        model: the MAE.
        images: normalised images.
        noise: masking noise; random when None.
        title: figure title; by default the mask ratio and the loss on these images.
        stats: "true" (the hidden patches' own statistics, flattering) or "visible" (honest).

    Returns:
        A matplotlib `Figure` (save it with `fig.savefig(path)`).

    Shapes:
        images: (B, C, H, W), noise: (B, L).
    """
    parts = reconstruct_images(model, images, noise, stats=stats)
    rows = [
        ("original", parts["original"]),
        (f"masked {model.config.mask_ratio:.0%}", parts["masked"]),
        ("reconstruction", parts["reconstruction"]),
        ("reconstruction\n+ visible", parts["pasted"]),
    ]
    if title is None:
        title = f"MAE reconstructions, mask ratio {model.config.mask_ratio:.0%}, loss {float(parts['loss']):.3f}"
    return image_grid(rows, title)


def _fixed_noise(model: MaskedAutoencoder, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Masking noise drawn once, so every mask ratio keeps the lowest-noise patches: a higher
    ratio removes a superset of what a lower one removes.

    Shapes:
        images: (B, C, H, W) -> (B, L).
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(images.shape[0], model.config.num_patches, generator=generator)


def mask_ratio_figure(
    model: MaskedAutoencoder,
    images: torch.Tensor,
    ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9),
    noise: torch.Tensor | None = None,
    *,
    stats: str = "visible",
) -> Figure:
    """What the model paints as more and more of each image is removed: the original, then for
    each ratio the masked input and the prediction pasted into the holes.

    One noise tensor serves every ratio, so each higher ratio removes the patches a lower one
    removed and some more. Predictions are un-normalised with the visible patches' statistics by
    default (`prediction_to_images`, `stats="visible"`): nothing drawn comes from a hidden patch.

    Args:
        model: the MAE (e.g. `pretrained("cifar10-cpu")`).
        images: normalised images.
        ratios: mask ratios, each in (0, 1) and keeping at least one patch.
        noise: masking noise; drawn with seed 0 when None.
        stats: "visible" (honest, the default) or "true" (flattering), see `prediction_to_images`.

    Returns:
        A matplotlib `Figure`; each row's label gives the model's loss on these images.

    Shapes:
        images: (B, C, H, W), noise: (B, L).
    """
    noise = _fixed_noise(model, images) if noise is None else noise
    rows = []
    for ratio in ratios:
        parts = reconstruct_images(model, images, noise, stats=stats, mask_ratio=ratio)
        if not rows:
            rows.append(("original", parts["original"]))
        rows.append((f"masked {ratio:.0%}", parts["masked"]))
        rows.append((f"painted\nloss {float(parts['loss']):.3f}", parts["pasted"]))
    return image_grid(rows, "what the model paints at each mask ratio")


def _ratio_choices(model: MaskedAutoencoder) -> list[float]:
    """Mask ratios 5%, 10%, ..., 95% that keep at least one patch of the model's images."""
    length = model.config.num_patches
    ratios = [round(0.05 * i, 2) for i in range(1, 20)]
    return [r for r in ratios if int(length * (1 - r)) >= 1]


def mask_ratio_widget(
    model: MaskedAutoencoder,
    images: torch.Tensor,
    noise: torch.Tensor | None = None,
    *,
    stats: str = "visible",
) -> widgets.VBox:
    """A mask-ratio slider over what the model paints, for Jupyter and Colab readers.

    Moving the slider reruns the model on the same images with the same noise (see
    `mask_ratio_figure`, its static counterpart for the rendered book). The widget is returned,
    not displayed: make it a cell's last expression. Nothing blocks, so headless runs and nbval
    execute the cell like any other.

    Args:
        model: the MAE.
        images: normalised images (a few: each move redraws them).
        noise: masking noise; drawn with seed 0 when None.
        stats: "visible" (honest, the default) or "true", see `prediction_to_images`.

    Returns:
        An `ipywidgets.VBox` holding the slider and the picture.

    Shapes:
        images: (B, C, H, W), noise: (B, L).
    """
    import ipywidgets

    noise = _fixed_noise(model, images) if noise is None else noise
    choices = _ratio_choices(model)

    def draw(ratio: float) -> bytes:
        parts = reconstruct_images(model, images, noise, stats=stats, mask_ratio=ratio)
        rows = [
            ("original", parts["original"]),
            (f"masked {ratio:.0%}", parts["masked"]),
            ("painted", parts["pasted"]),
        ]
        return png_bytes(
            image_grid(rows, f"mask ratio {ratio:.0%}, loss {float(parts['loss']):.3f}")
        )

    start = min(choices, key=lambda r: abs(r - model.config.mask_ratio))
    slider = ipywidgets.SelectionSlider(
        options=[(f"{r:.0%}", r) for r in choices], value=start, description="mask ratio",
        continuous_update=False,
    )  # fmt: skip
    picture = ipywidgets.Image(value=draw(start), format="png")

    def redraw(change: dict) -> None:
        picture.value = draw(change["new"])

    slider.observe(redraw, names="value")
    return ipywidgets.VBox([slider, picture])

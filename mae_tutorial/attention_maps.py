"""Pictures of what the encoder attends to: one map per block, head and query.

`attention_maps` (one block, every head) and `attention_grid` (every block and head of one
image) draw what `mae_tutorial.attention_weights` reads from the model, as pictures of the
patches over the input image; `attention_widget` selects block, head and query in a running
kernel (the book shows the static figures).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from mae_tutorial.attention_weights import (
    QUERIES,
    encoder_attention,
    encoder_of,
    patch_attention,
)
from mae_tutorial.data import denormalize
from mae_tutorial.reconstruction import png_bytes

if TYPE_CHECKING:
    import ipywidgets as widgets


def _attention_pictures(
    model: nn.Module, images: torch.Tensor, query: str
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The images for display and, per block, each head's patch attention at image resolution.

    Shapes:
        images: (B, C, H, W) -> (B, C, H, W) in [0, 1], depth x (B, h, H, W).
    """
    config = encoder_of(model).config
    size, grid = config.image_size, config.grid_size
    maps = []
    for weights in encoder_attention(model, images):
        values = patch_attention(weights, query)  # (B, h, L)
        values = rearrange(values, "b h (gh gw) -> b h gh gw", gh=grid)  # (B, h, H/P, W/P)
        maps.append(F.interpolate(values, size=(size, size), mode="nearest"))  # (B, h, H, W)
    return denormalize(images.detach().float().cpu()), maps


def _show(ax: Axes, picture: torch.Tensor, title: str | None = None, vmax: float = 1.0):
    """Draw an image (C, H, W) in [0, 1], or a map (H, W) on the colour scale [0, vmax]."""
    if picture.ndim == 3:
        shown = ax.imshow(picture.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
    else:
        shown = ax.imshow(
            picture.numpy(), cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest"
        )
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return shown


def _colour_bar(fig: Figure, shown, axes, length: int) -> None:
    """One colour bar for all the maps of a figure, naming the uniform weight for comparison."""
    bar = fig.colorbar(shown, ax=axes, shrink=0.5, aspect=30)
    bar.set_label(
        f"attention weight\n(uniform: 1/{1 + length} = {1 / (1 + length):.3f})", fontsize=8
    )


_QUERY_WORDS = {"cls": "cls token -> patches", "mean": "mean over patch queries"}


def attention_maps(
    model: nn.Module,
    images: torch.Tensor,
    *,
    block: int = -1,
    query: str = "cls",
    title: str | None = None,
    vmax: float | None = None,
) -> Figure:
    """Where each head of one encoder block looks: one row per image, the input then each head.

    Each map shows the attention each patch receives (`patch_attention`), one patch per square
    (upsampled to the input's size without smoothing), all on one colour scale so that heads and
    images compare; pass the same `vmax` to compare two figures (e.g. trained and random init).

    Args:
        model: a `MaskedAutoencoder`, `ViTClassifier` or `MAEEncoder`.
        images: normalised images.
        block: which encoder block (negative counts from the last, the default).
        query: "cls" or "mean", see `patch_attention`.
        title: the figure's title; by default the block and the query.
        vmax: the attention weight drawn brightest; the largest one drawn when None.

    Returns:
        A matplotlib `Figure`.

    Shapes:
        images: (B, C, H, W).
    """
    shown, maps = _attention_pictures(model, images, query)
    depth = len(maps)
    if not -depth <= block < depth:
        raise ValueError(f"block must lie in [{-depth}, {depth}) for this encoder, got {block!r}")
    number = block % depth + 1
    title = title or f"block {number} of {depth}: {_QUERY_WORDS[query]}"
    length = encoder_of(model).config.num_patches
    return _maps_figure(shown, maps[block], range(maps[block].shape[1]), title, vmax, length)


def _maps_figure(
    shown: torch.Tensor,
    maps: torch.Tensor,
    heads: range | list[int],
    title: str,
    vmax: float | None,
    length: int,
) -> Figure:
    """One row per image: the input, then the maps of the chosen heads, on one colour scale.

    Shapes:
        shown: (B, C, H, W) in [0, 1], maps: (B, h, H, W).
    """
    batch = shown.shape[0]
    vmax = float(maps[:, list(heads)].max()) if vmax is None else vmax
    fig = Figure(figsize=(1.3 * (1 + len(heads)) + 1.2, 1.35 * batch + 0.5), layout="constrained")
    axes = fig.subplots(batch, 1 + len(heads), squeeze=False)
    for row in range(batch):
        _show(axes[row][0], shown[row], "input" if row == 0 else None)
        for col, head in enumerate(heads):
            name = f"head {head + 1}" if row == 0 else None
            drawn = _show(axes[row][1 + col], maps[row, head], name, vmax)
    _colour_bar(fig, drawn, axes, length)
    fig.suptitle(title, fontsize=10)
    return fig


def attention_grid(
    model: nn.Module, images: torch.Tensor, *, index: int = 0, query: str = "cls"
) -> Figure:
    """Every block and head for one image: one row per block (first at the top), one per head,
    all on one colour scale.

    Args:
        model: a `MaskedAutoencoder`, `ViTClassifier` or `MAEEncoder`.
        images: normalised images; only `images[index]` is drawn.
        index: which image.
        query: "cls" or "mean", see `patch_attention`.

    Returns:
        A matplotlib `Figure`, the input in the first column of the first row.

    Shapes:
        images: (B, C, H, W).
    """
    if not 0 <= index < images.shape[0]:
        raise ValueError(f"index must lie in [0, {images.shape[0]}), got {index!r}")
    shown, maps = _attention_pictures(model, images[index : index + 1], query)
    depth, num_heads = len(maps), maps[0].shape[1]
    vmax = max(float(m.max()) for m in maps)
    fig = Figure(figsize=(1.3 * (1 + num_heads) + 1.4, 1.3 * depth + 0.5), layout="constrained")
    axes = fig.subplots(depth, 1 + num_heads, squeeze=False)
    for b in range(depth):
        if b == 0:
            _show(axes[0][0], shown[0], "input")
        else:
            axes[b][0].axis("off")
        for head in range(num_heads):
            name = f"head {head + 1}" if b == 0 else None
            drawn = _show(axes[b][1 + head], maps[b][0, head], name, vmax)
        axes[b][1].set_ylabel(f"block {b + 1}", fontsize=9)
    _colour_bar(fig, drawn, axes, encoder_of(model).config.num_patches)
    fig.suptitle(f"attention per block and head: {_QUERY_WORDS[query]}", fontsize=10)
    return fig


def attention_widget(model: nn.Module, images: torch.Tensor) -> widgets.VBox:
    """Block, head and query selectors over the encoder's attention maps, for Jupyter and Colab.

    The attention is computed once; each choice redraws `attention_maps`'s picture for one block
    and one head (or all heads). Its static counterparts for the rendered book are
    `attention_maps` (one block, every head) and `attention_grid` (one image, every block and
    head). Returned, not displayed; nothing blocks.

    Args:
        model: a `MaskedAutoencoder`, `ViTClassifier` or `MAEEncoder`.
        images: normalised images (a few).

    Returns:
        An `ipywidgets.VBox` holding the selectors and the picture.

    Shapes:
        images: (B, C, H, W).
    """
    import ipywidgets

    length = encoder_of(model).config.num_patches
    pictures = {query: _attention_pictures(model, images, query) for query in QUERIES}
    depth, num_heads = len(pictures["cls"][1]), pictures["cls"][1][0].shape[1]
    block = ipywidgets.IntSlider(value=depth, min=1, max=depth, description="block",
                                 continuous_update=False)  # fmt: skip
    head = ipywidgets.Dropdown(
        options=[("all", -1)] + [(str(i + 1), i) for i in range(num_heads)], value=-1,
        description="head",
    )  # fmt: skip
    query = ipywidgets.ToggleButtons(
        options=[(_QUERY_WORDS[q], q) for q in QUERIES], value="cls", description="query"
    )

    def draw() -> bytes:
        shown, maps = pictures[query.value]
        heads = range(num_heads) if head.value < 0 else [head.value]
        title = f"block {block.value} of {depth}: {_QUERY_WORDS[query.value]}"
        return png_bytes(_maps_figure(shown, maps[block.value - 1], heads, title, None, length))

    picture = ipywidgets.Image(value=draw(), format="png")

    def redraw(change: dict) -> None:
        picture.value = draw()

    for control in (block, head, query):
        control.observe(redraw, names="value")
    return ipywidgets.VBox([ipywidgets.HBox([block, head]), query, picture])

"""The MAE at a glance, in the spirit of the paper's Figure 1: `draw_architecture`.

A schematic image of 4 x 4 patches, whatever the config says, flows through masking, the encoder
(visible patches only), the mask tokens and the decoder; `architecture_shapes` gives the real
shapes of a config in the book's letters (B, L, K, D, E, P, C) to caption it.
"""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

from mae_tutorial.config import MAEConfig

_SIDE = 4  # the schematic image is cut into 4 x 4 patches, whatever the config says
_KEPT = (11, 1, 12, 6)  # the schematic's visible patches, in the kept order random_masking returns
_TOKEN = 1.6  # side of one drawn token
_GAP = 0.25  # space between drawn tokens
_GREYS = {"masked": "0.88", "mask token": "0.55", "cls": "0.15"}


def _patch_colour(index: int) -> tuple[float, float, float]:
    """A distinct colour per schematic patch, smooth across the image like a picture's."""
    row, col = divmod(index, _SIDE)
    return (0.25 + 0.2 * row, 0.3 + 0.18 * col, 0.75 - 0.1 * row)


def _token_column(ax: Axes, x: float, tokens: list[int | str], y_mid: float) -> tuple[float, float]:
    """Draw tokens as a column of squares centred on `y_mid`; return the column's (bottom, top).

    Each token is a patch index (drawn in its colour) or one of `_GREYS`' names.
    """
    height = len(tokens) * (_TOKEN + _GAP) - _GAP
    top = y_mid + height / 2
    for i, token in enumerate(tokens):
        colour = _GREYS[token] if isinstance(token, str) else _patch_colour(token)
        y = top - (i + 1) * _TOKEN - i * _GAP
        ax.add_patch(Rectangle((x - _TOKEN / 2, y), _TOKEN, _TOKEN, facecolor=colour,
                               edgecolor="0.3", linewidth=0.5))  # fmt: skip
    return top - height, top


def _patch_image(ax: Axes, x0: float, y0: float, side: float) -> None:
    """Draw the schematic image as `_SIDE` x `_SIDE` coloured patches."""
    cell = side / _SIDE
    for index in range(_SIDE * _SIDE):
        row, col = divmod(index, _SIDE)
        ax.add_patch(Rectangle((x0 + col * cell, y0 + side - (row + 1) * cell), cell, cell,
                               facecolor=_patch_colour(index), edgecolor="white", linewidth=1.0))  # fmt: skip


def _arrow(ax: Axes, x0: float, x1: float, y: float) -> None:
    ax.add_patch(FancyArrowPatch((x0, y), (x1, y), arrowstyle="-|>", mutation_scale=10,
                                 color="0.25", linewidth=1.0))  # fmt: skip


def _box(ax: Axes, x: float, width: float, y0: float, y1: float, colour: str, text: str) -> None:
    ax.add_patch(FancyBboxPatch((x, y0), width, y1 - y0, boxstyle="round,pad=0.3,rounding_size=0.8",
                                facecolor=colour, edgecolor="0.3", linewidth=0.8))  # fmt: skip
    ax.text(x + width / 2, (y0 + y1) / 2, text, ha="center", va="center", fontsize=9)


def architecture_shapes(config: MAEConfig | None = None) -> dict[str, str]:
    """The tensor shapes the architecture figure prints, in the book's letters.

    With a config, each shape is followed by its numbers, e.g. "(B, 1+K, D) = (B, 17, 128)".
    """
    letters = {
        "image": ("(B, C, H, W)", "(B, {C}, {H}, {H})"),
        "patches": ("(B, L, P·P·C)", "(B, {L}, {PPC})"),
        "mask": ("(B, L)", "(B, {L})"),
        "encoder": ("(B, 1+K, D)", "(B, {K1}, {D})"),
        "decoder": ("(B, 1+L, E)", "(B, {L1}, {E})"),
        "pred": ("(B, L, P·P·C)", "(B, {L}, {PPC})"),
    }
    if config is None:
        return {key: symbolic for key, (symbolic, _) in letters.items()}
    values = dict(
        C=config.in_chans, H=config.image_size, L=config.num_patches, PPC=config.patch_dim,
        K1=1 + config.num_visible, D=config.embed_dim, L1=1 + config.num_patches,
        E=config.decoder_embed_dim,
    )  # fmt: skip
    return {key: f"{sym}\n= {num.format(**values)}" for key, (sym, num) in letters.items()}


def draw_architecture(config: MAEConfig | None = None) -> Figure:
    """The MAE at a glance, drawn by code in the spirit of the paper's Figure 1.

        image -> patches (B, L, P·P·C) -> mask, keep K visible -> encoder on (B, 1+K, D)
        -> decoder_embed to E, mask tokens, unshuffle (B, 1+L, E) -> decoder
        -> prediction (B, L, P·P·C) -> loss on the masked patches only

    The picture is a schematic of 16 patches (4 of them visible, in the shuffled order
    `random_masking` keeps them); the shapes printed are the book's letters (B batch, C channels,
    H image side, P patch side, L patches, K visible patches, D encoder width, E decoder width).

    Args:
        config: when given, its numbers are printed beside the letters and its depths and mask
            ratio in the boxes.

    Returns:
        A matplotlib `Figure` (save it with `fig.savefig("architecture.png")`).

    Shapes:
        none (a drawing); the shapes it prints are `architecture_shapes(config)`.
    """
    shapes = architecture_shapes(config)
    fig = Figure(figsize=(15, 6.2), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 104)
    ax.set_ylim(-8.5, 34.5 + 2.5)
    ax.set_aspect("equal")
    ax.axis("off")
    mid, caption_y, label_y = 16.0, 36.2, -0.2
    visible = set(_KEPT)
    ratio = (
        f"{config.mask_ratio:.0%} removed,\nK = {config.num_visible} kept"
        if config
        else "ratio r removed,\nK kept"
    )
    depth = f"{config.depth} blocks" if config else "blocks"
    decoder_depth = f"{config.decoder_depth} blocks" if config else "blocks"
    d = f"D = {config.embed_dim}" if config else "width D"
    e = f"E = {config.decoder_embed_dim}" if config else "width E"

    def caption(x: float, top: str, bottom: str) -> None:
        ax.text(x, caption_y, top, ha="center", va="top", fontsize=9, fontweight="bold")
        ax.text(x, label_y, bottom, ha="center", va="top", fontsize=8.5, family="monospace")

    # image -> patches
    _patch_image(ax, 1, mid - 5, 10)
    caption(6, "input image", shapes["image"])
    _arrow(ax, 11.8, 15.2, mid)
    all_patches = list(range(_SIDE * _SIDE))
    _token_column(ax, 17, all_patches, mid)
    caption(17, "patchify", shapes["patches"])
    # mask: 1 = removed, 0 = visible
    _arrow(ax, 18.6, 22.0, mid)
    _token_column(ax, 24, [i if i in visible else "masked" for i in all_patches], mid)
    caption(24, f"random mask\n{ratio}", shapes["mask"] + "\n1 = removed")
    # encoder on cls + K visible
    _arrow(ax, 25.6, 29.6, mid)
    _token_column(ax, 31.5, ["cls", *_KEPT], mid)
    ax.text(31.5, mid + 6.2, "embed, + pos,\nkeep K, + cls", ha="center", va="bottom", fontsize=8)
    _arrow(ax, 33.2, 35.8, mid)
    _box(ax, 36.5, 7, mid - 11, mid + 11, "#cfe2f3", f"encoder\n\n{depth}\n{d}")
    _arrow(ax, 44.3, 47.0, mid)
    _token_column(ax, 48.7, ["cls", *_KEPT], mid)
    caption(40, "encoder: visible patches only", shapes["encoder"])
    # decoder_embed, mask tokens, unshuffle
    _arrow(ax, 50.4, 55.6, mid)
    ax.text(53, mid + 1, "decoder_\nembed\nD → E", ha="center", va="bottom", fontsize=8)
    _token_column(ax, 57.5, ["cls", *[i if i in visible else "mask token" for i in all_patches]],
                  mid)  # fmt: skip
    caption(57.5, "+ mask tokens,\nunshuffle", shapes["decoder"])
    _arrow(ax, 59.2, 61.8, mid)
    _box(ax, 62.5, 6, mid - 8, mid + 8, "#fde9d9", f"decoder\n\n{decoder_depth}\n{e}")
    _arrow(ax, 69.3, 71.8, mid)
    _token_column(ax, 73.5, all_patches, mid)
    caption(71, "decoder predicts every patch", shapes["pred"] + "\n(cls dropped)")
    # prediction -> loss on the masked patches
    _arrow(ax, 75.2, 77.8, mid)
    _patch_image(ax, 78.5, mid - 5, 10)
    ax.text(83.5, mid + 6, "unpatchify", ha="center", va="bottom", fontsize=8)
    _arrow(ax, 89.2, 91.5, mid)
    target = "normalised\npixels" if config is None or config.norm_pix_loss else "pixels"
    _box(ax, 92.3, 11, mid - 5, mid + 5, "#e2efd9",
         f"MSE on the\nmasked patches\nonly (mask = 1)\nvs {target}")  # fmt: skip
    caption(97.8, "loss", "mean over B and\nthe L − K removed\npatches")
    legend = [(3, "patch (its own colour)"), ("masked", "removed patch"),
              ("mask token", "mask token (one shared vector)"), ("cls", "cls token")]  # fmt: skip
    for i, (token, text) in enumerate(legend):
        x = 4 + 21 * i
        _token_column(ax, x, [token], -7)
        ax.text(x + 1.5, -7, text, ha="left", va="center", fontsize=8.5)
    drawn = f"drawn: {_SIDE * _SIDE} patches, {len(_KEPT)} kept; the shapes give the real sizes"
    ax.text(103, -7, drawn, ha="right", va="center", fontsize=8.5, style="italic")
    return fig

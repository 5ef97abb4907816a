"""Pictures of what an MAE does: reconstruction grids in the style of the paper's Figures 2-4.

    images -> model(images, noise) -> pred (B, L, P*P*C) -> un-normalise per patch -> unpatchify
           -> rows: original | masked | reconstruction | reconstruction with the visible patches

Figures are built with `matplotlib.figure.Figure` directly (no pyplot), so nothing here depends on
a display or on pyplot's global state; `fig.savefig("grid.png")` works anywhere, and a notebook
shows a returned figure.
"""

from __future__ import annotations

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

from mae_tutorial.config import MAEConfig
from mae_tutorial.data import CIFAR10_MEAN, CIFAR10_STD, denormalize
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.patches import patchify, unpatchify

MASK_GREY = 0.5  # display value of a removed patch


STATS = ("true", "visible")  # where un-normalising takes each patch's mean and variance from


def visible_patch_stats(
    target: torch.Tensor, mask: torch.Tensor, grid_size: int, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and variance as a reader of the visible patches alone would estimate them.

    Visible patches keep their own statistics. A removed patch gets the average of the visible
    patches' statistics weighted by 1 / distance**2 on the patch grid, so its brightness and
    contrast come from its surroundings, never from the hidden pixels.

    Args:
        target: true patch vectors from `patchify`.
        mask: 1 = removed (masked), 0 = visible.
        grid_size: patches per side, H / P.
        eps: variance floor, as in `mae_tutorial.losses.normalize_patches`.

    Shapes:
        target: (B, L, P*P*C), mask: (B, L) -> mean (B, L, 1), var (B, L, 1).
    """
    mean = target.mean(dim=-1)  # (B, L)
    var = target.var(dim=-1)  # (B, L), unbiased as in losses.py
    rows = torch.arange(grid_size, device=target.device).repeat_interleave(grid_size)  # (L,)
    cols = torch.arange(grid_size, device=target.device).repeat(grid_size)  # (L,)
    dist2 = (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2  # (L, L)
    weight = 1.0 / dist2.clamp(min=1).to(target.dtype)  # (L, L); the diagonal is unused
    weight = weight[None] * (1 - mask)[:, None, :]  # (B, L, L): only visible sources count
    weight = weight / weight.sum(dim=-1, keepdim=True).clamp(min=eps)  # (B, L, L)
    removed = mask.bool()  # (B, L)
    mean = torch.where(removed, (weight * mean[:, None, :]).sum(-1), mean)  # (B, L)
    var = torch.where(removed, (weight * var[:, None, :]).sum(-1), var)  # (B, L)
    return mean[..., None], var[..., None]


def prediction_to_images(
    images: torch.Tensor,
    pred: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int,
    norm_pix: bool,
    *,
    stats: str = "true",
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
) -> dict[str, torch.Tensor]:
    """Turn an MAE's prediction into displayable images.

    With normalised-pixel targets (`norm_pix`) the model predicts every patch normalised by its
    own mean and variance, and a picture needs some mean and variance to undo that with:

    - `stats="true"`: those of the true patch at that place. Exact for visible patches; for
      removed ones it borrows two numbers per patch (brightness and contrast) that the model never
      saw, so the picture flatters the model. Unofficial re-implementations draw this way (e.g.
      MAE-pytorch's `run_mae_vis.py`, github.com/pengzhiliang/MAE-pytorch). The official demo
      (`demo/mae_visualize.ipynb` in github.com/facebookresearch/mae) needs neither choice: it
      draws a visualisation model trained with raw pixels as targets, whose predictions are pixels.
    - `stats="visible"`: visible patches keep their own; removed ones get an estimate from the
      visible patches around them (`visible_patch_stats`). Everything shown then comes from what
      the model was given: the honest picture.

    Args:
        images: the normalised images the model saw.
        pred: the model's prediction.
        mask: 1 = removed (masked), 0 = visible.
        patch_size: P.
        norm_pix: whether `pred` is in normalised-patch units.
        stats: "true" or "visible", see above (ignored without `norm_pix`).
        mean, std: the per-channel statistics `images` were normalised with.

    Returns:
        A dict of CPU tensors: "original", "masked" (removed patches grey), "reconstruction" (every
        patch predicted), "pasted" (visible patches from the original, masked ones predicted), all
        (B, C, H, W) in [0, 1]; "mask" (B, L) with 1 = removed (masked), 0 = visible.

    Shapes:
        images: (B, C, H, W), pred: (B, L, P*P*C), mask: (B, L) -> see Returns.
    """
    if stats not in STATS:
        raise ValueError(f"stats must be one of {STATS}, got {stats!r}")
    size = images.shape[-1]
    images, pred, mask = (
        images.float(),
        pred.float().to(images.device),
        mask.float().to(images.device),
    )
    if norm_pix:
        target = patchify(images, patch_size)  # (B, L, P*P*C)
        if stats == "true":
            mu = target.mean(dim=-1, keepdim=True)  # (B, L, 1)
            var = target.var(dim=-1, keepdim=True)  # (B, L, 1), unbiased as in losses.py
        else:
            mu, var = visible_patch_stats(target, mask, size // patch_size)  # (B, L, 1) each
        pred = pred * (var + 1e-6) ** 0.5 + mu  # (B, L, P*P*C) in the images' units
    pixel_mask = unpatchify(mask[..., None].expand_as(pred), patch_size, size)  # (B, C, H, W)
    original = denormalize(images, mean, std)  # (B, C, H, W) in [0, 1]
    reconstruction = denormalize(unpatchify(pred, patch_size, size), mean, std)  # (B, C, H, W)
    return {
        "original": original.cpu(),
        "masked": (original * (1 - pixel_mask) + MASK_GREY * pixel_mask).cpu(),
        "reconstruction": reconstruction.cpu(),
        "pasted": (original * (1 - pixel_mask) + reconstruction * pixel_mask).cpu(),
        "mask": mask.cpu(),
    }


def reconstruct_images(
    model: MaskedAutoencoder,
    images: torch.Tensor,
    noise: torch.Tensor | None = None,
    *,
    stats: str = "true",
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
) -> dict[str, torch.Tensor]:
    """Run the MAE once and turn its prediction into displayable images.

    See `prediction_to_images` for how normalised-pixel predictions are un-normalised (`stats`).

    Args:
        model: the MAE; run in eval mode without gradients, its mode is restored afterwards.
        images: normalised images (`mae_tutorial.data.normalize`).
        noise: masking noise (lowest = kept); random when None.
        stats: "true" (the official demo's way, flattering) or "visible" (honest).
        mean, std: the per-channel statistics `images` were normalised with.

    Returns:
        `prediction_to_images`'s dict plus "loss" (), the model's loss on these images.

    Shapes:
        images: (B, C, H, W), noise: (B, L) -> see Returns.
    """
    device = next(model.parameters()).device
    images = images.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(images, noise=None if noise is None else noise.to(device))
    finally:
        model.train(was_training)
    config = model.config
    parts = prediction_to_images(
        images, out.pred, out.mask, config.patch_size, config.norm_pix_loss,
        stats=stats, mean=mean, std=std,
    )  # fmt: skip
    parts["loss"] = out.loss.detach().float().cpu()
    return parts


def image_grid(rows: list[tuple[str, torch.Tensor]], title: str | None = None) -> Figure:
    """Rows of images, one column per image, each row labelled on the left.

    Args:
        rows: (label, images) pairs; images in [0, 1], the same count in every row.
        title: the figure's title.

    Shapes:
        each images: (B, C, H, W).
    """
    n = rows[0][1].shape[0]
    fig = Figure(figsize=(1.2 * n + 1.2, 1.25 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (label, batch) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(batch[c].permute(1, 2, 0).numpy(), interpolation="nearest")  # (H, W, C)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


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
        stats: "true" (the official demo's way, flattering) or "visible" (honest).

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


# --- The architecture at a glance (in the spirit of the paper's Figure 1) --------------------------

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
    ratio = f"{config.mask_ratio:.0%} removed" if config else "ratio r removed"
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
        x = 4 + 25 * i
        _token_column(ax, x, [token], -7)
        ax.text(x + 1.5, -7, text, ha="left", va="center", fontsize=8.5)
    return fig

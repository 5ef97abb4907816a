"""Pictures of what an MAE does and what a trained one has learned.

- Reconstructions in the style of the paper's Figures 2-4, at the model's mask ratio or any other
  (`reconstruction_grid`, `mask_ratio_figure`):

      images -> model(images, noise) -> pred (B, L, P*P*C) -> un-normalise per patch -> unpatchify
             -> rows: original | masked | reconstruction | reconstruction with the visible patches

- The architecture at a glance, in the spirit of the paper's Figure 1 (`draw_architecture`).
- What the encoder attends to: per block and head attention weights read from the running model
  (`encoder_attention`), maps of them (`attention_maps`, `attention_grid`) and the mean attention
  distance of Dosovitskiy et al. (2021), Figure 7 (`mean_attention_distance`).
- Widgets for a running kernel (`mask_ratio_widget`, `attention_widget`); each has a static figure
  above for the rendered book.

Figures are built with `matplotlib.figure.Figure` directly (no pyplot), so nothing here depends on
a display or on pyplot's global state; `fig.savefig("grid.png")` works anywhere, and a notebook
shows a returned figure.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
from torch import nn

from mae_tutorial.config import MAEConfig
from mae_tutorial.data import CIFAR10_MEAN, CIFAR10_STD, denormalize
from mae_tutorial.losses import masked_mse_loss
from mae_tutorial.model import MAEEncoder, MAEOutput, MaskedAutoencoder
from mae_tutorial.patches import patchify, unpatchify
from mae_tutorial.runtime import eval_mode

if TYPE_CHECKING:
    import ipywidgets as widgets

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


def _forward_at_ratio(
    model: MaskedAutoencoder, images: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None
) -> MAEOutput:
    """`model(images, noise)` with another mask ratio than the one in its config.

    Shapes:
        images: (B, C, H, W), noise: (B, L) -> MAEOutput(loss (), pred (B, L, P*P*C), mask (B, L)).
    """
    config = model.config
    latent, mask, ids_restore = model.encoder.forward_masked(images, mask_ratio, noise)
    pred = model.decoder(latent, ids_restore)  # (B, L, P*P*C)
    target = patchify(images, config.patch_size)  # (B, L, P*P*C)
    loss = masked_mse_loss(pred, target, mask, norm_pix=config.norm_pix_loss)
    return MAEOutput(loss=loss, pred=pred, mask=mask)


def reconstruct_images(
    model: MaskedAutoencoder,
    images: torch.Tensor,
    noise: torch.Tensor | None = None,
    *,
    stats: str = "true",
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
    mask_ratio: float | None = None,
) -> dict[str, torch.Tensor]:
    """Run the MAE once and turn its prediction into displayable images.

    See `prediction_to_images` for how normalised-pixel predictions are un-normalised (`stats`).

    Args:
        model: the MAE; run in eval mode without gradients, its mode is restored afterwards.
        images: normalised images (`mae_tutorial.data.normalize`).
        noise: masking noise (lowest = kept); random when None.
        stats: "true" (the hidden patches' own statistics, flattering) or "visible" (honest).
        mean, std: the per-channel statistics `images` were normalised with.
        mask_ratio: remove this fraction of patches instead of the model's own
            (`model.config.mask_ratio`); the encoder, decoder and loss are the model's.

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
            noise = None if noise is None else noise.to(device)
            if mask_ratio is None:
                out = model(images, noise=noise)
            else:
                out = _forward_at_ratio(model, images, mask_ratio, noise)
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


# --- What the encoder attends to -------------------------------------------------------------------

QUERIES = ("cls", "mean")  # which attention rows become a picture of the patches


def _encoder(model: nn.Module) -> MAEEncoder:
    """The `MAEEncoder` of an MAE or a classifier, or `model` itself when it is one."""
    encoder = getattr(model, "encoder", model)
    if not isinstance(encoder, MAEEncoder):
        raise TypeError(
            f"expected a MaskedAutoencoder, ViTClassifier or MAEEncoder, got {type(model).__name__}"
        )
    return encoder


def encoder_attention(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The attention weights of every encoder block and head, for whole (unmasked) images.

    The encoder runs once, unchanged; a forward hook on each block's `Attention` module takes the
    tokens it receives and asks that module for its own weights (`Attention.attention_map`:
    softmax(q k^T / sqrt(d)) from the module's qkv projection), so the weights are those of the
    model as it runs, not of a copy of its code.

    Args:
        model: a `MaskedAutoencoder`, `ViTClassifier` or `MAEEncoder`; run in eval mode without
            gradients, its modes are restored afterwards.
        images: normalised images (`mae_tutorial.data.normalize`).

    Returns:
        One CPU tensor per block, first block first; row i of a head's matrix is how token i
        (0 = cls, then the L patches in row-major order) spreads its attention over the tokens.

    Shapes:
        images: (B, C, H, W) -> depth x (B, h, 1 + L, 1 + L), each row summing to 1.
    """
    encoder = _encoder(model)
    weights: list[torch.Tensor] = []

    def capture(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        weights.append(module.attention_map(args[0]).cpu())  # (B, h, 1 + L, 1 + L)

    handles = [block.attn.register_forward_hook(capture) for block in encoder.blocks]
    device = next(encoder.parameters()).device
    try:
        with eval_mode(encoder), torch.no_grad():
            encoder(images.to(device))
    finally:
        for handle in handles:
            handle.remove()
    return weights


def patch_attention(weights: torch.Tensor, query: str = "cls") -> torch.Tensor:
    """How much attention each patch receives, as one value per patch.

    Args:
        weights: one block's attention (`encoder_attention`).
        query: "cls" (the cls token's row: what the image-level token looks at) or "mean" (the
            patches' rows averaged: how much an average patch attends to each patch).

    Shapes:
        weights: (B, h, 1 + L, 1 + L) -> (B, h, L), each row summing to at most 1 (the rest goes
        to the cls token).
    """
    if query not in QUERIES:
        raise ValueError(f"query must be one of {QUERIES}, got {query!r}")
    if query == "cls":
        return weights[:, :, 0, 1:]  # (B, h, L)
    return weights[:, :, 1:, 1:].mean(dim=2)  # (B, h, L)


def patch_distances(grid_size: int, patch_size: int) -> torch.Tensor:
    """Distances in pixels between the centres of every two patches of the grid.

    Shapes:
        -> (L, L) with L = grid_size**2, patches in row-major order.
    """
    index = torch.arange(grid_size, dtype=torch.float32)
    rows = index.repeat_interleave(grid_size)  # (L,)
    cols = index.repeat(grid_size)  # (L,)
    dist2 = (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2  # (L, L)
    return patch_size * dist2.sqrt()


def attention_distance(weights: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Mean attention distance (Dosovitskiy et al. 2021, Figure 7) of each image and head.

    For each patch query, the distance in pixels to each patch key weighted by the attention
    between them, averaged over the queries. The cls token has no place in the image, so its row
    and column are left out and each query's weights over the L patches are rescaled to sum to 1:
    a head that sends most of its attention to the cls token is measured by where the rest goes.

    Args:
        weights: one block's attention (`encoder_attention`).
        patch_size: P, so that distances come out in pixels.

    Shapes:
        weights: (B, h, 1 + L, 1 + L) -> (B, h).
    """
    patches = weights[:, :, 1:, 1:]  # (B, h, L, L)
    total = patches.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(patches.dtype).tiny)
    patches = patches / total  # (B, h, L, L), rows sum to 1
    grid_size = int(round(patches.shape[-1] ** 0.5))
    dist = patch_distances(grid_size, patch_size).to(patches)  # (L, L)
    return (patches * dist).sum(dim=-1).mean(dim=-1)  # (B, h)


def mean_attention_distance(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Mean attention distance in pixels of every encoder block and head, averaged over images.

    Small values are local heads (they look at neighbouring patches), large values global ones;
    `patch_distances(...).mean()` is the value of attention spread uniformly over the patches.

    Args:
        model: a `MaskedAutoencoder`, `ViTClassifier` or `MAEEncoder`.
        images: normalised images.

    Shapes:
        images: (B, C, H, W) -> (depth, h).
    """
    patch_size = _encoder(model).config.patch_size
    weights = encoder_attention(model, images)  # depth x (B, h, 1 + L, 1 + L)
    return torch.stack([attention_distance(w, patch_size).mean(dim=0) for w in weights])


def _attention_pictures(
    model: nn.Module, images: torch.Tensor, query: str
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The images for display and, per block, each head's patch attention at image resolution.

    Shapes:
        images: (B, C, H, W) -> (B, C, H, W) in [0, 1], depth x (B, h, H, W).
    """
    config = _encoder(model).config
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
    length = _encoder(model).config.num_patches
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
    _colour_bar(fig, drawn, axes, _encoder(model).config.num_patches)
    fig.suptitle(f"attention per block and head: {_QUERY_WORDS[query]}", fontsize=10)
    return fig


def attention_distance_figure(models: dict[str, nn.Module], images: torch.Tensor) -> Figure:
    """Mean attention distance per block and head, one panel per model, as in Dosovitskiy et al.
    (2021), Figure 7: one dot per head; the dotted line is attention spread uniformly.

    Args:
        models: named models of one image and patch size (e.g. {"reference": ..., "random init":
            ...}), each a `MaskedAutoencoder`, `ViTClassifier` or `MAEEncoder`.
        images: normalised images the distances are averaged over.

    Returns:
        A matplotlib `Figure`.

    Shapes:
        images: (B, C, H, W).
    """
    fig = Figure(figsize=(3.6 * len(models) + 0.4, 3.2), layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False, sharey=True)[0]
    for ax, (name, model) in zip(axes, models.items()):
        config = _encoder(model).config
        distances = mean_attention_distance(model, images)  # (depth, h)
        depth, num_heads = distances.shape
        for head in range(num_heads):
            ax.scatter(range(1, depth + 1), distances[:, head].numpy(), s=18,
                       label=f"head {head + 1}")  # fmt: skip
        uniform = patch_distances(config.grid_size, config.patch_size).mean().item()
        ax.axhline(uniform, color="0.5", linestyle=":", linewidth=1, label="uniform attention")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("encoder block")
        ax.set_xticks(range(1, depth + 1))
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("mean attention distance (pixels)")
    axes[-1].legend(fontsize=8, loc="lower right")
    return fig


# --- Widgets for a running kernel, each with the static figure the rendered book shows ------------


def _png(fig: Figure) -> bytes:
    """A figure as PNG bytes, for an `ipywidgets.Image` (no display backend involved)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


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
        return _png(image_grid(rows, f"mask ratio {ratio:.0%}, loss {float(parts['loss']):.3f}"))

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

    length = _encoder(model).config.num_patches
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
        return _png(_maps_figure(shown, maps[block.value - 1], heads, title, None, length))

    picture = ipywidgets.Image(value=draw(), format="png")

    def redraw(change: dict) -> None:
        picture.value = draw()

    for control in (block, head, query):
        control.observe(redraw, names="value")
    return ipywidgets.VBox([ipywidgets.HBox([block, head]), query, picture])

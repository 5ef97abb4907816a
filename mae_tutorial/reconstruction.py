"""What an MAE paints where it removed patches: its predictions turned back into images.

A model trained on normalised-pixel targets (`norm_pix_loss`) predicts each removed patch up to
its own mean and variance; to draw it, those must come from somewhere (`prediction_to_images`):
from the visible patches around it (`stats="visible"`, honest) or from the hidden patch itself
(`stats="true"`, flattering). `reconstruct_images` runs the model, at its own mask ratio or any
other, and returns the rows of the paper's Figures 2-4 as image tensors; `image_grid` lays out
such rows, and `png_bytes` turns a figure into PNG bytes for a widget.

    images -> model(images, noise) -> pred (B, L, P*P*C) -> un-normalise per patch -> unpatchify
           -> rows: original | masked | reconstruction | reconstruction with the visible patches
"""

from __future__ import annotations

import io

import torch
from matplotlib.figure import Figure

from mae_tutorial.data import CIFAR10_MEAN, CIFAR10_STD, denormalize
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.patches import patchify, unpatchify
from mae_tutorial.runtime import eval_mode

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
    noise = None if noise is None else noise.to(device)
    with eval_mode(model), torch.no_grad():
        out = model(images, noise=noise, mask_ratio=mask_ratio)
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


def png_bytes(fig: Figure) -> bytes:
    """A figure as PNG bytes, for an `ipywidgets.Image` (no display backend involved)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()

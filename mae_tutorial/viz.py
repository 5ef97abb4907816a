"""Pictures of what an MAE does: reconstruction grids in the style of the paper's Figures 2-4.

    images -> model(images, noise) -> pred (B, L, P*P*C) -> un-normalise per patch -> unpatchify
           -> rows: original | masked | reconstruction | reconstruction with the visible patches

Figures are built with `matplotlib.figure.Figure` directly (no pyplot), so nothing here depends on
a display or on pyplot's global state; `fig.savefig("grid.png")` works anywhere, and a notebook
shows a returned figure.
"""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from mae_tutorial.data import denormalize
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.patches import patchify, unpatchify

MASK_GREY = 0.5  # display value of a removed patch


def reconstruct_images(
    model: MaskedAutoencoder, images: torch.Tensor, noise: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Run the MAE once and turn its prediction into displayable images.

    With `norm_pix_loss` the model predicts every patch normalised by its own mean and variance;
    to show it, each predicted patch is un-normalised with the mean and variance of the TRUE patch
    at that place, as the official demo notebook does. For visible patches that is exact. For
    masked patches it borrows two numbers per patch (mean colour and contrast) that the model never
    saw, so the picture looks better than what the model alone predicts: the structure inside each
    patch is the model's, its overall brightness and contrast are not.

    Args:
        model: the MAE; run in eval mode without gradients, its mode is restored afterwards.
        images: normalised images (`mae_tutorial.data.normalize`).
        noise: masking noise (lowest = kept); random when None.

    Returns:
        A dict of CPU tensors: "original", "masked" (removed patches grey), "reconstruction" (every
        patch predicted), "pasted" (visible patches from the original, masked ones predicted), all
        (B, C, H, W) in [0, 1]; "mask" (B, L) with 1 = removed (masked), 0 = visible; "loss" ().

    Shapes:
        images: (B, C, H, W), noise: (B, L) -> see Returns.
    """
    config = model.config
    device = next(model.parameters()).device
    images = images.to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(images, noise=None if noise is None else noise.to(device))
    finally:
        model.train(was_training)
    p, size = config.patch_size, config.image_size
    pred = out.pred.float()  # (B, L, P*P*C)
    if config.norm_pix_loss:
        target = patchify(images, p)  # (B, L, P*P*C)
        mean = target.mean(dim=-1, keepdim=True)  # (B, L, 1)
        var = target.var(dim=-1, keepdim=True)  # (B, L, 1), unbiased and eps as in losses.py
        pred = pred * (var + 1e-6) ** 0.5 + mean
    mask = out.mask.float()  # (B, L)
    pixel_mask = unpatchify(mask[..., None].expand_as(pred), p, size)  # (B, C, H, W), 1 = removed
    original = denormalize(images.float())  # (B, C, H, W) in [0, 1]
    reconstruction = denormalize(unpatchify(pred, p, size))  # (B, C, H, W) in [0, 1]
    return {
        "original": original.cpu(),
        "masked": (original * (1 - pixel_mask) + MASK_GREY * pixel_mask).cpu(),
        "reconstruction": reconstruction.cpu(),
        "pasted": (original * (1 - pixel_mask) + reconstruction * pixel_mask).cpu(),
        "mask": mask.cpu(),
        "loss": out.loss.detach().float().cpu(),
    }


def reconstruction_grid(
    model: MaskedAutoencoder,
    images: torch.Tensor,
    noise: torch.Tensor | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """A grid of MAE reconstructions: one column per image, four rows.

    Rows: the original; the masked input (removed patches grey); the reconstruction of every
    patch; the reconstruction with the visible patches pasted back (the paper's figures). See
    `reconstruct_images` for how normalised-pixel predictions are un-normalised.

    Args:
        model: the MAE.
        images: normalised images.
        noise: masking noise; random when None.
        title: figure title; by default the mask ratio and the loss on these images.

    Returns:
        A matplotlib `Figure` (save it with `fig.savefig(path)`).

    Shapes:
        images: (B, C, H, W), noise: (B, L).
    """
    parts = reconstruct_images(model, images, noise)
    rows = [
        ("original", parts["original"]),
        (f"masked {model.config.mask_ratio:.0%}", parts["masked"]),
        ("reconstruction", parts["reconstruction"]),
        ("reconstruction\n+ visible", parts["pasted"]),
    ]
    n = parts["original"].shape[0]
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
    if title is None:
        title = f"MAE reconstructions, mask ratio {model.config.mask_ratio:.0%}, loss {float(parts['loss']):.3f}"
    fig.suptitle(title, fontsize=10)
    return fig

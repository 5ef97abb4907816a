# Generated from notebooks/06_loss.ipynb by `make export`; edit the notebook, not this file.
"""The MAE loss: mean squared error on the masked patches only.

With `norm_pix=True` each target patch is first normalised by its own mean and variance (the paper's
"normalized pixels" target, which improves representations); the variance is the unbiased one, as in
the official code and Hugging Face.
"""

from __future__ import annotations

import torch


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Normalise every patch vector to zero mean and unit variance.

    Shapes:
        patches: (B, L, P*P*C) -> (B, L, P*P*C).
    """
    mean = patches.mean(dim=-1, keepdim=True)  # (B, L, 1)
    var = patches.var(dim=-1, keepdim=True)  # (B, L, 1)
    return (patches - mean) / (var + eps) ** 0.5


def masked_mse_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True
) -> torch.Tensor:
    """Mean squared error per patch, averaged over masked patches only.

    Args:
        pred: predicted patch vectors.
        target: true patch vectors from `patchify`.
        mask: 1 = removed (masked, counted in the loss), 0 = visible (ignored).
        norm_pix: normalise each target patch by its own mean and variance first.

    Shapes:
        pred, target: (B, L, P*P*C), mask: (B, L) -> scalar.
    """
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(
            f"expected pred and target of one shape (B, L, P*P*C) and mask (B, L), got "
            f"{tuple(pred.shape)}, {tuple(target.shape)} and {tuple(mask.shape)}"
        )
    if norm_pix:
        target = normalize_patches(target)
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # (B, L)
    return (per_patch * mask).sum() / mask.sum()

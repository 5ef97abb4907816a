# Generated from notebooks/07_pretraining.ipynb by `make export`; edit the notebook, not this file.
"""Augmentation on the device: every image of a batch cropped and flipped at once.

MAE pretrains with little augmentation: a random-resized crop and a horizontal flip (He et al. 2021,
appendix A.1; colour jitter hurts, Table 1e). Fine-tuning uses the CIFAR classic instead: pad, take
a random crop of the original size, flip. Both work on a whole batch of float images already on the
device, with batched tensor ops and no per-image loop (as KellerJordan/cifar10-airbench does), and
draw every random number from the `generator` they are given, so a batch's augmentation can be
repeated exactly (`mae_tutorial.data.DeviceLoader` seeds one per batch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """U[0, 1) numbers drawn on the generator's device (any device), then moved to `device`."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def _check_images(images: torch.Tensor) -> None:
    if not images.is_floating_point() or images.ndim != 4:
        raise TypeError(
            f"expected float images (B, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )


def random_resized_crop_flip(
    images: torch.Tensor,
    size: int = 32,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MAE's pretraining augmentation: a random-resized crop and a random horizontal flip per image.

    As torchvision's `RandomResizedCrop`: each crop covers a fraction of the area drawn from
    `scale` with an aspect ratio drawn log-uniformly from `ratio` (ten tries, then the whole
    image), at a uniform position; it is resized to `size` bilinearly. All images are done at once
    with one affine sampling grid per image; a flip is a negative x-scale in that grid.

    Shapes:
        images: (B, C, H, W) float -> (B, C, size, size).
    """
    _check_images(images)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must satisfy 0 < low <= high, got {ratio}")
    B, C, H, W = images.shape
    u = _uniform((B, 23), generator, images.device)
    area = scale[0] + (scale[1] - scale[0]) * u[:, :10]  # (B, 10) tries
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 10:20])  # (B, 10)
    width = torch.sqrt(area * aspect * H / W)  # crop width as a fraction of W
    height = torch.sqrt(area / aspect * W / H)
    fits = (width <= 1) & (height <= 1)  # (B, 10)
    first = fits.int().argmax(dim=1, keepdim=True)  # (B, 1) first try that fits
    found = fits.any(dim=1)
    width = torch.where(found, width.gather(1, first).squeeze(1), 1.0)  # (B,)
    height = torch.where(found, height.gather(1, first).squeeze(1), 1.0)
    flip = torch.where(u[:, 22] < 0.5, -1.0, 1.0)
    theta = torch.zeros(B, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = flip * width
    theta[:, 0, 2] = (1 - width) * (2 * u[:, 20] - 1)  # crop centre, in [-1, 1] coordinates
    theta[:, 1, 1] = height
    theta[:, 1, 2] = (1 - height) * (2 * u[:, 21] - 1)
    grid = F.affine_grid(theta, [B, C, size, size], align_corners=False)  # (B, size, size, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_crop_flip(
    images: torch.Tensor,
    padding: int = 4,
    padding_mode: str = "reflect",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fine-tuning augmentation: pad, take a random crop of the original size, maybe flip.

    One gather does every crop and flip at once (as in cifar10-airbench): no per-image loop.

    Shapes:
        images: (B, C, H, W) float -> (B, C, H, W).
    """
    _check_images(images)
    B, C, H, W = images.shape
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    if padding_mode not in ("reflect", "constant", "replicate"):
        raise ValueError(
            f"padding_mode must be 'reflect', 'constant' or 'replicate', got {padding_mode!r}"
        )
    if padding_mode == "reflect" and padding >= min(H, W):
        raise ValueError(f"reflect padding {padding} must be smaller than the image size {H}x{W}")
    padded = F.pad(images, (padding,) * 4, mode=padding_mode)  # (B, C, H + 2p, W + 2p)
    u = _uniform((B, 3), generator, images.device)
    top = (u[:, 0] * (2 * padding + 1)).long().clamp(max=2 * padding)  # (B,)
    left = (u[:, 1] * (2 * padding + 1)).long().clamp(max=2 * padding)
    cols = torch.arange(W, device=images.device)
    cols = torch.where((u[:, 2] < 0.5)[:, None], W - 1 - cols, cols)  # (B, W), reversed = flipped
    rows = top[:, None] + torch.arange(H, device=images.device)  # (B, H)
    cols = left[:, None] + cols
    b = torch.arange(B, device=images.device)[:, None, None, None]
    c = torch.arange(C, device=images.device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)

# Generated from notebooks/01_patches.ipynb by `make export`; edit the notebook, not this file.
"""Images as sequences of patches: `patchify`, its inverse `unpatchify`, and `PatchEmbed`.

A patch vector is laid out (row in patch, column in patch, channel), the einops pattern
`b c (h p1) (w p2) -> b (h w) (p1 p2 c)`, as in the official MAE and Hugging Face's ViTMAE. Patches
are numbered row by row over the image, so patch `i` sits at grid row `i // (W/P)`, column `i % (W/P)`.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn


def _check_images(images: torch.Tensor, patch_size: int) -> None:
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got shape {tuple(images.shape)}")
    height, width = images.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image size {height}x{width} is not divisible by patch_size={patch_size}; "
            "expected both sides to be multiples of the patch size"
        )


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into flattened, non-overlapping patches.

    Args:
        images: a batch of images.
        patch_size: P, the side of a square patch; must divide H and W.

    Returns:
        The patches, each flattened as (row in patch, column in patch, channel).

    Shapes:
        images: (B, C, H, W) -> (B, L, P*P*C) with L = (H/P) * (W/P).
    """
    _check_images(images, patch_size)
    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


def unpatchify(
    patches: torch.Tensor, patch_size: int, image_size: int | tuple[int, int]
) -> torch.Tensor:
    """Put flattened patches back together into images; the exact inverse of `patchify`.

    Args:
        patches: patches in `patchify`'s layout.
        patch_size: P.
        image_size: H = W, or (H, W).

    Shapes:
        patches: (B, L, P*P*C) -> (B, C, H, W).
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} is not divisible by patch_size={patch_size}")
    grid_h, grid_w = height // patch_size, width // patch_size
    if patches.ndim != 3 or patches.shape[1] != grid_h * grid_w:
        raise ValueError(
            f"expected patches of shape (B, {grid_h * grid_w}, P*P*C) for {height}x{width} images "
            f"and patch_size={patch_size}, got shape {tuple(patches.shape)}"
        )
    if patches.shape[2] % patch_size**2:
        raise ValueError(
            f"patch vectors of length {patches.shape[2]} are not P*P*C for patch_size={patch_size}"
        )
    return rearrange(
        patches, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=grid_h, p1=patch_size, p2=patch_size
    )


class PatchEmbed(nn.Module):
    """Linear projection of flattened patches: the ViT's "16x16 words", here P x P.

    A linear layer on `patchify`'s output is the same map as a Conv2d with kernel = stride = P (the
    weight reshaped, see `conv_weight`). The MAE's encoder embeds all L patches and masks afterwards,
    as the official code does.

    Shapes:
        images: (B, C, H, W) -> (B, L, D).
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.proj = nn.Linear(patch_size * patch_size * in_chans, embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.in_chans:
            raise ValueError(
                f"expected images of shape (B, {self.in_chans}, H, W), got {tuple(images.shape)}"
            )
        return self.embed_patches(patchify(images, self.patch_size))  # (B, L, D)

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Project patches that are already flattened by `patchify`.

        Shapes:
            patches: (B, N, P*P*C) -> (B, N, D) for any number N of patches.
        """
        return self.proj(patches)

    def conv_weight(self) -> torch.Tensor:
        """The projection as the weight of the equivalent Conv2d.

        Shapes:
            returns (D, C, P, P).
        """
        p = self.patch_size
        return rearrange(self.proj.weight, "d (p1 p2 c) -> d c p1 p2", p1=p, p2=p)

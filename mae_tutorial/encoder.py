# Generated from notebooks/04_encoder.ipynb by `make export`; edit the notebook, not this file.
"""The MAE's encoder: a plain ViT that sees only the visible patches (chapter 4).

    images -> patches -> embed + positions -> random_masking -> [cls] + visible -> blocks -> norm

`MAEEncoder.forward_masked` is the pretraining path (the K visible patches only); `forward` encodes
every patch, for evaluation, and can hand a caller each block's output (`on_block`) so that nothing
outside this module re-runs the blocks. Chapter 5's `model.py` puts a decoder behind it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mae_tutorial.config import MAEConfig
from mae_tutorial.masking import random_masking
from mae_tutorial.patches import PatchEmbed
from mae_tutorial.pos_embed import sincos_pos_embed_2d
from mae_tutorial.transformer import Block

# `on_block(index, tokens)`: called after block `index` (0-based) with its output (B, 1 + N, D).
BlockHook = Callable[[int, torch.Tensor], None]


def init_weights(module: nn.Module) -> None:
    """The official MAE's initialisation: xavier-uniform linear layers, zero biases, unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def check_images(
    images: torch.Tensor, config: MAEConfig, dtype: torch.dtype = torch.float32
) -> None:
    """Refuse anything but a non-empty (B, C, H, W) batch of `dtype` images of the configured size.

    Mixed precision is `torch.autocast`'s job: it lowers the precision inside the model, so the
    images stay float32 under autocast too.

    Raises:
        ValueError: the shape is wrong or the batch is empty.
        TypeError: not a tensor, or not of `dtype` (the model's parameters' dtype).
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected images as a torch.Tensor, got {type(images).__name__}")
    expected = (config.in_chans, config.image_size, config.image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"expected images of shape (B, {expected[0]}, {expected[1]}, {expected[2]}) "
            f"(in_chans={config.in_chans}, image_size={config.image_size}), "
            f"got shape {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError("expected at least one image, got an empty batch (B = 0)")
    if not images.is_floating_point():
        raise TypeError(
            f"expected float images normalised with CIFAR10_MEAN/CIFAR10_STD, got dtype "
            f"{images.dtype}; convert uint8 batches with mae_tutorial.data.normalize"
        )
    if images.dtype != dtype:
        raise TypeError(
            f"expected {dtype} images (the dtype of the model's parameters), got {images.dtype}; "
            f"convert them with .to({dtype}), and use torch.autocast for mixed precision"
        )


def check_noise(noise: torch.Tensor, batch: int, config: MAEConfig) -> None:
    """Refuse masking noise that is not (B, L) floats, finite and in [0, 2).

    Uniform noise in [0, 1) is the paper's random sampling; `block_noise` and `grid_noise` add 1
    to the patches they remove, hence the bound 2. The values are read on the CPU only: on a CUDA
    device, and inside `torch.compile`, `torch._assert_async` checks them without making the host
    wait (on CUDA a failure surfaces at the next synchronisation as a device-side assertion).

    Raises:
        ValueError: wrong shape, or (on the CPU) a value that is NaN, infinite or outside [0, 2).
        TypeError: not a tensor, or not floating point.
    """
    if not isinstance(noise, torch.Tensor):
        raise TypeError(f"expected noise as a torch.Tensor, got {type(noise).__name__}")
    expected = (batch, config.num_patches)
    if tuple(noise.shape) != expected:
        raise ValueError(
            f"expected noise of shape (B, L) = {expected} (one value per patch), "
            f"got {tuple(noise.shape)}"
        )
    if not noise.is_floating_point():
        raise TypeError(
            f"expected float noise, uniform in [0, 1) as torch.rand draws it, got dtype {noise.dtype}"
        )
    valid = (noise >= 0) & (noise < 2)  # (B, L); False for NaN
    if noise.device.type == "cuda" or torch.compiler.is_compiling():
        torch._assert_async(valid.all())  # no host-device synchronisation, no graph break
    elif noise.device.type == "cpu" and not bool(valid.all()):
        bad = noise[~valid][0].item()
        raise ValueError(
            f"expected finite noise in [0, 2) (uniform in [0, 1) for random sampling), got {bad}"
        )


class MAEEncoder(nn.Module):
    """ViT encoder with a cls token and fixed 2-D sin-cos positions.

    Shapes:
        forward: images (B, C, H, W) -> tokens (B, 1 + L, D), after the final LayerNorm.
        forward_masked: images -> latent (B, 1 + K, D), mask (B, L), ids_restore (B, L).
        forward_features: images -> (B, D).
    """

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        pos = sincos_pos_embed_2d(d, config.grid_size, cls_token=True)
        self.register_buffer("pos_embed", pos[None])  # (1, 1 + L, D), fixed
        if config.mask_token_in_encoder:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        rates = torch.linspace(0, config.drop_path, config.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(d, config.num_heads, config.mlp_hidden_dim, config.layer_norm_eps, rate)
            for rate in rates
        )
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embeddings plus positions, without the cls token; checks the images first.

        Shapes:
            images: (B, C, H, W) -> (B, L, D).
        """
        check_images(images, self.config, self.cls_token.dtype)
        return self.patch_embed(images) + self.pos_embed[:, 1:]  # (B, L, D)

    def run_blocks(self, x: torch.Tensor, on_block: BlockHook | None = None) -> torch.Tensor:
        """Prepend the cls token, apply the blocks and the final norm.

        Args:
            x: embedded tokens with their positions.
            on_block: called as `on_block(index, tokens)` after every block, with the block's
                output before the final norm.

        Shapes:
            x: (B, N, D) -> (B, 1 + N, D); on_block receives (B, 1 + N, D).
        """
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + N, D)
        for index, block in enumerate(self.blocks):
            x = block(x)
            if on_block is not None:
                on_block(index, x)
        return self.norm(x)

    def forward(self, images: torch.Tensor, on_block: BlockHook | None = None) -> torch.Tensor:
        """Encode every patch (no masking), as evaluation and fine-tuning do.

        Args:
            images: normalised float images.
            on_block: called as `on_block(index, tokens)` after every block with its output,
                before the final norm (chapter 8 reads per-block features this way).

        Shapes:
            images: (B, C, H, W) -> (B, 1 + L, D); on_block receives (B, 1 + L, D).
        """
        return self.run_blocks(self.embed(images), on_block)  # (B, 1 + L, D)

    def forward_masked(
        self,
        images: torch.Tensor,
        mask_ratio: float,
        noise: torch.Tensor | None = None,
        on_block: BlockHook | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode only the visible patches (or, in the mask-token ablation, mask tokens too).

        Args:
            images: normalised float images.
            mask_ratio: the share of patches removed, in (0, 1).
            noise: masking noise (see `check_noise`); uniform when None.
            on_block: as in `forward`, on the tokens the blocks see.

        Returns:
            latent: encoded cls + visible tokens, in `random_masking`'s kept order; with
                `config.mask_token_in_encoder`, cls + all L tokens in the original order.
            mask: 1 = removed (masked), 0 = kept (visible).
            ids_restore: the permutation that undoes the shuffle.

        Shapes:
            images: (B, C, H, W), noise: (B, L) -> latent (B, 1 + K, D) (or (B, 1 + L, D)),
            mask (B, L), ids_restore (B, L).
        """
        x = self.embed(images)  # (B, L, D)
        if noise is not None:
            check_noise(noise, x.shape[0], self.config)
        visible, mask, ids_restore = random_masking(x, mask_ratio, noise)  # (B, K, D)
        if self.config.mask_token_in_encoder:
            m = mask.unsqueeze(-1)  # (B, L, 1)
            visible = x * (1 - m) + (self.mask_token + self.pos_embed[:, 1:]) * m  # (B, L, D)
        return self.run_blocks(visible, on_block), mask, ids_restore

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """One feature vector per image from the unmasked encoder: mean of the patch tokens, or
        the cls token (`config.pool`). Linear probing, kNN and the classifier head use it.

        Shapes:
            images: (B, C, H, W) -> (B, D).
        """
        tokens = self.forward(images)  # (B, 1 + L, D)
        return tokens[:, 1:].mean(dim=1) if self.config.pool == "mean" else tokens[:, 0]

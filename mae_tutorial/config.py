"""The model's configuration: one frozen dataclass and a few named presets.

Every model in the package is built from an `MAEConfig` and keeps it as `.config`; checkpoints store it
and rebuild the model from it. Variants are made with `dataclasses.replace`, never by mutation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MAEConfig:
    """Sizes of a masked autoencoder (the paper's ViT encoder plus a light decoder).

    Letters used across the package: C channels, H/W image size, P patch size, L = (H/P)*(W/P)
    patches, D encoder width, E decoder width, h heads.

    Args:
        image_size: H = W, the side of the square input image in pixels.
        patch_size: P, the side of a square patch; must divide `image_size`.
        in_chans: C, channels of the input image.
        embed_dim: D, encoder width.
        depth: number of encoder blocks.
        num_heads: encoder attention heads; must divide `embed_dim`.
        mlp_ratio: hidden width of every MLP as a multiple of its block's width.
        decoder_embed_dim: E, decoder width.
        decoder_depth: number of decoder blocks (the paper's default is 8; 1 already works).
        decoder_num_heads: decoder attention heads; must divide `decoder_embed_dim`.
        mask_ratio: fraction of patches removed, in (0, 1); the paper uses 0.75.
        norm_pix_loss: regress per-patch normalised pixels (the paper's best target).
        layer_norm_eps: epsilon of every LayerNorm (1e-6 as the official code; Hugging Face uses 1e-12).
        mask_token_in_encoder: ablation of the paper's Table 1c: the encoder sees mask tokens too.
        drop_path: stochastic depth rate of the encoder, used when fine-tuning.
        pool: how the encoder's tokens become one feature vector: "mean" of the patch tokens (the
            official fine-tuning default) or the "cls" token.
    """

    image_size: int = 32
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    decoder_embed_dim: int = 128
    decoder_depth: int = 4
    decoder_num_heads: int = 4
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    layer_norm_eps: float = 1e-6
    mask_token_in_encoder: bool = False
    drop_path: float = 0.0
    pool: str = "mean"

    def __post_init__(self) -> None:
        positive = ("image_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads")
        positive += ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}; "
                "expected a patch size that tiles the image exactly"
            )
        for name in ("embed_dim", "decoder_embed_dim"):
            if getattr(self, name) % 4:
                raise ValueError(
                    f"{name}={getattr(self, name)} is not divisible by 4; the 2-D sin-cos position "
                    "table splits the width into sin and cos of rows and of columns"
                )
        if self.pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {self.pool!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}"
            )
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(
                f"decoder_embed_dim={self.decoder_embed_dim} is not divisible by "
                f"decoder_num_heads={self.decoder_num_heads}"
            )
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {self.mask_ratio!r}")
        if self.num_visible < 1:
            raise ValueError(
                f"mask_ratio={self.mask_ratio} leaves no visible patch out of {self.num_patches}"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio!r}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path must lie in [0, 1), got {self.drop_path!r}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps!r}")

    @property
    def grid_size(self) -> int:
        """Patches along one side of the image, H / P."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """L, patches per image."""
        return self.grid_size**2

    @property
    def num_visible(self) -> int:
        """K, patches the encoder sees: int(L * (1 - mask_ratio)), as the official code rounds."""
        return int(self.num_patches * (1 - self.mask_ratio))

    @property
    def patch_dim(self) -> int:
        """Values in one flattened patch, P * P * C."""
        return self.patch_size**2 * self.in_chans

    @property
    def mlp_hidden_dim(self) -> int:
        """Hidden width of the encoder's MLPs."""
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def decoder_mlp_hidden_dim(self) -> int:
        """Hidden width of the decoder's MLPs."""
        return int(self.decoder_embed_dim * self.mlp_ratio)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields, for checkpoints and JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MAEConfig:
        """Rebuild a config from `to_dict`'s output; unknown keys raise `ValueError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown MAEConfig fields {unknown}; expected a subset of {sorted(known)}"
            )
        return cls(**values)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> MAEConfig:
        """A named preset from `PRESETS`, optionally with some fields replaced."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, MAEConfig] = {
    # CI-sized: a training step takes milliseconds on two CPU cores.
    "tiny": MAEConfig(
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        decoder_embed_dim=32,
        decoder_depth=1,
        decoder_num_heads=2,
    ),
    # The largest model that pretrains usefully on CIFAR-10 in about an hour of two CPU cores.
    "cpu": MAEConfig(
        embed_dim=128,
        depth=6,
        num_heads=4,
        decoder_embed_dim=96,
        decoder_depth=2,
        decoder_num_heads=4,
    ),
    # The GPU recipe: ViT-Tiny (width 192, depth 12, 3 heads) on 4x4 patches of 32x32 images.
    "vit_tiny": MAEConfig(
        embed_dim=192,
        depth=12,
        num_heads=3,
        decoder_embed_dim=128,
        decoder_depth=4,
        decoder_num_heads=4,
    ),
}

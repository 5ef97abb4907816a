"""The model's configuration: one frozen dataclass and a few named presets.

Every model in the package is built from an `MAEConfig` and keeps it as `.config`; checkpoints store it
and rebuild the model from it. Variants are made with `dataclasses.replace`, never by mutation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Size limits, checked before any memory is allocated (a config from a flag or a checkpoint could
# otherwise ask for a billion-parameter model and bring the machine to its knees). They lie far
# above every preset and admit the paper's largest model, ViT-H/14 with its 8 x 512 decoder
# (about 657 million parameters).
MAX_WIDTH = 4096  # embed_dim and decoder_embed_dim
MAX_DEPTH = 64  # depth and decoder_depth
MAX_PATCHES = 4096  # L = (image_size / patch_size) ** 2: attention is quadratic in it
MAX_IMAGE_SIZE = 4096
MAX_CHANNELS = 64
MAX_MLP_RATIO = 16.0
MAX_PARAMETERS = 1_000_000_000  # about 150x the largest preset, vit_tiny; 1.5x ViT-H's MAE


def _integer(name: str, value: Any, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(
            f"{name} must be an integer in [1, {high}], got {value!r} ({type(value).__name__})"
        )
    if not 1 <= value <= high:
        raise ValueError(f"{name} must be an integer in [1, {high}], got {value!r}")


def _real(name: str, value: Any, interval: str, inside: Callable[[float], bool]) -> None:
    """Raise unless `value` is a finite real number (an int or a float, not a bool) in `interval`."""
    real = isinstance(value, int | float) and not isinstance(value, bool)
    if not (real and math.isfinite(value) and inside(value)):
        raise ValueError(
            f"{name} must be a finite number in {interval}, got {value!r} ({type(value).__name__})"
        )


def _block_parameters(width: int, hidden: int) -> int:
    """Parameters of one transformer `Block`: two LayerNorms, qkv and output projections, MLP."""
    norms = 2 * 2 * width
    attention = width * 3 * width + 3 * width + width * width + width
    mlp = width * hidden + hidden + hidden * width + width
    return norms + attention + mlp


@dataclass(frozen=True)
class MAEConfig:
    """Sizes of a masked autoencoder (the paper's ViT encoder plus a light decoder).

    Letters used across the package: C channels, H/W image size, P patch size, L = (H/P)*(W/P)
    patches, D encoder width, E decoder width, h heads.

    Every field is checked when a config is made (directly, by `dataclasses.replace`, from a preset
    or from a checkpoint's dict): its type (integers must be `int`, flags must be `bool`: the string
    'no' is refused, not read as True), finiteness and range, and the relations between fields.
    Sizes are bounded before any memory is allocated: widths at most `MAX_WIDTH` (4096), depths at
    most `MAX_DEPTH` (64), at most `MAX_PATCHES` (4096) patches per image, images of at most
    `MAX_IMAGE_SIZE` (4096) pixels a side and `MAX_CHANNELS` (64) channels, `mlp_ratio` at most
    `MAX_MLP_RATIO` (16), and at most `MAX_PARAMETERS` (10**9) parameters in all (counted from the
    fields, see `num_parameters`): far above every preset, and above the paper's largest model,
    ViT-H/14 with its decoder (about 657 million). Errors are `ValueError`s naming the field, the
    value and what was expected.

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
        self._check_fields()
        self._check_relations()
        if self.num_parameters > MAX_PARAMETERS:
            raise ValueError(
                f"this config asks for {self.num_parameters:,} parameters (embed_dim="
                f"{self.embed_dim}, depth={self.depth}, decoder_embed_dim={self.decoder_embed_dim},"
                f" decoder_depth={self.decoder_depth}); expected at most MAX_PARAMETERS = "
                f"{MAX_PARAMETERS:,}"
            )

    def _check_fields(self) -> None:
        """Each field on its own: type, finiteness, range, size limit."""
        limits = {
            "image_size": MAX_IMAGE_SIZE,
            "patch_size": MAX_IMAGE_SIZE,
            "in_chans": MAX_CHANNELS,
            "embed_dim": MAX_WIDTH,
            "depth": MAX_DEPTH,
            "num_heads": MAX_WIDTH,
            "decoder_embed_dim": MAX_WIDTH,
            "decoder_depth": MAX_DEPTH,
            "decoder_num_heads": MAX_WIDTH,
        }
        for name, high in limits.items():
            _integer(name, getattr(self, name), high)
        for name in ("norm_pix_loss", "mask_token_in_encoder"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(
                    f"{name} must be True or False (a bool), got {value!r} ({type(value).__name__})"
                )
        if not isinstance(self.pool, str) or self.pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {self.pool!r}")
        _real("mask_ratio", self.mask_ratio, "(0, 1)", lambda v: 0 < v < 1)
        _real(
            "mlp_ratio", self.mlp_ratio, f"(0, {MAX_MLP_RATIO}]", lambda v: 0 < v <= MAX_MLP_RATIO
        )
        _real("drop_path", self.drop_path, "[0, 1)", lambda v: 0 <= v < 1)
        _real("layer_norm_eps", self.layer_norm_eps, "(0, 1]", lambda v: 0 < v <= 1)

    def _check_relations(self) -> None:
        """What the fields must satisfy together."""
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}; "
                "expected a patch size that tiles the image exactly"
            )
        if self.num_patches > MAX_PATCHES:
            raise ValueError(
                f"image_size={self.image_size} with patch_size={self.patch_size} makes "
                f"{self.num_patches} patches per image; expected at most MAX_PATCHES = {MAX_PATCHES}"
            )
        for name in ("embed_dim", "decoder_embed_dim"):
            if getattr(self, name) % 4:
                raise ValueError(
                    f"{name}={getattr(self, name)} is not divisible by 4; the 2-D sin-cos position "
                    "table splits the width into sin and cos of rows and of columns"
                )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}"
            )
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(
                f"decoder_embed_dim={self.decoder_embed_dim} is not divisible by "
                f"decoder_num_heads={self.decoder_num_heads}"
            )
        if self.num_visible < 1:
            raise ValueError(
                f"mask_ratio={self.mask_ratio} leaves no visible patch out of {self.num_patches}"
            )
        for name in ("mlp_hidden_dim", "decoder_mlp_hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"mlp_ratio={self.mlp_ratio} gives an MLP of width {getattr(self, name)} "
                    f"({name}); expected at least 1"
                )

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

    @property
    def num_parameters(self) -> int:
        """Parameters of `MaskedAutoencoder(self)`, counted from the fields without building it.

        `tests/test_config.py` checks it against the built model of every preset.
        """
        d, e, p = self.embed_dim, self.decoder_embed_dim, self.patch_dim
        encoder = p * d + d + d + 2 * d  # patch embedding, cls token, final norm
        encoder += self.depth * _block_parameters(d, self.mlp_hidden_dim)
        decoder = d * e + e + 2 * e + e * p + p  # decoder_embed, norm, pred
        decoder += self.decoder_depth * _block_parameters(e, self.decoder_mlp_hidden_dim)
        mask_token = d if self.mask_token_in_encoder else e
        return encoder + decoder + mask_token

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields, for checkpoints and JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MAEConfig:
        """Rebuild a config from `to_dict`'s output (as a checkpoint stores it), with the same
        checks as any config; unknown keys raise `ValueError`."""
        if not isinstance(values, dict):
            raise ValueError(f"expected a dict of MAEConfig fields, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted((key for key in values if key not in known), key=repr)
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

# Generated from notebooks/05_decoder.ipynb by `make export`; edit the notebook, not this file.
"""The masked autoencoder: a ViT encoder on the visible patches, a light decoder on all of them.

    images -> patches -> embed + positions -> random_masking -> [cls] + visible -> encoder blocks
           -> decoder_embed -> append mask tokens, unshuffle -> + decoder positions -> decoder blocks
           -> per-patch pixel prediction -> MSE on the masked patches

The encoder is chapter 4's (`mae_tutorial.encoder`, imported here, so `from mae_tutorial.model
import MAEEncoder` works too). `ViTClassifier` is the same `MAEEncoder` with a linear head, for
fine-tuning and evaluation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from mae_tutorial.config import MAEConfig
from mae_tutorial.encoder import MAEEncoder, check_images, init_weights
from mae_tutorial.losses import masked_mse_loss
from mae_tutorial.masking import gather_tokens
from mae_tutorial.patches import patchify
from mae_tutorial.pos_embed import sincos_pos_embed_2d
from mae_tutorial.transformer import Block

__all__ = [
    "MAEDecoder",
    "MAEEncoder",
    "MAEOutput",
    "MaskedAutoencoder",
    "ViTClassifier",
    "check_images",
    "init_weights",
]

MAX_CLASSES = 100_000  # a classifier head's outputs, checked before its memory is allocated


class MAEDecoder(nn.Module):
    """Light decoder: fills the masked places with a shared mask token and predicts every patch.

    Shapes:
        latent (B, 1 + K, D), ids_restore (B, L) -> pred (B, L, P*P*C).
    """

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        e = config.decoder_embed_dim
        self.decoder_embed = nn.Linear(config.embed_dim, e)
        if not config.mask_token_in_encoder:  # in that ablation the encoder fills the gaps instead
            self.mask_token = nn.Parameter(torch.zeros(1, 1, e))
        pos = sincos_pos_embed_2d(e, config.grid_size, cls_token=True)
        self.register_buffer("decoder_pos_embed", pos[None])  # (1, 1 + L, E), fixed
        self.blocks = nn.ModuleList(
            Block(e, config.decoder_num_heads, config.decoder_mlp_hidden_dim, config.layer_norm_eps)
            for _ in range(config.decoder_depth)
        )
        self.norm = nn.LayerNorm(e, eps=config.layer_norm_eps)
        self.pred = nn.Linear(e, config.patch_dim)

    def fill_and_unshuffle(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Append one mask token per removed patch and put every token back at its patch's place.

        In the mask-token ablation (`config.mask_token_in_encoder`) the encoder has already filled
        the gaps in the original order, so `x` is returned as it is.

        Args:
            x: the projected latent, the cls token first, then the K visible tokens in
                `random_masking`'s kept order.
            ids_restore: the permutation that undoes the shuffle.

        Shapes:
            x: (B, 1 + K, E), ids_restore: (B, L) -> (B, 1 + L, E), the cls token first.
        """
        if self.config.mask_token_in_encoder:
            return x  # (B, 1 + L, E) already
        batch, length = ids_restore.shape
        fill = self.mask_token.expand(batch, length + 1 - x.shape[1], -1)  # (B, L - K, E)
        shuffled = torch.cat([x[:, 1:], fill], dim=1)  # (B, L, E) in kept-first order
        return torch.cat([x[:, :1], gather_tokens(shuffled, ids_restore)], dim=1)  # (B, 1 + L, E)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)  # (B, 1 + K, E)
        x = self.fill_and_unshuffle(x, ids_restore) + self.decoder_pos_embed  # (B, 1 + L, E)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]  # (B, L, P*P*C), cls dropped


@dataclass
class MAEOutput:
    """What `MaskedAutoencoder` returns.

    Attributes:
        loss: scalar, mean squared error over masked patches.
        pred: (B, L, P*P*C) predicted patches (normalised per patch when `norm_pix_loss`).
        mask: (B, L), 1 = removed (masked), 0 = kept (visible).
    """

    loss: torch.Tensor
    pred: torch.Tensor
    mask: torch.Tensor


class MaskedAutoencoder(nn.Module):
    """The MAE of He et al. (2021): encoder on visible patches, decoder reconstructs the rest.

    Args:
        config: sizes, mask ratio and target; kept as `.config`.

    `forward(images, noise=None, mask_ratio=None)` removes `mask_ratio` of the patches, the
    config's own when None (pictures at other ratios, chapter 8).

    Shapes:
        images: (B, C, H, W) float, normalised; noise: (B, L) -> MAEOutput(loss: (), pred:
        (B, L, P*P*C), mask: (B, L)).
    """

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        if not isinstance(config, MAEConfig):
            raise TypeError(f"expected an MAEConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = MAEEncoder(config)
        self.decoder = MAEDecoder(config)
        self.apply(init_weights)
        nn.init.xavier_uniform_(self.encoder.patch_embed.proj.weight)  # as a conv's (D, C*P*P)
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        mask_owner = self.encoder if config.mask_token_in_encoder else self.decoder
        nn.init.normal_(mask_owner.mask_token, std=0.02)

    def forward(
        self,
        images: torch.Tensor,
        noise: torch.Tensor | None = None,
        mask_ratio: float | None = None,
    ) -> MAEOutput:
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.encoder.forward_masked(images, ratio, noise)
        pred = self.decoder(latent, ids_restore)  # (B, L, P*P*C)
        target = patchify(images, self.config.patch_size)  # (B, L, P*P*C)
        loss = masked_mse_loss(pred, target, mask, norm_pix=self.config.norm_pix_loss)
        return MAEOutput(loss=loss, pred=pred, mask=mask)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The unmasked encoder's pooled feature (see `MAEEncoder.forward_features`).

        Shapes:
            images: (B, C, H, W) -> (B, D).
        """
        return self.encoder.forward_features(images)

    @classmethod
    def from_pretrained(
        cls, name: str = "cifar10-cpu", map_location: str | torch.device = "cpu"
    ) -> MaskedAutoencoder:
        """A reference model shipped with the package, in fp32 and eval mode, by name.

        The Hugging Face spelling of `mae_tutorial.pretrained.pretrained(name)`, which it calls.

        Args:
            name: one of `mae_tutorial.pretrained.available()`.
            map_location: where the weights are loaded.

        Raises:
            ValueError: no shipped model has that name (the message lists them).
        """
        from mae_tutorial.pretrained import pretrained  # it imports this module: import late

        return pretrained(name, map_location=map_location)


class ViTClassifier(nn.Module):
    """The MAE's encoder with a linear head: a plain ViT classifier.

    Args:
        config: the encoder's sizes (the decoder fields are unused); kept as `.config`.
        num_classes: outputs of the head, at most `MAX_CLASSES` (ImageNet-21k has 21,841).

    Shapes:
        images: (B, C, H, W) -> logits (B, num_classes).
    """

    def __init__(self, config: MAEConfig, num_classes: int = 10) -> None:
        super().__init__()
        if not isinstance(config, MAEConfig):
            raise TypeError(f"expected an MAEConfig, got {type(config).__name__}")
        if not isinstance(num_classes, int) or isinstance(num_classes, bool):
            raise ValueError(f"num_classes must be an integer, got {num_classes!r}")
        if not 1 <= num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must lie in [1, {MAX_CLASSES}], got {num_classes!r}")
        self.config = config
        self.num_classes = num_classes
        self.encoder = MAEEncoder(config)
        self.head = nn.Linear(config.embed_dim, num_classes)
        self.apply(init_weights)
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # the official fine-tuning head init

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.forward_features(images))  # (B, num_classes)

    @classmethod
    def from_pretrained(
        cls, mae: MaskedAutoencoder, num_classes: int = 10, drop_path: float | None = None
    ) -> ViTClassifier:
        """A classifier whose encoder starts from a pretrained MAE's encoder.

        Args:
            mae: the pretrained model; its weights are copied, not shared.
            num_classes: outputs of the new, freshly initialised head.
            drop_path: stochastic depth for fine-tuning; the MAE's own when None.
        """
        config = mae.config
        if drop_path is not None:
            config = dataclasses.replace(config, drop_path=drop_path)
        model = cls(config, num_classes)
        model.encoder.load_state_dict(mae.encoder.state_dict())
        return model

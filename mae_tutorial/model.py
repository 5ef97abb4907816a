# Generated from notebooks/05_decoder.ipynb by `make export`; edit the notebook, not this file.
"""The masked autoencoder: a ViT encoder on the visible patches, a light decoder on all of them.

    images -> patches -> embed + positions -> random_masking -> [cls] + visible -> encoder blocks
           -> decoder_embed -> append mask tokens, unshuffle -> + decoder positions -> decoder blocks
           -> per-patch pixel prediction -> MSE on the masked patches

`ViTClassifier` is the same `MAEEncoder` with a linear head, for fine-tuning and evaluation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from mae_tutorial.config import MAEConfig
from mae_tutorial.losses import masked_mse_loss
from mae_tutorial.masking import gather_tokens, random_masking
from mae_tutorial.patches import PatchEmbed, patchify
from mae_tutorial.pos_embed import sincos_pos_embed_2d
from mae_tutorial.transformer import Block


def init_weights(module: nn.Module) -> None:
    """The official MAE's initialisation: xavier-uniform linear layers, zero biases, unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def check_images(images: torch.Tensor, config: MAEConfig) -> None:
    """Raise `ValueError` unless `images` is a (B, C, H, W) batch of the size `config` expects."""
    expected = (config.in_chans, config.image_size, config.image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"expected images of shape (B, {expected[0]}, {expected[1]}, {expected[2]}) "
            f"(in_chans={config.in_chans}, image_size={config.image_size}), "
            f"got shape {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise TypeError(
            f"expected float images normalised with CIFAR10_MEAN/CIFAR10_STD, got dtype "
            f"{images.dtype}; convert uint8 batches with mae_tutorial.data.normalize"
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
        """Patch embeddings plus positions, without the cls token.

        Shapes:
            images: (B, C, H, W) -> (B, L, D).
        """
        check_images(images, self.config)
        return self.patch_embed(images) + self.pos_embed[:, 1:]  # (B, L, D)

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Prepend the cls token, apply the blocks and the final norm.

        Shapes:
            x: (B, N, D) -> (B, 1 + N, D).
        """
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + N, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.run_blocks(self.embed(images))  # (B, 1 + L, D)

    def forward_masked(
        self, images: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode only the visible patches (or, in the mask-token ablation, mask tokens too).

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
        visible, mask, ids_restore = random_masking(x, mask_ratio, noise)  # (B, K, D)
        if self.config.mask_token_in_encoder:
            m = mask.unsqueeze(-1)  # (B, L, 1)
            visible = x * (1 - m) + (self.mask_token + self.pos_embed[:, 1:]) * m  # (B, L, D)
        return self.run_blocks(visible), mask, ids_restore

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """One feature vector per image from the unmasked encoder: mean of the patch tokens, or
        the cls token (`config.pool`). Linear probing, kNN and the classifier head use it.

        Shapes:
            images: (B, C, H, W) -> (B, D).
        """
        tokens = self.forward(images)  # (B, 1 + L, D)
        return tokens[:, 1:].mean(dim=1) if self.config.pool == "mean" else tokens[:, 0]


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

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)  # (B, 1 + K, E)
        if not self.config.mask_token_in_encoder:
            batch, length = ids_restore.shape
            fill = self.mask_token.expand(batch, length + 1 - x.shape[1], -1)  # (B, L - K, E)
            shuffled = torch.cat([x[:, 1:], fill], dim=1)  # (B, L, E) in kept-first order
            x = torch.cat([x[:, :1], gather_tokens(shuffled, ids_restore)], dim=1)  # (B, 1 + L, E)
        x = x + self.decoder_pos_embed
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

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> MAEOutput:
        latent, mask, ids_restore = self.encoder.forward_masked(
            images, self.config.mask_ratio, noise
        )
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


class ViTClassifier(nn.Module):
    """The MAE's encoder with a linear head: a plain ViT classifier.

    Args:
        config: the encoder's sizes (the decoder fields are unused); kept as `.config`.
        num_classes: outputs of the head.

    Shapes:
        images: (B, C, H, W) -> logits (B, num_classes).
    """

    def __init__(self, config: MAEConfig, num_classes: int = 10) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
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

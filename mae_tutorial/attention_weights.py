"""What the encoder attends to, measured: attention weights read from the running model.

`encoder_attention` records every block's and head's attention weights with forward hooks on
whole (unmasked) images; `patch_attention` turns one row of them (the cls token's, or the mean
over patch queries) into a picture of the patches; `attention_distance` and
`mean_attention_distance` give the mean attention distance of Dosovitskiy et al. (2021),
Figure 7: how far, in pixels, each head looks, drawn per block by `attention_distance_figure`.
"""

from __future__ import annotations

import torch
from matplotlib.figure import Figure
from torch import nn

from mae_tutorial.model import MAEEncoder
from mae_tutorial.runtime import eval_mode

QUERIES = ("cls", "mean")  # which attention rows become a picture of the patches


def encoder_of(model: nn.Module) -> MAEEncoder:
    """The `MAEEncoder` of an MAE or a classifier, or `model` itself when it is one."""
    encoder = getattr(model, "encoder", model)
    if not isinstance(encoder, MAEEncoder):
        raise TypeError(
            f"expected a MaskedAutoencoder, ViTClassifier or MAEEncoder, got {type(model).__name__}"
        )
    return encoder


def encoder_attention(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The attention weights of every encoder block and head, for whole (unmasked) images.

    The encoder runs once, unchanged; a forward hook on each block's `Attention` module takes the
    tokens it receives and asks that module for its own weights (`Attention.attention_map`:
    softmax(q k^T / sqrt(d)) from the module's qkv projection), so the weights are those of the
    model as it runs, not of a copy of its code.

    Args:
        model: a `MaskedAutoencoder`, `ViTClassifier` or `MAEEncoder`; run in eval mode without
            gradients, its modes are restored afterwards.
        images: normalised images (`mae_tutorial.data.normalize`).

    Returns:
        One CPU tensor per block, first block first; row i of a head's matrix is how token i
        (0 = cls, then the L patches in row-major order) spreads its attention over the tokens.

    Shapes:
        images: (B, C, H, W) -> depth x (B, h, 1 + L, 1 + L), each row summing to 1.
    """
    encoder = encoder_of(model)
    weights: list[torch.Tensor] = []

    def capture(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        weights.append(module.attention_map(args[0]).cpu())  # (B, h, 1 + L, 1 + L)

    handles = [block.attn.register_forward_hook(capture) for block in encoder.blocks]
    device = next(encoder.parameters()).device
    try:
        with eval_mode(encoder), torch.no_grad():
            encoder(images.to(device))
    finally:
        for handle in handles:
            handle.remove()
    return weights


def patch_attention(weights: torch.Tensor, query: str = "cls") -> torch.Tensor:
    """How much attention each patch receives, as one value per patch.

    Args:
        weights: one block's attention (`encoder_attention`).
        query: "cls" (the cls token's row: what the image-level token looks at) or "mean" (the
            patches' rows averaged: how much an average patch attends to each patch).

    Shapes:
        weights: (B, h, 1 + L, 1 + L) -> (B, h, L), each row summing to at most 1 (the rest goes
        to the cls token).
    """
    if query not in QUERIES:
        raise ValueError(f"query must be one of {QUERIES}, got {query!r}")
    if query == "cls":
        return weights[:, :, 0, 1:]  # (B, h, L)
    return weights[:, :, 1:, 1:].mean(dim=2)  # (B, h, L)


def patch_distances(grid_size: int, patch_size: int) -> torch.Tensor:
    """Distances in pixels between the centres of every two patches of the grid.

    Shapes:
        -> (L, L) with L = grid_size**2, patches in row-major order.
    """
    index = torch.arange(grid_size, dtype=torch.float32)
    rows = index.repeat_interleave(grid_size)  # (L,)
    cols = index.repeat(grid_size)  # (L,)
    dist2 = (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2  # (L, L)
    return patch_size * dist2.sqrt()


def attention_distance(weights: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Mean attention distance (Dosovitskiy et al. 2021, Figure 7) of each image and head.

    For each patch query, the distance in pixels to each patch key weighted by the attention
    between them, averaged over the queries. The cls token has no place in the image, so its row
    and column are left out and each query's weights over the L patches are rescaled to sum to 1:
    a head that sends most of its attention to the cls token is measured by where the rest goes.

    Args:
        weights: one block's attention (`encoder_attention`).
        patch_size: P, so that distances come out in pixels.

    Shapes:
        weights: (B, h, 1 + L, 1 + L) -> (B, h).
    """
    patches = weights[:, :, 1:, 1:]  # (B, h, L, L)
    total = patches.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(patches.dtype).tiny)
    patches = patches / total  # (B, h, L, L), rows sum to 1
    grid_size = int(round(patches.shape[-1] ** 0.5))
    dist = patch_distances(grid_size, patch_size).to(patches)  # (L, L)
    return (patches * dist).sum(dim=-1).mean(dim=-1)  # (B, h)


def mean_attention_distance(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Mean attention distance in pixels of every encoder block and head, averaged over images.

    Small values are local heads (they look at neighbouring patches), large values global ones;
    `patch_distances(...).mean()` is the value of attention spread uniformly over the patches.

    Args:
        model: a `MaskedAutoencoder`, `ViTClassifier` or `MAEEncoder`.
        images: normalised images.

    Shapes:
        images: (B, C, H, W) -> (depth, h).
    """
    patch_size = encoder_of(model).config.patch_size
    weights = encoder_attention(model, images)  # depth x (B, h, 1 + L, 1 + L)
    return torch.stack([attention_distance(w, patch_size).mean(dim=0) for w in weights])


def attention_distance_figure(models: dict[str, nn.Module], images: torch.Tensor) -> Figure:
    """Mean attention distance per block and head, one panel per model, as in Dosovitskiy et al.
    (2021), Figure 7: one dot per head; the dotted line is attention spread uniformly.

    Args:
        models: named models of one image and patch size (e.g. {"reference": ..., "random init":
            ...}), each a `MaskedAutoencoder`, `ViTClassifier` or `MAEEncoder`.
        images: normalised images the distances are averaged over.

    Returns:
        A matplotlib `Figure`.

    Shapes:
        images: (B, C, H, W).
    """
    fig = Figure(figsize=(3.6 * len(models) + 0.4, 3.2), layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False, sharey=True)[0]
    for ax, (name, model) in zip(axes, models.items()):
        config = encoder_of(model).config
        distances = mean_attention_distance(model, images)  # (depth, h)
        depth, num_heads = distances.shape
        for head in range(num_heads):
            ax.scatter(range(1, depth + 1), distances[:, head].numpy(), s=18,
                       label=f"head {head + 1}")  # fmt: skip
        uniform = patch_distances(config.grid_size, config.patch_size).mean().item()
        ax.axhline(uniform, color="0.5", linestyle=":", linewidth=1, label="uniform attention")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("encoder block")
        ax.set_xticks(range(1, depth + 1))
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("mean attention distance (pixels)")
    axes[-1].legend(fontsize=8, loc="lower right")
    return fig

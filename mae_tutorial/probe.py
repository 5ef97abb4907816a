# Generated from notebooks/08_evaluation.ipynb by `make export`; edit the notebook, not this file.
"""Evaluating a frozen encoder: its features, the linear probe and the kNN vote (paper, Section 4).

    images -> encoder (all patches, eval mode) -> pooled feature (B, D)   `extract_features`
           -> the pooled tokens after every block (depth, B, D)           `extract_block_features`
    features -> BatchNorm (no affine) + linear layer, trained with SGD     `fit_linear_probe`
    features -> k most cosine-similar training points, votes exp(sim / T)  `knn_scores`

Nothing here trains or changes the encoder: features are computed once, without gradients, and the
probe and the vote work on them. Accuracies are percentages (0-100).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from mae_tutorial.data import normalize
from mae_tutorial.model import MAEEncoder, MaskedAutoencoder, ViTClassifier
from mae_tutorial.progress import tqdm
from mae_tutorial.runtime import autocast_dtype, eval_mode, on_device, resolve_device, seeded
from mae_tutorial.training import lr_at  # chapter 7's schedule
from mae_tutorial.validate import check_number  # finite numbers within bounds


def check_uint8_images(images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    """Raise `ValueError` unless `images` is a non-empty uint8 batch (and `labels` one per image)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(
            f"expected a non-empty uint8 batch (N, C, H, W), got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    if labels is not None and tuple(labels.shape) != (len(images),):
        raise ValueError(f"expected labels of shape ({len(images)},), got {tuple(labels.shape)}")


def pool_tokens(tokens: torch.Tensor, pool: str) -> torch.Tensor:
    """One vector per image: the mean of the patch tokens ("mean") or the cls token ("cls").

    Shapes:
        tokens: (B, 1 + L, D) -> (B, D).
    """
    return tokens[:, 1:].mean(dim=1) if pool == "mean" else tokens[:, 0]


def map_batches(
    module: nn.Module,
    images: torch.Tensor,
    fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    amp: str = "auto",
    dim: int = 0,
) -> torch.Tensor:
    """`fn(module, x)` for every batch `x` of normalised uint8 `images`, in eval mode, without
    gradients, under autocast as `amp` says; the results, as float32, joined along `dim`.

    `module` keeps its train/eval flags; it is copied when it must move to `device` (the best
    one here by default), and the result stays on `device`.
    """
    check_uint8_images(images)
    check_number("batch_size", batch_size, 1, integer=True)
    device = resolve_device(device)
    dtype = autocast_dtype(amp, device)
    out = []
    with torch.no_grad(), eval_mode(on_device(module, device)) as module:
        for start in tqdm(range(0, len(images), batch_size), desc="features", leave=False):
            x = normalize(images[start : start + batch_size].to(device))  # (b, C, H, W) float
            with torch.autocast(device.type, dtype or torch.float32, enabled=dtype is not None):
                out.append(fn(module, x).float())
    return torch.cat(out, dim=dim)


def _encoder(model: MaskedAutoencoder | ViTClassifier | MAEEncoder) -> MAEEncoder:
    encoder = getattr(model, "encoder", model)
    if not isinstance(encoder, MAEEncoder):
        raise TypeError(f"expected an MAE, a ViTClassifier or an MAEEncoder, got {type(model)}")
    return encoder


def extract_features(
    model: MaskedAutoencoder | ViTClassifier | MAEEncoder,
    images: torch.Tensor,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    amp: str = "auto",
) -> torch.Tensor:
    """The frozen encoder's feature of every image: all patches, eval mode, no augmentation.

    Args:
        model: an MAE, a classifier or a bare encoder; its encoder's `forward_features` is used,
            with `config.pool` deciding mean-of-patches or cls. Left unchanged.
        images: uint8 images, normalised with CIFAR10_MEAN/STD batch by batch.
        batch_size: images per forward pass.
        device: where to compute; the best one here by default. The result stays there.
        amp: one of `mae_tutorial.runtime.AMP_MODES`; "auto" is bf16 on a GPU, fp32 on a CPU.

    Shapes:
        images: (N, C, H, W) uint8 -> (N, D) float32.
    """
    return map_batches(
        _encoder(model),
        images,
        lambda encoder, x: encoder.forward_features(x),
        batch_size=batch_size,
        device=device,
        amp=amp,
    )  # (N, D)


def _pooled_per_block(encoder: MAEEncoder, x: torch.Tensor) -> torch.Tensor:
    """The pooled tokens after every block; the last one after the final norm too."""
    pool = encoder.config.pool
    pooled = []  # one (b, D) per block
    tokens = encoder(x, on_block=lambda index, out: pooled.append(pool_tokens(out, pool)))
    pooled[-1] = pool_tokens(tokens, pool)  # the last block's tokens after the final norm
    return torch.stack(pooled)  # (depth, b, D)


def extract_block_features(
    model: MaskedAutoencoder | ViTClassifier | MAEEncoder,
    images: torch.Tensor,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    amp: str = "auto",
) -> torch.Tensor:
    """The pooled tokens after every encoder block: where in the encoder the features live.

    Entry i pools (as `config.pool` says) the tokens that block i hands on, read through the
    encoder's `on_block` hook; the last entry also passes the final LayerNorm, so it equals
    `extract_features`. Arguments as `extract_features`.

    Shapes:
        images: (N, C, H, W) uint8 -> (depth, N, D) float32.
    """
    return map_batches(
        _encoder(model),
        images,
        _pooled_per_block,
        batch_size=batch_size,
        device=device,
        amp=amp,
        dim=1,
    )  # (depth, N, D)


def topk_accuracy(
    scores: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)
) -> dict[int, float]:
    """Percentage of rows whose label is among the `k` highest scores, for each `k` in `ks`.

    A `k` larger than the number of classes counts every class (100%).

    Shapes:
        scores: (N, classes), labels: (N,) -> {k: float}.
    """
    ks = tuple(ks)
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # (N, k_max)
    hits = top == labels.to(top.device)[:, None]  # (N, k_max)
    return {k: 100.0 * hits[:, :k].any(dim=1).float().mean().item() for k in ks}


# Base lr of the linear probe's SGD, lr = PROBE_BASE_LR * batch / 256. The paper's 0.1 is for LARS;
# for plain SGD on cached features 0.25 came within 0.5 point of the full-batch L-BFGS optimum in
# 90 epochs (cpu preset, CIFAR-10), where 0.1 stayed 1 point below it.
PROBE_BASE_LR = 0.25


def make_probe_head(dim: int, num_classes: int) -> nn.Sequential:
    """The paper's linear-probe head (Appendix A.1): BatchNorm without affine, then a linear layer.

    The BatchNorm only standardises the features (it adds no capacity: at test time it is a fixed
    affine map that folds into the linear layer), which lets one learning rate suit any encoder.

    Shapes:
        (B, D) -> (B, num_classes).
    """
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01)  # as the official linear probe (MoCo v3)
    nn.init.zeros_(head[1].bias)
    return head


def fit_linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int = 90,
    batch_size: int = 1024,
    lr: float | None = None,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> nn.Sequential:
    """Train `make_probe_head` on cached features (on their device) and return it in eval mode.

    SGD with momentum 0.9, lr = PROBE_BASE_LR * batch_size / 256, per-step cosine decay to 0, no
    warmup. On cached, standardised features the problem is convex and each step costs
    microseconds, so plain SGD with 1024-feature batches gets close to the optimum in a few
    thousand steps; the paper's LARS exists for its 16384-image batches. Batches hold at most N
    features, and a short last batch is dropped (BatchNorm needs batch statistics).

    Shapes:
        features: (N, D), labels: (N,) -> head mapping (B, D) to (B, num_classes).
    """
    check_number("epochs", epochs, 1, integer=True)
    check_number("batch_size", batch_size, 1, integer=True)
    check_number("weight_decay", weight_decay, 0)
    check_number("num_classes", num_classes, 1, integer=True)
    if features.ndim != 2 or tuple(labels.shape) != (len(features),) or len(features) < 2:
        raise ValueError(
            f"expected features (N >= 2, D) and labels (N,), got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )
    batch_size = min(batch_size, len(features))
    lr = PROBE_BASE_LR * batch_size / 256 if lr is None else lr
    check_number("lr", lr, 0)
    labels = labels.to(features.device)
    generator = torch.Generator().manual_seed(seed)
    with seeded(seed):
        head = make_probe_head(features.shape[1], num_classes).to(features.device)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = len(features) // batch_size
    total = epochs * steps_per_epoch
    head.train()
    for epoch in tqdm(range(epochs), desc="linear probe", leave=False):
        order = torch.randperm(len(features), generator=generator).to(features.device)
        for i in range(steps_per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch * steps_per_epoch + i, total, 0, lr, 0.0)
            batch = order[i * batch_size : (i + 1) * batch_size]
            loss = F.cross_entropy(head(features[batch]), labels[batch])  # (b, D) -> (b, classes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return head.eval()


@torch.no_grad()
def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Weighted kNN votes (Wu et al. 2018, DINO): each of the k most cosine-similar training
    points votes for its label with weight exp(similarity / temperature).

    Queries go `chunk_size` at a time, so only a (chunk_size, N) similarity block exists at once.

    Shapes:
        train_features: (N, D), train_labels: (N,), query_features: (M, D) -> votes (M, classes).
    """
    check_number("k", k, 1, integer=True)
    check_number("chunk_size", chunk_size, 1, integer=True)
    check_number("temperature", temperature, 0, low_open=True)  # also rejects nan and inf
    if k > len(train_features):
        raise ValueError(f"k={k} exceeds the {len(train_features)} training points")
    bank = F.normalize(train_features.float(), dim=1)  # (N, D), unit rows
    bank_labels = train_labels.to(bank.device)
    votes = []
    for start in range(0, len(query_features), chunk_size):
        queries = F.normalize(query_features[start : start + chunk_size].float().to(bank.device))
        similarity = queries @ bank.T  # (m, N) cosine similarities
        nearest, index = similarity.topk(k, dim=1)  # (m, k)
        weights = (nearest / temperature).exp()  # (m, k)
        scores = torch.zeros(len(queries), num_classes, device=bank.device)  # (m, classes)
        votes.append(scores.scatter_add_(1, bank_labels[index], weights))
    return torch.cat(votes)  # (M, classes)

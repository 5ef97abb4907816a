"""Evaluating a pretrained MAE: linear probe, kNN, partial and full fine-tuning (paper, Section 4).

    frozen encoder: images -> forward_features -> (N, D) -> BatchNorm (no affine) + linear head
                                                         -> cosine kNN, votes weighted exp(sim / T)
    fine-tuning:    ViTClassifier.from_pretrained(mae) -> train the last k blocks (partial, Figure 9)
                    or all of them with layer-wise lr decay (full); `mae=None` trains from scratch

Accuracies are percentages (0-100) on the test split of the data passed in. No function here
modifies the model it is given: fine-tuning copies the weights, and feature extraction restores the
model's train/eval mode (it works on a copy when the model must move to another device).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mae_tutorial.config import MAEConfig
from mae_tutorial.data import CIFAR10, DeviceLoader, normalize, random_crop_flip
from mae_tutorial.model import MAEEncoder, MaskedAutoencoder, ViTClassifier
from mae_tutorial.pretrain import lr_at, resolve_device
from mae_tutorial.progress import tqdm

# Base lr of the linear probe's SGD, lr = PROBE_BASE_LR * batch / 256. The paper's 0.1 is for LARS;
# for plain SGD on cached features 0.25 came within 0.5 point of the full-batch L-BFGS optimum in
# 90 epochs (cpu preset, CIFAR-10), where 0.1 stayed 1 point below it.
PROBE_BASE_LR = 0.25

# Config fields that decide the encoder's weights and features; a pretrained MAE must match them.
_ENCODER_FIELDS = ("image_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads")
_ENCODER_FIELDS += ("mlp_ratio", "layer_norm_eps", "mask_token_in_encoder", "pool")


# ------------------------------------------------------------------------------------- helpers


def _check_number(name: str, value: float, low: float, *, integer: bool = False) -> None:
    """Raise `ValueError` naming `value` unless it is a number >= `low` (an int if `integer`)."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < low:
        what = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {what} >= {low}, got {value!r}")


def _device(device: torch.device | str | None) -> torch.device:
    """`device` checked to exist, or the best one here (CUDA, then MPS, then the CPU) when None."""
    return resolve_device("auto" if device is None else str(device))


def _use_amp(amp: bool | str, device: torch.device) -> bool:
    """bf16 autocast: on for CUDA when `amp="auto"`, else as asked (CPU bf16 is slow on most CPUs)."""
    if amp == "auto":
        return device.type == "cuda"
    if isinstance(amp, bool):
        return amp
    raise ValueError(f"amp must be 'auto', True or False, got {amp!r}")


def _on_device(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` itself when its parameters are on `device`, else a copy moved there."""
    param = next(module.parameters(), None)
    here = param.device if param is not None else torch.device("cpu")
    same = here.type == device.type and (device.index is None or here.index == device.index)
    return module if same else copy.deepcopy(module).to(device)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generators (CPU and every CUDA device) inside, restore them after.

    Initialisation and stochastic depth draw from the global generators; forking them makes a run
    repeatable without changing the caller's random stream.
    """
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put `module` in eval mode, then give every submodule back its own train/eval flag."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def _check_images(images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(
            f"expected a non-empty uint8 batch (N, C, H, W), got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    if labels is not None and tuple(labels.shape) != (len(images),):
        raise ValueError(f"expected labels of shape ({len(images)},), got {tuple(labels.shape)}")


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


# ------------------------------------------------------------------------------ frozen features


@torch.no_grad()
def extract_features(
    model: MaskedAutoencoder | ViTClassifier | MAEEncoder,
    images: torch.Tensor,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    amp: bool | str = "auto",
) -> torch.Tensor:
    """Features of the frozen encoder for every image: eval mode, no gradients, no augmentation.

    Args:
        model: an MAE, a classifier or a bare encoder; its `encoder.forward_features` (or its
            own) is used, with `config.pool` deciding mean-of-patches or cls.
        images: uint8 images, normalised with CIFAR10_MEAN/STD batch by batch.
        batch_size: images per forward pass.
        device: where to compute; the best one here by default. The result stays there.
        amp: bf16 autocast; "auto" turns it on for CUDA only. Features are returned in float32.

    Shapes:
        images: (N, C, H, W) uint8 -> (N, D) float32.
    """
    _check_images(images)
    _check_number("batch_size", batch_size, 1, integer=True)
    encoder = getattr(model, "encoder", model)
    if not hasattr(encoder, "forward_features"):
        raise TypeError(f"expected an MAE, a ViTClassifier or an MAEEncoder, got {type(model)}")
    device = _device(device)
    use_amp = _use_amp(amp, device)
    features = []
    with _eval_mode(_on_device(encoder, device)) as encoder:
        for start in tqdm(range(0, len(images), batch_size), desc="features", leave=False):
            x = normalize(images[start : start + batch_size].to(device))  # (b, C, H, W) float
            with torch.autocast(device.type, torch.bfloat16, enabled=use_amp):
                features.append(encoder.forward_features(x).float())  # (b, D)
    return torch.cat(features)  # (N, D)


@torch.no_grad()
def extract_block_features(
    model: MaskedAutoencoder | ViTClassifier | MAEEncoder,
    images: torch.Tensor,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The pooled feature after every encoder block: where in the encoder the features live.

    Entry k pools the tokens after block k+1 as `config.pool` says (mean of the patch tokens,
    or the cls token); the last entry also passes the final LayerNorm, so it equals
    `extract_features`. Eval mode, no gradients, no augmentation.

    Shapes:
        images: (N, C, H, W) uint8 -> (depth, N, D) float32.
    """
    _check_images(images)
    _check_number("batch_size", batch_size, 1, integer=True)
    encoder = getattr(model, "encoder", model)
    if not isinstance(encoder, MAEEncoder):
        raise TypeError(f"expected an MAE, a ViTClassifier or an MAEEncoder, got {type(model)}")
    device = _device(device)
    mean_pool = encoder.config.pool == "mean"
    batches = []
    with _eval_mode(_on_device(encoder, device)) as encoder:
        for start in tqdm(range(0, len(images), batch_size), desc="features", leave=False):
            x = encoder.embed(normalize(images[start : start + batch_size].to(device)))  # (b, L, D)
            cls = (encoder.cls_token + encoder.pos_embed[:, :1]).expand(len(x), -1, -1)  # (b, 1, D)
            x = torch.cat([cls, x], dim=1)  # (b, 1 + L, D)
            pooled = []
            for number, block in enumerate(encoder.blocks, start=1):
                x = block(x)  # (b, 1 + L, D)
                out = encoder.norm(x) if number == len(encoder.blocks) else x
                pooled.append(out[:, 1:].mean(dim=1) if mean_pool else out[:, 0])  # (b, D)
            batches.append(torch.stack(pooled).float())  # (depth, b, D)
    return torch.cat(batches, dim=1)  # (depth, N, D)


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    amp: bool | str = "auto",
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (%) of a classifier that maps normalised images to logits.

    Shapes:
        images: (N, C, H, W) uint8, labels: (N,) -> {"top1": float, "top5": float}.
    """
    _check_images(images, labels)
    _check_number("batch_size", batch_size, 1, integer=True)
    device = _device(device)
    use_amp = _use_amp(amp, device)
    logits = []
    with _eval_mode(_on_device(model, device)) as model:
        for start in tqdm(range(0, len(images), batch_size), desc="evaluate", leave=False):
            x = normalize(images[start : start + batch_size].to(device))  # (b, C, H, W)
            with torch.autocast(device.type, torch.bfloat16, enabled=use_amp):
                logits.append(model(x).float())  # (b, classes)
    acc = topk_accuracy(torch.cat(logits), labels)
    return {"top1": acc[1], "top5": acc[5]}


# --------------------------------------------------------------------------------- linear probe


def make_probe_head(dim: int, num_classes: int) -> nn.Sequential:
    """The paper's linear-probe head (Appendix A.2): BatchNorm without affine, then a linear layer.

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
    _check_number("epochs", epochs, 1, integer=True)
    _check_number("batch_size", batch_size, 1, integer=True)
    _check_number("weight_decay", weight_decay, 0)
    _check_number("num_classes", num_classes, 1, integer=True)
    if features.ndim != 2 or tuple(labels.shape) != (len(features),) or len(features) < 2:
        raise ValueError(
            f"expected features (N >= 2, D) and labels (N,), got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )
    # A last batch of one sample would break BatchNorm's batch statistics: drop short batches.
    batch_size = min(batch_size, len(features))
    lr = PROBE_BASE_LR * batch_size / 256 if lr is None else lr
    _check_number("lr", lr, 0)
    labels = labels.to(features.device)
    generator = torch.Generator().manual_seed(seed)
    with _seeded(seed):
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


def linear_probe(
    model: MaskedAutoencoder | ViTClassifier | MAEEncoder,
    data: CIFAR10,
    *,
    epochs: int = 90,
    batch_size: int = 1024,
    lr: float | None = None,
    weight_decay: float = 0.0,
    device: torch.device | str | None = None,
    seed: int = 0,
    last_blocks: int = 1,
) -> dict[str, float | int]:
    """The paper's linear probe, adapted: a linear classifier on the frozen encoder's features.

    Features are extracted once (no augmentation, unlike the paper's weak crops), then the head of
    `make_probe_head` is trained on them by `fit_linear_probe`: seconds even on a CPU.
    With `last_blocks=K > 1` the feature is the concatenation of the pooled tokens after each of
    the last K blocks (`extract_block_features`), as DINO's linear evaluation of small ViTs does
    (Caron et al. 2021, K = 4): still one linear layer, on K times wider features.

    Args:
        model: the encoder to probe (an MAE, a classifier or a bare encoder); left unchanged.
        data: images and labels; the head trains on `train_*` and is scored on `test_*`.
        epochs: passes over the cached training features.
        batch_size: features per SGD step.
        lr: peak learning rate; PROBE_BASE_LR * batch_size / 256 when None.
        weight_decay: 0 as in the paper (and MoCo).
        device: where to compute; the best one here by default.
        seed: seed of the head's init and of the batch order.
        last_blocks: how many of the last blocks' pooled features are concatenated (1: the
            encoder's output only, the paper's probe).

    Returns:
        {"linprobe_top1", "linprobe_top5", "train_top1" (%), "feature_dim" (D, or K * D),
        "last_blocks", "epochs", "lr" (the peak lr used), "seconds" (wall time including
        extraction)}.
    """
    start = time.perf_counter()
    _check_images(data.train_images, data.train_labels)
    _check_images(data.test_images, data.test_labels)
    _check_number("batch_size", batch_size, 1, integer=True)
    _check_number("last_blocks", last_blocks, 1, integer=True)
    if last_blocks == 1:
        train = extract_features(model, data.train_images, device=device)  # (N, D)
        test = extract_features(model, data.test_images, device=device)  # (M, D)
    else:
        encoder = getattr(model, "encoder", model)  # any other kind: extract_block_features says
        if isinstance(encoder, MAEEncoder) and last_blocks > len(encoder.blocks):
            raise ValueError(
                f"last_blocks={last_blocks} exceeds the encoder's {len(encoder.blocks)} blocks"
            )
        train, test = (
            extract_block_features(model, images, device=device)[-last_blocks:]  # (K, N, D)
            .permute(1, 0, 2)
            .flatten(1)  # (N, K * D)
            for images in (data.train_images, data.test_images)
        )
    lr = PROBE_BASE_LR * min(batch_size, len(train)) / 256 if lr is None else lr
    head = fit_linear_probe(
        train, data.train_labels, len(data.classes), epochs=epochs, batch_size=batch_size,
        lr=lr, weight_decay=weight_decay, seed=seed,
    )  # fmt: skip
    with torch.no_grad():
        test_acc = topk_accuracy(head(test), data.test_labels)
        train_acc = topk_accuracy(head(train), data.train_labels, ks=(1,))
    return {
        "linprobe_top1": test_acc[1],
        "linprobe_top5": test_acc[5],
        "train_top1": train_acc[1],
        "feature_dim": train.shape[1],
        "last_blocks": last_blocks,
        "epochs": epochs,
        "lr": lr,
        "seconds": time.perf_counter() - start,
    }


# ------------------------------------------------------------------------------------------ kNN


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
    """Weighted kNN votes (InstDisc, DINO): each of the k most cosine-similar training points
    votes for its label with weight exp(similarity / temperature).

    Queries go `chunk_size` at a time, so only a (chunk_size, N) similarity block exists at once.

    Shapes:
        train_features: (N, D), train_labels: (N,), query_features: (M, D) -> votes (M, classes).
    """
    _check_number("k", k, 1, integer=True)
    _check_number("chunk_size", chunk_size, 1, integer=True)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or temperature <= 0
    ):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
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


def knn_eval(
    model: MaskedAutoencoder | ViTClassifier | MAEEncoder,
    data: CIFAR10,
    *,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> dict[str, float | int]:
    """kNN classification of the test images by the frozen features of the training images.

    Args:
        model: the encoder to evaluate; left unchanged.
        data: the training images are the memory bank, the test images the queries.
        k: neighbours that vote (20 as in DINO).
        temperature: T in the vote weight exp(cosine similarity / T) (0.07 as in InstDisc, DINO).
        batch_size: images per forward pass of the feature extraction.
        device: where to compute; the best one here by default.

    Returns:
        {"knn_top1", "knn_top5" (%), "k", "temperature", "seconds"}.
    """
    _check_number("k", k, 1, integer=True)
    if k > len(data.train_images):
        raise ValueError(f"k={k} exceeds the {len(data.train_images)} training images")
    start = time.perf_counter()
    bank = extract_features(model, data.train_images, batch_size, device)  # (N, D)
    queries = extract_features(model, data.test_images, batch_size, device)  # (M, D)
    votes = knn_scores(
        bank, data.train_labels, queries, len(data.classes), k=k, temperature=temperature
    )  # (M, classes)
    acc = topk_accuracy(votes, data.test_labels)
    return {
        "knn_top1": acc[1],
        "knn_top5": acc[5],
        "k": k,
        "temperature": temperature,
        "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------- fine-tuning


def build_finetune_model(
    mae: MaskedAutoencoder | None,
    config: MAEConfig,
    *,
    num_classes: int = 10,
    drop_path: float = 0.1,
    trainable_blocks: int | None = None,
    seed: int = 0,
) -> ViTClassifier:
    """A classifier to fine-tune: the MAE's encoder (copied) or, with `mae=None`, a random one.

    With `trainable_blocks=k` only the last k blocks, the final LayerNorm and the head keep
    `requires_grad` (the paper's partial fine-tuning, Figure 9). k=0 trains the norm and the
    head: a linear classifier on the frozen features (the norm's affine folds into the head),
    trained with the fine-tuning recipe; the paper's 0-block point is `linear_probe`.

    Args:
        mae: the pretrained model, never modified; None for the from-scratch baseline.
        config: the architecture; when `mae` is given its encoder fields must match `mae.config`.
        num_classes: outputs of the new head.
        drop_path: stochastic depth of the classifier (replaces `config.drop_path`).
        trainable_blocks: None for full fine-tuning, else k in [0, depth].
        seed: seed of the random initialisation (head, and encoder when `mae` is None).
    """
    if not isinstance(config, MAEConfig):
        raise TypeError(f"expected an MAEConfig, got {type(config).__name__}")
    if trainable_blocks is not None:
        _check_number("trainable_blocks", trainable_blocks, 0, integer=True)
        if trainable_blocks > config.depth:
            raise ValueError(
                f"trainable_blocks={trainable_blocks} exceeds the encoder's depth={config.depth}"
            )
    if mae is not None:
        differ = [f for f in _ENCODER_FIELDS if getattr(config, f) != getattr(mae.config, f)]
        if differ:
            pairs = ", ".join(
                f"{f}={getattr(config, f)!r} vs {getattr(mae.config, f)!r}" for f in differ
            )
            raise ValueError(f"config does not match the pretrained MAE's config: {pairs}")
    with _seeded(seed):
        if mae is None:
            model = ViTClassifier(dataclasses.replace(config, drop_path=drop_path), num_classes)
        else:
            model = ViTClassifier.from_pretrained(mae, num_classes, drop_path=drop_path)
    if trainable_blocks is not None:
        model.requires_grad_(False)
        depth = len(model.encoder.blocks)
        for module in (*model.encoder.blocks[depth - trainable_blocks :], model.encoder.norm):
            module.requires_grad_(True)
        model.head.requires_grad_(True)
    return model


def _layer_id(name: str, depth: int) -> int:
    """0 for the patch embedding and tokens, i + 1 for block i, depth + 1 for the norm and head."""
    if name.startswith(("encoder.patch_embed.", "encoder.cls_token", "encoder.mask_token")):
        return 0
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def layer_decay_param_groups(
    model: ViTClassifier, *, weight_decay: float = 0.05, layer_decay: float = 0.75
) -> list[dict[str, Any]]:
    """AdamW parameter groups with layer-wise lr decay (BEiT, ELECTRA; the official MAE's idea).

    Block i (0-based) gets lr scale layer_decay ** (depth - i), the patch embedding and tokens
    layer_decay ** (depth + 1), the final norm and the head 1: layers near the input, which
    pretraining got most right, move least. Biases, norms and tokens get no weight decay. Frozen
    parameters are left out. Each group carries its "lr_scale" for the schedule to multiply.
    """
    depth = len(model.encoder.blocks)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = _layer_id(name, depth)
        no_decay = param.ndim == 1 or name.startswith(("encoder.cls_token", "encoder.mask_token"))
        group = groups.setdefault(
            (layer, no_decay),
            {
                "params": [],
                "lr_scale": layer_decay ** (depth + 1 - layer),
                "weight_decay": 0.0 if no_decay else weight_decay,
            },
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def _set_train_mode(model: ViTClassifier) -> None:
    """Train mode, except frozen parts: they stay fixed feature extractors (no stochastic depth)."""
    model.train()
    for part in (model.encoder.patch_embed, *model.encoder.blocks, model.encoder.norm):
        part.train(any(p.requires_grad for p in part.parameters()))


def train_classifier(
    model: ViTClassifier,
    data: CIFAR10,
    *,
    epochs: int,
    batch_size: int,
    base_lr: float,
    warmup_epochs: float,
    layer_decay: float = 0.75,
    weight_decay: float = 0.05,
    label_smoothing: float = 0.1,
    device: torch.device | str | None = None,
    seed: int = 0,
    amp: bool | str = "auto",
) -> dict[str, Any]:
    """Fine-tune `model` in place (moved to `device`) and score it on the test images each epoch.

    The official recipe at CIFAR scale: random crop (pad 4) and flip on the device, AdamW
    (0.9, 0.999) with lr = base_lr * batch_size / 256, layer-wise lr decay, per-step linear
    warmup then cosine to 0, label-smoothed cross-entropy; bf16 autocast on CUDA by default.
    Mixup, CutMix and RandAugment of the ImageNet recipe are left out. Only parameters with
    `requires_grad` are trained.

    Returns:
        {"top1", "top5" (% on the test images after the last epoch), "lr" (peak), "seconds",
        "history": one dict per epoch with "epoch" (1-based), "loss" (mean train loss),
        "train_top1" (% on the augmented batches), "lr" (head lr at the epoch's end),
        "test_top1", "test_top5"}.
    """
    _check_number("epochs", epochs, 1, integer=True)
    _check_number("batch_size", batch_size, 1, integer=True)
    _check_number("warmup_epochs", warmup_epochs, 0)
    if warmup_epochs > epochs:
        raise ValueError(f"warmup_epochs={warmup_epochs} exceeds epochs={epochs}")
    _check_number("weight_decay", weight_decay, 0)
    for name, value in (("base_lr", base_lr), ("layer_decay", layer_decay)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if layer_decay > 1:
        raise ValueError(f"layer_decay must lie in (0, 1], got {layer_decay!r}")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
    device = _device(device)
    use_amp = _use_amp(amp, device)
    model.to(device)
    loader = DeviceLoader(
        data.train_images, data.train_labels, batch_size,
        shuffle=True, drop_last=True, augment=random_crop_flip, device=device, seed=seed,
    )  # fmt: skip
    lr = base_lr * batch_size / 256
    groups = layer_decay_param_groups(model, weight_decay=weight_decay, layer_decay=layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    total, warmup = epochs * len(loader), round(warmup_epochs * len(loader))
    history, start, step = [], time.perf_counter(), 0
    with _seeded(seed):  # stochastic depth draws from the global generators
        for epoch in tqdm(range(epochs), desc="fine-tune", leave=False):
            _set_train_mode(model)
            loader.set_epoch(epoch)
            # Summed on the device and read once per epoch: no GPU sync per step.
            loss_sum = correct = torch.zeros((), device=device)
            seen = 0
            for x, y in tqdm(loader, desc=f"epoch {epoch + 1}", leave=False):
                for group in optimizer.param_groups:
                    group["lr"] = group["lr_scale"] * lr_at(step, total, warmup, lr, 0.0)
                with torch.autocast(device.type, torch.bfloat16, enabled=use_amp):
                    logits = model(x)  # (B, classes)
                    loss = criterion(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_sum = loss_sum + loss.detach() * len(y)
                correct = correct + (logits.argmax(dim=1) == y).sum()
                seen += len(y)
            test = evaluate_classifier(
                model, data.test_images, data.test_labels, batch_size=512, device=device, amp=amp
            )
            history.append({
                "epoch": epoch + 1,
                "loss": loss_sum.item() / seen,
                "train_top1": 100.0 * correct.item() / seen,
                "lr": lr_at(step - 1, total, warmup, lr, 0.0),
                "test_top1": test["top1"],
                "test_top5": test["top5"],
            })  # fmt: skip
    model.eval()
    return {
        "top1": history[-1]["test_top1"],
        "top5": history[-1]["test_top5"],
        "lr": lr,
        "seconds": time.perf_counter() - start,
        "history": history,
    }


def finetune(
    mae: MaskedAutoencoder | None,
    config: MAEConfig,
    data: CIFAR10,
    *,
    epochs: int = 50,
    batch_size: int = 256,
    base_lr: float = 1e-3,
    layer_decay: float = 0.75,
    weight_decay: float = 0.05,
    drop_path: float = 0.1,
    label_smoothing: float = 0.1,
    warmup_epochs: float = 5,
    trainable_blocks: int | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    amp: bool | str = "auto",
) -> dict[str, Any]:
    """Fine-tune a pretrained MAE's encoder (or a random one) on the labels; full or partial.

    `build_finetune_model` makes the classifier, `train_classifier` trains it; use them directly
    to keep the trained model. `mae` is never modified.

    Args:
        mae: the pretrained model; None trains the same architecture from scratch (the baseline
            at an equal budget).
        config: the architecture; must match `mae.config` in its encoder fields.
        data: trains on `train_*`, scores on `test_*`.
        epochs: passes over the training images.
        batch_size: images per step.
        base_lr: lr = base_lr * batch_size / 256.
        layer_decay: lr scale per block towards the input (1 = none).
        weight_decay: AdamW weight decay of matrices (never of biases, norms, tokens).
        drop_path: stochastic depth rate of the classifier.
        label_smoothing: of the cross-entropy.
        warmup_epochs: linear warmup length, then cosine decay.
        trainable_blocks: None for full fine-tuning; k for partial fine-tuning of the last k blocks
            (with the final norm and the head; 0 = norm and head only).
        device: where to train; the best one here by default.
        seed: seed of the head's (and a from-scratch encoder's) init, batches and drop path.
        amp: bf16 autocast; "auto" = on for CUDA only.

    Returns:
        {"finetune_top1", "finetune_top5" (% on the test images), "trainable_blocks" (None =
        all), "trainable_params", "from_scratch", "epochs", "lr" (peak), "seconds", "history"
        (see `train_classifier`)}.
    """
    model = build_finetune_model(
        mae, config, num_classes=len(data.classes), drop_path=drop_path,
        trainable_blocks=trainable_blocks, seed=seed,
    )  # fmt: skip
    result = train_classifier(
        model, data, epochs=epochs, batch_size=batch_size, base_lr=base_lr,
        warmup_epochs=warmup_epochs, layer_decay=layer_decay, weight_decay=weight_decay,
        label_smoothing=label_smoothing, device=device, seed=seed, amp=amp,
    )  # fmt: skip
    return {
        "finetune_top1": result["top1"],
        "finetune_top5": result["top5"],
        "trainable_blocks": trainable_blocks,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "from_scratch": mae is None,
        "epochs": epochs,
        "lr": result["lr"],
        "seconds": result["seconds"],
        "history": result["history"],
    }

"""Evaluation runs of a pretrained MAE: linear probe, kNN, partial and full fine-tuning (Section 4).

The runner around chapter 8's parts, `mae_tutorial.probe` (features, linear probe, kNN vote) and
`mae_tutorial.lr_decay` (layer-wise lr decay, partial freezing): each run checks its inputs, puts
the parts together, times them and returns a summary dict. `finetune(mae=None, ...)` trains the
same network from scratch. Accuracies are percentages (0-100) on the test split of the data given.
No function here modifies the model it is given: fine-tuning copies the weights, and feature
extraction restores the model's train/eval mode (or works on a copy on another device).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch
from torch import nn

from mae_tutorial import probe, runtime
from mae_tutorial.augment import random_crop_flip
from mae_tutorial.config import MAEConfig
from mae_tutorial.data import CIFAR10, DeviceLoader
from mae_tutorial.lr_decay import freeze_all_but_last, layer_decay_param_groups, train_mode
from mae_tutorial.model import MAEEncoder, MaskedAutoencoder, ViTClassifier
from mae_tutorial.probe import PROBE_BASE_LR, topk_accuracy
from mae_tutorial.progress import tqdm
from mae_tutorial.training import lr_at
from mae_tutorial.validate import check_number

# Config fields that decide the encoder's weights and features; a pretrained MAE must match them.
_ENCODER_FIELDS = ("image_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads")
_ENCODER_FIELDS += ("mlp_ratio", "layer_norm_eps", "mask_token_in_encoder", "pool")


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    amp: str = "auto",
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (%) of a classifier that maps normalised images to logits.

    Shapes:
        images: (N, C, H, W) uint8, labels: (N,) -> {"top1": float, "top5": float}.
    """
    probe.check_uint8_images(images, labels)
    logits = probe.map_batches(
        model, images, lambda model, x: model(x), batch_size=batch_size, device=device, amp=amp
    )  # (N, classes)
    acc = topk_accuracy(logits, labels)
    return {"top1": acc[1], "top5": acc[5]}


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
    `make_probe_head` is trained on them by `fit_linear_probe`: seconds even on a CPU. With
    `last_blocks=K > 1` the feature is the concatenation of the pooled (`config.pool`: mean of the
    patch tokens) tokens after each of the last K blocks, only the last passing the final norm
    (`extract_block_features`). It adapts DINO's probe for ViT-S (Caron et al. 2021,
    `eval_linear.py`, n_last_blocks=4), which concatenates the cls tokens of the last 4 blocks,
    each passed through the final norm.

    `model` (an MAE, a classifier or a bare encoder) is left unchanged; the head trains on
    `data.train_*` and is scored on `data.test_*`; `epochs`, `batch_size`, `lr`, `weight_decay`
    and `seed` are `fit_linear_probe`'s; `device` is where to compute (the best one by default).

    Returns:
        {"linprobe_top1", "linprobe_top5", "train_top1" (%), "feature_dim" (D, or K * D),
        "last_blocks", "epochs", "lr" (the peak lr used), "seconds" (wall time including
        extraction)}.
    """
    start = time.perf_counter()
    probe.check_uint8_images(data.train_images, data.train_labels)
    probe.check_uint8_images(data.test_images, data.test_labels)
    check_number("batch_size", batch_size, 1, integer=True)
    encoder = getattr(model, "encoder", model)  # any other kind: extract_features says
    depth = len(encoder.blocks) if isinstance(encoder, MAEEncoder) else math.inf
    check_number("last_blocks", last_blocks, 1, depth, integer=True)

    def features(images: torch.Tensor) -> torch.Tensor:  # (N, D), or (N, K * D) for K blocks
        if last_blocks == 1:
            return probe.extract_features(model, images, device=device)
        blocks = probe.extract_block_features(model, images, device=device)  # (depth, N, D)
        return blocks[-last_blocks:].permute(1, 0, 2).flatten(1)

    train, test = features(data.train_images), features(data.test_images)
    lr = PROBE_BASE_LR * min(batch_size, len(train)) / 256 if lr is None else lr
    head = probe.fit_linear_probe(
        train, data.train_labels, len(data.classes), epochs=epochs, batch_size=batch_size,
        lr=lr, weight_decay=weight_decay, seed=seed,
    )  # fmt: skip
    with torch.no_grad():
        test_acc = topk_accuracy(head(test), data.test_labels)
        train_acc = topk_accuracy(head(train), data.train_labels, ks=(1,))
    return {
        "linprobe_top1": test_acc[1], "linprobe_top5": test_acc[5], "train_top1": train_acc[1],
        "feature_dim": train.shape[1], "last_blocks": last_blocks, "epochs": epochs, "lr": lr,
        "seconds": time.perf_counter() - start,
    }  # fmt: skip


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

    The training images are the memory bank, the test images the queries; `k` neighbours vote
    with weight exp(cosine similarity / `temperature`) (20 and 0.07 as in DINO's kNN).

    Returns:
        {"knn_top1", "knn_top5" (%), "k", "temperature", "seconds"}.
    """
    check_number("k", k, 1, len(data.train_images), integer=True)
    start = time.perf_counter()
    bank = probe.extract_features(model, data.train_images, batch_size, device)  # (N, D)
    queries = probe.extract_features(model, data.test_images, batch_size, device)  # (M, D)
    votes = probe.knn_scores(
        bank, data.train_labels, queries, len(data.classes), k=k, temperature=temperature
    )  # (M, classes)
    acc = topk_accuracy(votes, data.test_labels)
    return {
        "knn_top1": acc[1], "knn_top5": acc[5], "k": k, "temperature": temperature,
        "seconds": time.perf_counter() - start,
    }  # fmt: skip


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

    `trainable_blocks=k` freezes all but the last k blocks, the final norm and the head
    (`freeze_all_but_last`); None trains everything. `drop_path` replaces `config.drop_path`;
    `seed` seeds the random initialisation (head, and encoder when `mae` is None). When `mae` is
    given, `config` must match `mae.config` in its encoder fields.
    """
    if not isinstance(config, MAEConfig):
        raise TypeError(f"expected an MAEConfig, got {type(config).__name__}")
    if trainable_blocks is not None:
        check_number("trainable_blocks", trainable_blocks, 0, config.depth, integer=True)
    if mae is not None:
        differ = [f for f in _ENCODER_FIELDS if getattr(config, f) != getattr(mae.config, f)]
        if differ:
            pairs = ", ".join(
                f"{f}={getattr(config, f)!r} vs {getattr(mae.config, f)!r}" for f in differ
            )
            raise ValueError(f"config does not match the pretrained MAE's config: {pairs}")
    with runtime.seeded(seed):
        if mae is None:
            model = ViTClassifier(dataclasses.replace(config, drop_path=drop_path), num_classes)
        else:
            model = ViTClassifier.from_pretrained(mae, num_classes, drop_path=drop_path)
    return model if trainable_blocks is None else freeze_all_but_last(model, trainable_blocks)


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
    amp: str = "auto",
) -> dict[str, Any]:
    """Fine-tune `model` in place (moved to `device`) and score it on the test images each epoch.

    The official recipe at CIFAR scale: random crop (pad 4) and flip on the device, AdamW
    (0.9, 0.999) with lr = base_lr * batch_size / 256, layer-wise lr decay, per-step linear
    warmup then cosine to 0, label-smoothed cross-entropy; autocast as `amp` says (one of
    `mae_tutorial.runtime.AMP_MODES`). The paper's RandAugment, mixup and CutMix are left out.
    Only parameters with `requires_grad` are trained.

    Returns:
        {"top1", "top5" (% on the test images after the last epoch), "lr" (peak), "seconds",
        "history": one dict per epoch with "epoch" (1-based), "loss" (mean train loss),
        "train_top1" (% on the augmented batches), "lr" (head lr at the epoch's end),
        "test_top1", "test_top5"}.
    """
    check_number("epochs", epochs, 1, integer=True)
    check_number("batch_size", batch_size, 1, integer=True)
    check_number("warmup_epochs", warmup_epochs, 0, epochs)
    check_number("weight_decay", weight_decay, 0)
    check_number("base_lr", base_lr, 0, low_open=True)
    check_number("layer_decay", layer_decay, 0, 1, low_open=True)
    check_number("label_smoothing", label_smoothing, 0, 1, high_open=True)
    device = runtime.resolve_device(device)
    dtype = runtime.autocast_dtype(amp, device)
    model.to(device)
    loader = DeviceLoader(
        data.train_images, data.train_labels, batch_size,
        shuffle=True, drop_last=True, augment=random_crop_flip, device=device, seed=seed,
    )  # fmt: skip
    lr = base_lr * batch_size / 256
    groups = layer_decay_param_groups(model, weight_decay=weight_decay, layer_decay=layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    scaler = torch.amp.GradScaler(device.type, enabled=runtime.needs_grad_scaler(dtype))
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    total, warmup = epochs * len(loader), round(warmup_epochs * len(loader))
    history, start, step = [], time.perf_counter(), 0
    with runtime.seeded(seed):  # stochastic depth draws from the global generators
        for epoch in tqdm(range(epochs), desc="fine-tune", leave=False):
            train_mode(model)
            loader.set_epoch(epoch)
            # Summed on the device and read once per epoch: no GPU sync per step.
            loss_sum = correct = torch.zeros((), device=device)
            seen = 0
            for x, y in tqdm(loader, desc=f"epoch {epoch + 1}", leave=False):
                for group in optimizer.param_groups:
                    group["lr"] = group["lr_scale"] * lr_at(step, total, warmup, lr, 0.0)
                with torch.autocast(device.type, dtype or torch.float32, enabled=bool(dtype)):
                    logits = model(x)  # (B, classes)
                    loss = criterion(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                loss_sum = loss_sum + loss.detach() * len(y)
                correct = correct + (logits.argmax(dim=1) == y).sum()
                seen += len(y)
            test = evaluate_classifier(
                model, data.test_images, data.test_labels, batch_size=512, device=device, amp=amp
            )
            history.append({
                "epoch": epoch + 1, "loss": loss_sum.item() / seen,
                "train_top1": 100.0 * correct.item() / seen,
                "lr": lr_at(step - 1, total, warmup, lr, 0.0),
                "test_top1": test["top1"], "test_top5": test["top5"],
            })  # fmt: skip
    model.eval()
    return {
        "top1": history[-1]["test_top1"], "top5": history[-1]["test_top5"], "lr": lr,
        "seconds": time.perf_counter() - start, "history": history,
    }  # fmt: skip


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
    amp: str = "auto",
) -> dict[str, Any]:
    """Fine-tune a pretrained MAE's encoder (or, with `mae=None`, a random one) on the labels.

    `build_finetune_model` makes the classifier (all blocks trained, or the last
    `trainable_blocks`), `train_classifier` trains it; use them directly to keep the trained
    model. `mae` is never modified. `seed` seeds the inits, the batches and the drop path.

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
        "finetune_top1": result["top1"], "finetune_top5": result["top5"],
        "trainable_blocks": trainable_blocks,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "from_scratch": mae is None, "epochs": epochs, "lr": result["lr"],
        "seconds": result["seconds"], "history": result["history"],
    }  # fmt: skip

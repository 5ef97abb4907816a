# Generated from notebooks/07_pretraining.ipynb by `make export`; edit the notebook, not this file.
"""The training core: the schedule, AdamW's parameter groups, each step's masking noise, one
training step and one epoch.

    for every step t:  lr = lr_at(t, ...)                       warmup, then cosine
                       noise = masking_noise(B, L, seed, t)     the same mask for the same step
                       loss = train_step(model, x, noise, optimizer, lr)    no device sync
    after an epoch:    the losses read back at once             (train_epoch)

Every function takes plain arguments (a model, tensors, numbers), so chapter 7's loop and the runner
around it (`mae_tutorial.pretrain`) call the very same code and get the very same losses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from mae_tutorial.masking import block_noise, grid_noise
from mae_tutorial.runtime import generator


def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float) -> float:
    """The learning rate of 0-based step `step`: linear warmup from 0, then cosine to `min_lr`.

    As in the official MAE code, the warmup starts at 0 and reaches `peak_lr` at step
    `warmup_steps`; the cosine then reaches `min_lr` at step `total_steps`, one past the last step
    a run takes (`total_steps - 1`). Steps past the end stay at `min_lr`.
    """
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on weight matrices only.

    Norms and biases (1-D parameters) and the learned cls and mask tokens are not decayed: pulling
    them towards zero has no regularising meaning. (The official pretraining code decays the
    tokens; its fine-tuning code exempts the cls token; this package exempts both tokens.)
    Parameters that do not train (`requires_grad=False`) are in neither group.

    Returns:
        `[{"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0}]`.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.rsplit(".", 1)[-1].endswith("token"):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


# How the removed patches are chosen (the paper's Figure 6 and Table 1f); see `masking_noise`.
MASKING_KINDS = ("random", "block", "grid")
GRID_STRIDE = 2  # grid masking keeps one patch in every 2 x 2 cell


def check_masking(kind: str, num_patches: int, mask_ratio: float) -> None:
    """Raise `ValueError` unless masking `kind` can remove `mask_ratio` of `num_patches` patches.

    Grid masking keeps one patch per `GRID_STRIDE` x `GRID_STRIDE` cell, so it fixes the ratio at
    1 - 1/stride**2 (0.75) and needs a square grid whose side the stride divides.
    """
    if kind not in MASKING_KINDS:
        raise ValueError(f"masking must be one of {MASKING_KINDS}, got {kind!r}")
    if kind != "grid":
        return
    side = math.isqrt(num_patches)
    ratio = 1 - 1 / GRID_STRIDE**2
    if side * side != num_patches or side % GRID_STRIDE:
        raise ValueError(
            f"grid masking needs a square grid whose side is divisible by {GRID_STRIDE}, got "
            f"{num_patches} patches"
        )
    if not math.isclose(mask_ratio, ratio):
        raise ValueError(
            f"grid masking keeps 1 patch in {GRID_STRIDE}x{GRID_STRIDE}, i.e. mask_ratio={ratio}; "
            f"got mask_ratio={mask_ratio}"
        )


def masking_noise(
    batch: int,
    num_patches: int,
    seed: int,
    step: int,
    rank: int = 0,
    kind: str = "random",
    mask_ratio: float = 0.75,
) -> torch.Tensor:
    """The masking noise of 0-based step `step`, from a generator seeded by (seed, step, rank).

    `random_masking` keeps the patches with the lowest noise. "random" is uniform noise (the
    paper's sampling); "block" and "grid" come from `block_noise` and `grid_noise`, which need
    `mask_ratio` (block) or fix it (grid, see `check_masking`). The same arguments always give
    the same noise, on every device, which is what makes a resumed run exact.

    Shapes:
        -> (B, L) float32 on the CPU.
    """
    check_masking(kind, num_patches, mask_ratio)
    draw = generator(torch.device("cpu"), seed, step, rank, 2)
    if kind == "block":
        return block_noise(batch, math.isqrt(num_patches), mask_ratio, draw)  # (B, L)
    if kind == "grid":
        return grid_noise(batch, math.isqrt(num_patches), GRID_STRIDE, draw)  # (B, L)
    return torch.rand(batch, num_patches, generator=draw)  # (B, L)


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    noise: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    lr: float,
    *,
    scaler: torch.amp.GradScaler | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One optimiser step on one batch: set the lr, forward, backward, update.

    Args:
        model: the MAE (or a DDP / `torch.compile` wrapper of it), called as
            `model(images, noise=noise).loss`.
        images: a normalised, augmented batch on the model's device.
        noise: the masking noise (`masking_noise`), on the same device.
        optimizer: e.g. AdamW over `param_groups(model, weight_decay)`.
        lr: the learning rate of this step, set on every parameter group.
        scaler: a `torch.amp.GradScaler` for float16 autocast (`runtime.needs_grad_scaler`);
            None backpropagates the loss as it is.
        autocast_dtype: run the forward pass under `torch.autocast` with this dtype
            (`runtime.autocast_dtype`); None runs it in float32.

    Returns:
        The loss, detached, still on the device: reading it (`.item()`) would make the host wait
        for the device at every step.

    Shapes:
        images: (B, C, H, W), noise: (B, L) -> loss ().
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)  # gradients add up across backward calls otherwise
    enabled = autocast_dtype is not None
    with torch.autocast(images.device.type, dtype=autocast_dtype, enabled=enabled):
        loss = model(images, noise=noise).loss  # ()
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()  # scaled up, so small float16 gradients do not vanish
        scaler.step(optimizer)  # unscales first; skips the step if a gradient overflowed
        scaler.update()
    return loss.detach()


def train_epoch(
    model: nn.Module,
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...]],
    optimizer: torch.optim.Optimizer,
    *,
    schedule: Callable[[int], float],
    noise_fn: Callable[[int, int], torch.Tensor],
    first_step: int = 0,
    scaler: torch.amp.GradScaler | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> list[float]:
    """`train_step` over every batch of one epoch; the losses are read back once, at the end.

    Args:
        model: the MAE; put in train mode.
        batches: image batches, or (images, labels) pairs as `DeviceLoader` yields them (the
            labels are ignored).
        optimizer: the optimiser `train_step` updates.
        schedule: the learning rate of a 0-based global step, e.g.
            `functools.partial(lr_at, total_steps=..., warmup_steps=..., peak_lr=..., min_lr=0.0)`.
        noise_fn: `noise_fn(step, batch_size)`, the masking noise of a global step, e.g. from
            `masking_noise`; moved to the images' device here.
        first_step: the global step of the first batch (`epoch * steps_per_epoch`).
        scaler, autocast_dtype: passed to `train_step`.

    Returns:
        The loss of every step, in order, as Python floats.

    Shapes:
        each batch: (B, C, H, W); noise_fn returns (B, L).
    """
    model.train()
    losses = []
    for offset, batch in enumerate(batches):
        images = batch[0] if isinstance(batch, tuple | list) else batch  # (B, C, H, W)
        step = first_step + offset
        noise = noise_fn(step, images.shape[0])  # (B, L), drawn on the CPU
        noise = noise.to(images.device, non_blocking=True)  # a blocking copy would sync the GPU
        loss = train_step(
            model, images, noise, optimizer, schedule(step),
            scaler=scaler, autocast_dtype=autocast_dtype,
        )  # fmt: skip
        losses.append(loss)
    return torch.stack(losses).float().tolist() if losses else []  # one device sync per epoch

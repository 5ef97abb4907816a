"""The pretraining loop: AdamW, warmup + cosine, mixed precision, checkpoint and resume, history.

    for every step:  lr = lr_at(step)  ->  loss = model(x, noise=noise).loss  ->  check it is finite
                     ->  backward, AdamW step  ->  every N epochs / on SIGINT or SIGTERM: checkpoint

The recipe is the paper's (He et al. 2021, Table 8): AdamW with betas (0.9, 0.95), weight decay
0.05, lr = base_lr * batch / 256, a linear warmup then a cosine decay, updated every step, and
random-resized-crop + flip augmentation. The batch size is the total over all processes.

Resuming is exact: a run stopped at any step and resumed ends with bit-identical weights to one
that never stopped. No random state has to be carried for that, because every random draw is made
from a generator seeded afresh from (seed, step): the data order and augmentation by `DeviceLoader`
(seeded by (seed, epoch, batch)), the masking noise here (passed to the model as `noise=`). The
global torch RNG (used only by stochastic depth, off in pretraining) is stored and restored too.

Progress goes to a tqdm bar (set `TQDM_DISABLE=1` to hide it); nothing is printed.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mae_tutorial.checkpoint import (
    LATEST_NAME,
    config_differences,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_json,
    snapshot_name,
)
from mae_tutorial.config import MAEConfig
from mae_tutorial.data import CIFAR10, DeviceLoader, random_resized_crop_flip
from mae_tutorial.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    env_local_rank,
    init_distributed,
)
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.progress import tqdm
from mae_tutorial.training import (
    MASKING_KINDS,
    check_masking,
    lr_at,
    masking_noise,
    param_groups,
)

HISTORY_NAME = "history.json"
AMP_MODES = ("auto", "bf16", "fp16", "off")
CHECKPOINT_KIND = "mae_tutorial.pretrain"
# Settings that shape the trajectory: a resumed run must use the same ones to end where an
# uninterrupted run would. The others (device, amp, compile, checkpointing) may change.
RUN_FIELDS = (
    "epochs", "batch_size", "base_lr", "weight_decay", "betas", "warmup_epochs", "min_lr", "seed",
    "subset", "masking",
)  # fmt: skip


@dataclass(frozen=True)
class TrainSettings:
    """How to pretrain: the optimiser, the schedule, precision, device and checkpointing.

    Args:
        epochs: passes over the (sub)set.
        batch_size: images per optimiser step, in total over all processes.
        base_lr: the lr per 256 images; the peak lr is `base_lr * batch_size / 256` (the paper's
            linear scaling rule).
        weight_decay: AdamW's decoupled weight decay on weight matrices (not on norms, biases or
            the cls/mask tokens).
        betas: AdamW's betas; the paper's 0.95 (not 0.999) keeps large-batch ViT training stable.
        warmup_epochs: epochs of linear warmup from 0 to the peak lr (fractions allowed); None
            means 10% of `epochs`.
        min_lr: the lr the cosine decay ends at.
        amp: mixed precision. "auto": bf16 on a GPU that supports it, fp16 with loss scaling on
            other GPUs, off on CPU and MPS. "bf16" and "fp16" force one ("fp16" needs CUDA);
            "off" trains in fp32.
        compile: wrap the model in `torch.compile`.
        seed: seeds the data order, the augmentation and the masking noise.
        checkpoint_every: write `checkpoint.pt` after every this many epochs (and after the last).
        keep_snapshots: also keep a copy `epoch_XXXX.pt` of each of those checkpoints.
        subset: train on the first `subset` training images only; None for all of them.
        device: "auto" (CUDA, then MPS, then CPU) or a torch device string such as "cuda:1".
        masking: how the removed patches are sampled: "random" (uniform, the paper's default),
            "block" (large rectangles, as BEiT) or "grid" (one kept patch per 2 x 2 cell, which
            needs the model's mask_ratio to be 0.75).
    """

    epochs: int = 200
    batch_size: int = 256
    # 10x the paper's 1.5e-4. The paper trains with batch 4096, i.e. at an absolute lr of 2.4e-3;
    # at CIFAR's usual batch of 256 the linear rule would give 1.5e-4, which learns far too slowly
    # in the few hundred epochs a CIFAR run gets (CIFAR reproductions keep the absolute lr near the
    # paper's, e.g. by accumulating to 4096). Measured on the `cpu` preset, 5000 real images, 6
    # epochs, batch 256: final loss 0.826 at 1.5e-4, 0.798 at 1.5e-3, 0.787 at 4e-3. 1.5e-3 takes
    # most of the gain while staying well below the absolute lr the paper used for deeper models.
    base_lr: float = 1.5e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    # The paper warms up for 40 of 800 epochs (5%); CIFAR reproductions use 10%, and short runs at
    # a high lr need the gentler start, hence None = 10%.
    warmup_epochs: float | None = None
    min_lr: float = 0.0
    amp: str = "auto"
    compile: bool = False
    seed: int = 0
    checkpoint_every: int = 1
    keep_snapshots: bool = False
    subset: int | None = None
    device: str = "auto"
    masking: str = "random"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "checkpoint_every"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("seed", self.seed, minimum=0)
        if self.subset is not None:
            _check_int("subset", self.subset, minimum=1)
        for name in ("base_lr", "weight_decay", "min_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0 or (name == "base_lr" and value == 0):
                bound = "> 0" if name == "base_lr" else ">= 0"
                raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
        betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else None
        if betas is None or len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        if self.min_lr > self.lr:
            raise ValueError(
                f"min_lr={self.min_lr} exceeds the peak lr {self.lr} "
                f"(base_lr={self.base_lr} * batch_size={self.batch_size} / 256)"
            )
        if self.warmup_epochs is not None and not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(
                f"warmup_epochs must lie in [0, epochs={self.epochs}], got {self.warmup_epochs!r}"
            )
        if self.masking not in MASKING_KINDS:
            raise ValueError(f"masking must be one of {MASKING_KINDS}, got {self.masking!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        for name in ("compile", "keep_snapshots"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ValueError(
                    f"device must be 'auto' or a torch device such as 'cpu', 'cuda', 'cuda:1', "
                    f"'mps'; got {self.device!r}"
                ) from None

    @property
    def lr(self) -> float:
        """The peak learning rate, `base_lr * batch_size / 256`."""
        return self.base_lr * self.batch_size / 256

    @property
    def warmup(self) -> float:
        """Warmup length in epochs, with None resolved to 10% of `epochs`."""
        return 0.1 * self.epochs if self.warmup_epochs is None else float(self.warmup_epochs)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (betas as a list), for checkpoints and JSON."""
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainSettings:
        """Rebuild settings from `to_dict`'s output; unknown keys raise `ValueError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainSettings fields {unknown}; expected {sorted(known)}")
        return cls(**values)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped before updating the weights.

    Attributes:
        step: the 1-based index of the step whose loss was not finite.
        loss: the offending value.
        checkpoint: the last good checkpoint, or None when there is none.
    """

    def __init__(self, message: str, step: int, loss: float, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step, self.loss, self.checkpoint = step, loss, checkpoint


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint of the exact step reached was written first.

    Attributes:
        signum: the signal number (`signal.SIGINT` or `signal.SIGTERM`).
        step: optimiser steps completed (the checkpoint's `step`).
        checkpoint: the checkpoint written, from which `resume=True` continues.
    """

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"{name} received: stopped after step {step}, saved {checkpoint}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


@dataclass(frozen=True)
class StepInfo:
    """What `pretrain` tells its callback after every optimiser step.

    Attributes:
        step: steps completed so far (1 after the first).
        total_steps: steps in the whole run.
        epoch: 0-based epoch the step belonged to.
        loss: the step's loss, averaged over processes.
        lr: the learning rate the step used.
        images_per_s: throughput of the step, over all processes.
    """

    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    images_per_s: float


def make_optimizer(
    model: nn.Module, settings: TrainSettings, fused: bool | None = None
) -> torch.optim.AdamW:
    """The paper's AdamW: `settings`' betas and peak lr, weight decay on weight matrices only."""
    return torch.optim.AdamW(
        param_groups(model, settings.weight_decay), lr=settings.lr, betas=settings.betas,
        fused=fused,
    )  # fmt: skip


def forward_loss(
    net: nn.Module, x: torch.Tensor, noise: torch.Tensor, autocast_dtype: torch.dtype | None
) -> torch.Tensor:
    """The MAE loss of one batch, under autocast when `autocast_dtype` is set (see `resolve_amp`).

    Shapes:
        x: (B, C, H, W) normalised, noise: (B, L) -> loss ().
    """
    enabled = autocast_dtype is not None
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=enabled):
        return net(x, noise=noise).loss


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    lr: float,
) -> None:
    """Backpropagate `loss` and take one optimiser step at learning rate `lr` (the loss is scaled
    first when fp16 needs a GradScaler; a disabled scaler is a no-op)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """Turn "auto" or a device string into a usable `torch.device`, checking it exists.

    "auto" picks CUDA (device `local_rank` under torchrun), then MPS, then the CPU.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available here")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} requested but MPS is not available here")
    return device


def resolve_amp(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """The autocast dtype (None = fp32) and whether a GradScaler is needed, for `mode` on `device`."""
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {mode!r}")
    cuda = device.type == "cuda"
    if mode == "auto":
        if not cuda:
            return None, False
        return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (torch.float16, True)
    if mode == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ValueError("amp='bf16' requested but this GPU does not support bfloat16")
        return torch.bfloat16, False
    if mode == "fp16":
        if not cuda:
            raise ValueError(f"amp='fp16' needs a CUDA device (loss scaling), got {device}")
        return torch.float16, True
    return None, False


def _seed(*values: int) -> int:
    """A 63-bit seed mixing non-negative ints (numpy's SeedSequence hash), for torch.Generator."""
    state = np.random.SeedSequence(values).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


class _StopFlag:
    """Turns SIGINT and SIGTERM into a flag that the loop checks after each step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once, without a checkpoint
        self.signum = signum

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


def _training_images(data: CIFAR10 | torch.Tensor, subset: int | None) -> torch.Tensor:
    images = data.train_images if isinstance(data, CIFAR10) else data
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        what = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else ""
        raise TypeError(
            f"data must be a CIFAR10 or a uint8 (N, C, H, W) tensor, got {type(images).__name__} "
            f"{what}".rstrip()
        )
    if subset is not None:
        if subset > len(images):
            raise ValueError(f"subset={subset} exceeds the {len(images)} training images")
        images = images[:subset]
    return images  # (N, C, H, W) uint8


def _check_resumable(
    state: dict[str, Any], settings: TrainSettings, steps_per_epoch: int, path: Path
) -> None:
    if state.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{path} is not a pretraining checkpoint (kind={state.get('kind')!r})")
    # Fields a checkpoint predates (such as `masking`) take their default.
    defaults = TrainSettings().to_dict()
    stored = {k: state["settings"].get(k, defaults[k]) for k in RUN_FIELDS}
    wanted = {k: settings.to_dict()[k] for k in RUN_FIELDS}
    diffs = config_differences(stored, wanted)
    if diffs:
        raise ValueError(
            f"{path} was trained with different settings: {'; '.join(diffs)}. Resume with the "
            "same settings, or start a new run in another folder"
        )
    if state["steps_per_epoch"] != steps_per_epoch:
        raise ValueError(
            f"{path} has {state['steps_per_epoch']} steps per epoch, this run {steps_per_epoch}: "
            "the data changed"
        )


def pretrain(
    model: MaskedAutoencoder,
    data: CIFAR10 | torch.Tensor,
    settings: TrainSettings,
    out_dir: str | Path,
    resume: bool = False,
    callback: Callable[[StepInfo], None] | None = None,
    *,
    overwrite: bool = False,
) -> list[dict[str, float]]:
    """Pretrain `model` in place on the training images of `data`, with checkpoints in `out_dir`.

    Under `torchrun` each process trains on its own shard (DistributedDataParallel); only rank 0
    writes files and shows progress. SIGINT and SIGTERM finish the current step, write
    `checkpoint.pt` at that step and raise `TrainingInterrupted`; a second SIGINT stops at once.

    Args:
        model: the MAE to train; moved to the device, updated in place.
        data: a `CIFAR10` (its training images are used) or a uint8 image tensor.
        settings: the recipe.
        out_dir: where `checkpoint.pt`, `epoch_XXXX.pt` and `history.json` go.
        resume: continue from the newest checkpoint in `out_dir` (start afresh if there is none).
            The model config and the settings in `RUN_FIELDS` must match the checkpoint's.
        callback: called on every process after every step with a `StepInfo`.
        overwrite: start afresh even though `out_dir` holds a checkpoint, deleting it.

    Returns:
        The history: one dict per epoch with `epoch` (1-based), `step`, `loss` (mean over the
        epoch), `lr` (of its last step), `time` (seconds) and `images_per_s`.

    Raises:
        ValueError: bad settings for this data or device, `out_dir` holds a checkpoint and neither
            `resume` nor `overwrite` is set, or the checkpoint does not match.
        NonFiniteLossError: the loss became NaN or infinite (no checkpoint of that state is written).
        TrainingInterrupted: SIGINT or SIGTERM arrived (after the checkpoint was written).

    Shapes:
        data: (N, C, H, W) uint8 images (or a CIFAR10 holding them).
    """
    if not isinstance(getattr(model, "config", None), MAEConfig):
        raise TypeError(f"model must be a MaskedAutoencoder, got {type(model).__name__}")
    images = _training_images(data, settings.subset)
    device = resolve_device(settings.device, env_local_rank())
    autocast_dtype, use_scaler = resolve_amp(settings.amp, device)
    info = init_distributed(device.type)
    stop = _StopFlag()
    try:
        stop.install()
        return _Run(model, images, settings, Path(out_dir), device, info, stop).train(
            resume, overwrite, callback, autocast_dtype, use_scaler
        )
    finally:
        stop.restore()
        cleanup_distributed(info)


class _Run:
    """The state of one call to `pretrain` (model, optimiser, loader, bookkeeping)."""

    def __init__(
        self,
        model: MaskedAutoencoder,
        images: torch.Tensor,
        settings: TrainSettings,
        out_dir: Path,
        device: torch.device,
        info: DistInfo,
        stop: _StopFlag,
    ) -> None:
        if settings.batch_size % info.world_size:
            raise ValueError(
                f"batch_size={settings.batch_size} must be divisible by the {info.world_size} "
                "processes"
            )
        per_rank = settings.batch_size // info.world_size
        if per_rank > len(images) // info.world_size:
            raise ValueError(
                f"batch_size={settings.batch_size} exceeds the {len(images)} training images "
                f"(per process: {per_rank} > {len(images) // info.world_size})"
            )
        check_masking(settings.masking, model.config.num_patches, model.config.mask_ratio)
        self.model, self.settings, self.out_dir = model.to(device), settings, out_dir
        self.device, self.info, self.stop = device, info, stop
        self.loader = DeviceLoader(
            images,
            torch.zeros(len(images), dtype=torch.int64),  # labels are not used in pretraining
            per_rank,
            shuffle=True,
            drop_last=True,
            augment=random_resized_crop_flip,
            device=device,
            seed=settings.seed,
            rank=info.rank,
            world_size=info.world_size,
        )
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * settings.epochs
        self.warmup_steps = round(settings.warmup * self.steps_per_epoch)
        self.optimizer = make_optimizer(model, settings)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.partial = {"loss_sum": 0.0, "steps": 0, "time": 0.0, "images": 0}

    def _prepare(self, resume: bool, overwrite: bool, scaler: torch.amp.GradScaler) -> None:
        existing = latest_checkpoint(self.out_dir)
        if existing is not None and resume:
            state = load_checkpoint(existing, expected_config=self.model.config)
            _check_resumable(state, self.settings, self.steps_per_epoch, existing)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if state["scaler"]:
                scaler.load_state_dict(state["scaler"])
            self.step, self.history = state["step"], state["history"]
            self.partial = state["epoch_partial"]
            torch.set_rng_state(state["rng"]["torch"])
            cuda_states = state["rng"]["cuda"]
            if cuda_states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(cuda_states)
            return
        if existing is not None and not overwrite:
            raise ValueError(
                f"{self.out_dir} already holds a checkpoint ({existing.name}); resume it "
                "(resume=True, --resume), overwrite it (overwrite=True, --overwrite), or choose "
                "another folder"
            )
        if existing is not None and self.info.is_main:
            for path in self.out_dir.iterdir():
                if path.name in (LATEST_NAME, HISTORY_NAME) or (
                    path.name.startswith("epoch_") and path.suffix == ".pt"
                ):
                    path.unlink()
        barrier(self.info)
        torch.manual_seed(_seed(self.settings.seed, 1))

    def _state(self, scaler: torch.amp.GradScaler, last_loss: float) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []
        return {
            "kind": CHECKPOINT_KIND,
            "format": 1,
            "model": self.model.state_dict(),
            "config": self.model.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.info.world_size,
            "settings": self.settings.to_dict(),
            "history": self.history,
            "epoch_partial": dict(self.partial),
            "last_loss": last_loss,
            "rng": {"torch": torch.get_rng_state(), "cuda": cuda},
        }

    def _save(self, scaler: torch.amp.GradScaler, last_loss: float, snapshot: bool) -> Path:
        path = self.out_dir / LATEST_NAME
        barrier(self.info)
        if self.info.is_main:
            state = self._state(scaler, last_loss)
            save_checkpoint(path, state)
            if snapshot:
                save_checkpoint(self.out_dir / snapshot_name(state["epoch"]), state)
        barrier(self.info)
        return path

    def _stop_requested(self) -> bool:
        if not self.info.enabled:
            return self.stop.signum is not None
        # Every process must stop at the same step, also when only some got the signal.
        flag = torch.tensor([float(self.stop.signum is not None)], device=self.device)
        return bool(all_reduce_sum(flag, self.info).item() > 0)

    def _end_epoch(self, lr: float) -> None:
        p = self.partial
        self.history.append(
            {
                "epoch": self.step // self.steps_per_epoch,
                "step": self.step,
                "loss": p["loss_sum"] / max(1, p["steps"]),
                "lr": lr,
                "time": p["time"],
                "images_per_s": p["images"] / max(p["time"], 1e-9),
            }
        )
        self.partial = {"loss_sum": 0.0, "steps": 0, "time": 0.0, "images": 0}
        if self.info.is_main:
            save_json(self.out_dir / HISTORY_NAME, self.history)

    def train(
        self,
        resume: bool,
        overwrite: bool,
        callback: Callable[[StepInfo], None] | None,
        autocast_dtype: torch.dtype | None,
        use_scaler: bool,
    ) -> list[dict[str, float]]:
        scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self._prepare(resume, overwrite, scaler)
        net: nn.Module = self.model
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=ids, broadcast_buffers=False)
        if self.settings.compile:
            net = torch.compile(net)
        net.train()
        num_patches = self.model.config.num_patches
        bar_options = {} if self.info.is_main else {"disable": True}  # TQDM_DISABLE still applies
        bar = tqdm(
            total=self.total_steps, initial=self.step, desc="pretrain", unit="step", **bar_options
        )
        batches = None
        loss_value = lr = float("nan")
        try:
            while self.step < self.total_steps:
                epoch, index = divmod(self.step, self.steps_per_epoch)
                if batches is None:
                    self.loader.set_epoch(epoch)
                    batches = self.loader.iter_from(index)
                tic = time.perf_counter()
                x, _ = next(batches)  # (B, C, H, W) normalised and augmented, on the device
                lr = lr_at(
                    self.step, self.total_steps, self.warmup_steps, self.settings.lr,
                    self.settings.min_lr,
                )  # fmt: skip
                noise = masking_noise(
                    x.shape[0],
                    num_patches,
                    self.settings.seed,
                    self.step,
                    self.info.rank,
                    self.settings.masking,
                    self.model.config.mask_ratio,
                ).to(self.device)  # (B, L)
                loss = forward_loss(net, x, noise, autocast_dtype)
                total = all_reduce_sum(loss.detach().float().reshape(1).clone(), self.info)
                loss_value = total.item() / self.info.world_size
                if not math.isfinite(loss_value):  # checked before any update touches the weights
                    self._non_finite(loss_value, epoch, index)
                optimizer_step(loss, self.optimizer, scaler, lr)
                self.step += 1
                seconds = time.perf_counter() - tic
                images = x.shape[0] * self.info.world_size
                self.partial["loss_sum"] += loss_value
                self.partial["steps"] += 1
                self.partial["time"] += seconds
                self.partial["images"] += images
                bar.set_postfix(
                    epoch=epoch + 1, loss=f"{loss_value:.4f}", lr=f"{lr:.2e}",
                    img_s=f"{images / seconds:.0f}", refresh=False,
                )  # fmt: skip
                bar.update(1)
                if callback is not None:
                    callback(
                        StepInfo(
                            self.step, self.total_steps, epoch, loss_value, lr, images / seconds
                        )
                    )
                saved = None
                if self.step % self.steps_per_epoch == 0:
                    batches = None
                    self._end_epoch(lr)
                    done = self.step // self.steps_per_epoch
                    if done % self.settings.checkpoint_every == 0 or done == self.settings.epochs:
                        saved = self._save(scaler, loss_value, self.settings.keep_snapshots)
                if self.step < self.total_steps and self._stop_requested():
                    if saved is None:
                        saved = self._save(scaler, loss_value, snapshot=False)
                    raise TrainingInterrupted(self.stop.signum or signal.SIGTERM, self.step, saved)
        finally:
            bar.close()
        return self.history

    def _non_finite(self, value: float, epoch: int, index: int) -> None:
        last = latest_checkpoint(self.out_dir)
        where = (
            f"the last good checkpoint is {last}"
            if last is not None
            else "no checkpoint exists yet"
        )
        raise NonFiniteLossError(
            f"non-finite loss {value} at step {self.step + 1} of {self.total_steps} (epoch "
            f"{epoch + 1}, batch {index + 1} of {self.steps_per_epoch}); stopped before updating "
            f"the weights and wrote no checkpoint; {where}. Try a lower --base-lr, a longer "
            "warmup or --amp off",
            step=self.step + 1,
            loss=value,
            checkpoint=last,
        )

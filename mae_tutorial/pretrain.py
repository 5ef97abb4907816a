"""The robust runner around chapter 7's loop: settings, checkpoints, exact resume, signals, history.

Each step is chapter 7's `training.train_step` (with its schedule, parameter groups, masking noise
and augmentation); device, precision and seeds come from `runtime`. What a real run adds: exact
resume (every random draw is seeded from (seed, step)); losses read back in groups, not each step;
nothing written worse than what was there (only finite, checked states; atomic writes; history
after the checkpoint; our stray temporaries removed; write errors in one line); a first signal
stops after a checkpoint, a second at once; torchrun (a shard per process, rank 0 writes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from mae_tutorial import checkpoint as ckpt
from mae_tutorial import distributed as dist
from mae_tutorial import runtime, training
from mae_tutorial.augment import random_resized_crop_flip
from mae_tutorial.config import MAEConfig
from mae_tutorial.data import CIFAR10, DeviceLoader
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.progress import tqdm
from mae_tutorial.training import MASKING_KINDS, check_masking, lr_at, masking_noise, param_groups
from mae_tutorial.validate import check_choice, check_flag, check_number

HISTORY_NAME = "history.json"
CHECKPOINT_KIND = "mae_tutorial.pretrain"
SYNC_EVERY = 50  # steps between loss read-backs (each waits for the device to catch up)
# Settings that shape the trajectory: a resumed run must use the same ones to end where an
# uninterrupted run would. The others (device, amp, compile, checkpointing) may change.
RUN_FIELDS = (
    "epochs", "batch_size", "base_lr", "weight_decay", "betas", "warmup_epochs", "min_lr", "seed",
    "subset", "masking",
)  # fmt: skip
_NEW_EPOCH = {"loss_sum": 0.0, "steps": 0, "time": 0.0, "images": 0}  # an epoch's running sums
# The temporaries `ckpt.save_checkpoint`/`save_json` leave when killed mid-write, and only those.
_OUR_TEMPORARY = re.compile(r"^\.(checkpoint\.pt|history\.json|epoch_\d+\.pt)\.\w+\.tmp$")


@dataclass(frozen=True)
class TrainSettings:
    """How to pretrain: the optimiser, the schedule, precision, device and checkpointing.

    The peak lr is `base_lr * batch_size / 256` (the paper's linear scaling rule); the lr rises
    linearly from 0 over `warmup_epochs`, then follows a cosine down to `min_lr`. The default
    `base_lr` is 10x the paper's 1.5e-4 (set for batch 4096), which learns too slowly for a CIFAR
    run: on the `cpu` preset, 5000 real images, 6 epochs, batch 256, the final loss was 0.826 at
    1.5e-4, 0.798 at 1.5e-3 and 0.787 at 4e-3.
    """

    epochs: int = 200  # passes over the (sub)set
    batch_size: int = 256  # images per optimiser step, in total over all processes
    base_lr: float = 1.5e-3  # the lr per 256 images
    weight_decay: float = 0.05  # AdamW's, on weight matrices only (`param_groups`)
    betas: tuple[float, float] = (0.9, 0.95)  # the paper's 0.95 keeps large-batch ViTs stable
    warmup_epochs: float | None = None  # fractions allowed; None: 10% of `epochs` (paper: 5%)
    min_lr: float = 0.0  # where the cosine ends
    amp: str = "auto"  # one of `runtime.AMP_MODES`, see `runtime.autocast_dtype`
    compile: bool = False  # wrap the model in `torch.compile`
    seed: int = 0  # seeds the data order, the augmentation and the masking noise
    checkpoint_every: int = 1  # epochs between writes of `checkpoint.pt` (the last one always)
    keep_snapshots: bool = False  # also keep each of those as `epoch_XXXX.pt`
    subset: int | None = None  # train on the first `subset` training images only
    device: str = "auto"  # CUDA, then MPS, then the CPU; or a device such as "cuda:1"
    masking: str = "random"  # how removed patches are sampled, one of `MASKING_KINDS`

    def __post_init__(self) -> None:
        for name, low in (("epochs", 1), ("batch_size", 1), ("checkpoint_every", 1), ("seed", 0)):
            check_number(name, getattr(self, name), low, integer=True)
        if self.subset is not None:
            check_number("subset", self.subset, 1, integer=True)
        check_number("base_lr", self.base_lr, 0, low_open=True)
        check_number("weight_decay", self.weight_decay, 0)
        check_number("min_lr", self.min_lr, 0)
        betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else ()
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} exceeds the peak lr {self.lr} (base_lr="
                             f"{self.base_lr} * batch_size={self.batch_size} / 256)")  # fmt: skip
        if self.warmup_epochs is not None:
            check_number("warmup_epochs", self.warmup_epochs, 0, self.epochs)
        check_choice("masking", self.masking, MASKING_KINDS)
        check_choice("amp", self.amp, runtime.AMP_MODES)
        check_flag("compile", self.compile)
        check_flag("keep_snapshots", self.keep_snapshots)
        runtime.parse_device(self.device)  # a name; whether it exists here is checked at the start

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
        return {**dataclasses.asdict(self), "betas": list(self.betas)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainSettings:
        """Rebuild settings from `to_dict`'s output; unknown keys raise `ValueError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(values) - known):
            raise ValueError(f"unknown TrainSettings fields {unknown}; expected {sorted(known)}")
        return cls(**values)


class NonFiniteLossError(RuntimeError):
    """A loss (`loss`, of 1-based step `step`) was not finite; nothing of that state was saved. The
    model is reset to `checkpoint`, the last good checkpoint, when there is one (else None)."""

    def __init__(self, message: str, step: int, loss: float, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step, self.loss, self.checkpoint = step, loss, checkpoint


class TrainingInterrupted(Exception):
    """Signal `signum` arrived; `checkpoint` was written first, after `step` steps (resume it)."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"{name} received: stopped after step {step}, saved {checkpoint}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class TrainingAborted(KeyboardInterrupt):
    """A second SIGINT or SIGTERM (`signum`): stopped at once; the files written are intact."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"second {signal.Signals(signum).name}: stopped at once, mid-step")
        self.signum = signum


class CheckpointWriteError(OSError):
    """A checkpoint or history.json could not be written (one line: the file and why); the files
    already there are intact."""


@dataclass(frozen=True)
class StepInfo:
    """What `pretrain` tells its callback after every optimiser step."""

    step: int  # steps completed so far (1 after the first)
    total_steps: int  # in the whole run
    epoch: int  # 0-based epoch the step belonged to
    lr: float  # the learning rate the step used
    images_per_s: float  # over all processes (on a GPU, of queueing the step unless `loss` is read)
    loss_tensor: torch.Tensor = dataclasses.field(repr=False)  # (1,) on the device, process mean

    @property
    def loss(self) -> float:
        """The step's loss as a float (reading it waits for the device to finish the step)."""
        return self.loss_tensor.item()


def make_optimizer(
    model: nn.Module, settings: TrainSettings, fused: bool | None = None
) -> torch.optim.AdamW:
    """The paper's AdamW: `settings`' betas and peak lr, weight decay on weight matrices only."""
    groups = param_groups(model, settings.weight_decay)
    return torch.optim.AdamW(groups, lr=settings.lr, betas=settings.betas, fused=fused)


@contextlib.contextmanager
def _signals(received: list[int]) -> Iterator[None]:
    """SIGINT and SIGTERM inside: the first is noted in `received` (the loop stops at the next step
    boundary), a second raises `TrainingAborted` at once. Only the main thread can set handlers."""

    def handle(signum: int, frame: Any) -> None:
        if received:
            raise TrainingAborted(signum)
        received.append(signum)

    main = threading.current_thread() is threading.main_thread()
    previous = {n: signal.signal(n, handle) for n in (signal.SIGINT, signal.SIGTERM) if main}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _write(save: Callable[[Path, Any], Path], path: Path, value: Any) -> None:
    """`save(path, value)` (an atomic write); a failure becomes one `CheckpointWriteError` line."""
    try:
        save(path, value)
    except OSError as err:
        raise CheckpointWriteError(
            f"could not write {path}: {err.strerror or err}; the files already in {path.parent} "
            "are intact; once that is fixed, continue with resume=True (--resume)"
        ) from None


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
    writes files and shows progress. A first SIGINT or SIGTERM finishes the current step, writes
    `checkpoint.pt` at that step and raises `TrainingInterrupted`; a second raises at once.

    Args:
        model: the MAE to train; moved to the device, updated in place.
        data: a `CIFAR10` (its training images are used) or a uint8 image tensor.
        out_dir: the folder for `checkpoint.pt`, `epoch_XXXX.pt` and `history.json` (written
            with each checkpoint, so that the two agree).
        resume: continue from the newest checkpoint in `out_dir` (start afresh if there is none);
            the model config and the settings in `RUN_FIELDS` must match the checkpoint's.
        callback: called on every process after every step with a `StepInfo`.
        overwrite: start afresh even though `out_dir` holds a checkpoint, deleting it.

    Returns:
        The history, one dict per epoch: `epoch` (1-based), `step`, `loss` (the epoch's mean), `lr`
        (of its last step), `time` (seconds) and `images_per_s`.

    Raises:
        ValueError: bad settings for this data or device; `out_dir` cannot be a folder, or holds a
            checkpoint while neither `resume` nor `overwrite` is set; the checkpoint differs.
        NonFiniteLossError, TrainingInterrupted, TrainingAborted, CheckpointWriteError: see each.

    Shapes:
        data: (N, C, H, W) uint8 images (or a CIFAR10 holding them).
    """
    if not isinstance(getattr(model, "config", None), MAEConfig):
        raise TypeError(f"model must be a MaskedAutoencoder, got {type(model).__name__}")
    images = data.train_images if isinstance(data, CIFAR10) else data  # (N, C, H, W) uint8
    if settings.subset is not None and settings.subset > len(images):
        raise ValueError(f"subset={settings.subset} exceeds the {len(images)} training images")
    try:
        (out := Path(out_dir)).mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file in the way, no permission, ...
        raise ValueError(f"out_dir {str(out_dir)!r} cannot be a folder: {err.strerror}") from None
    device = runtime.resolve_device(settings.device, dist.env_local_rank())
    dtype = runtime.autocast_dtype(settings.amp, device)
    info, received = dist.init_distributed(device.type), []
    try:
        run = _Run(model, images[: settings.subset], settings, out, device, dtype, info, received)
        with _signals(received):
            return run.train(resume, overwrite, callback)
    finally:
        dist.cleanup_distributed(info)


class _Run:
    """The state of one call to `pretrain` (model, optimiser, loader, bookkeeping)."""

    def __init__(self, model: MaskedAutoencoder, images: torch.Tensor, s: TrainSettings,
                 out_dir: Path, device: torch.device, dtype: torch.dtype | None,
                 info: dist.DistInfo, received: list[int]) -> None:  # fmt: skip
        per_rank, shard = s.batch_size // info.world_size, len(images) // info.world_size
        if s.batch_size % info.world_size:
            raise ValueError(f"batch_size={s.batch_size} must be divisible by the "
                             f"{info.world_size} processes")  # fmt: skip
        if per_rank > shard:
            raise ValueError(f"batch_size={s.batch_size} exceeds the {len(images)} training "
                             f"images (per process: {per_rank} > {shard})")  # fmt: skip
        check_masking(s.masking, model.config.num_patches, model.config.mask_ratio)
        self.model, self.settings, self.out_dir = model.to(device), s, out_dir
        self.device, self.dtype, self.info, self.received = device, dtype, info, received
        self.loader = DeviceLoader(
            images, torch.zeros(len(images), dtype=torch.int64),  # labels are not used
            per_rank, augment=random_resized_crop_flip, device=device, seed=s.seed,
            rank=info.rank, world_size=info.world_size,
        )  # fmt: skip
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * s.epochs
        self.warmup_steps = round(s.warmup * self.steps_per_epoch)
        self.optimizer = make_optimizer(model, s)
        use_scaler = runtime.needs_grad_scaler(dtype)  # fp16 only
        self.scaler = torch.amp.GradScaler(device.type) if use_scaler else None
        self.step, self.history, self.last_loss = 0, [], float("nan")
        self.partial = dict(_NEW_EPOCH)  # sums over the epoch so far
        self.pending: list[torch.Tensor] = []  # (1,) losses summed over processes, not read yet
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None  # the last step's x and noise
        self.good: tuple[Path, int] | None = None  # the last checkpoint known good, its step

    def _prepare(self, resume: bool, overwrite: bool) -> None:
        out, main = self.out_dir, self.info.is_main
        for path in out.iterdir() if main else ():  # what a kill -9 during a write left
            if _OUR_TEMPORARY.match(path.name):
                path.unlink(missing_ok=True)
        existing = ckpt.latest_checkpoint(out)
        if existing is not None and resume:
            state = ckpt.load_checkpoint(existing, expected_config=self.model.config)
            # What shapes the trajectory must match (a field the checkpoint predates: its default),
            # and so must the kind of checkpoint and the data (through its steps per epoch).
            stored = TrainSettings().to_dict() | state.get("settings", {})
            stored |= {"kind": state.get("kind"), "steps_per_epoch": state.get("steps_per_epoch")}
            wanted = self.settings.to_dict() | {"kind": CHECKPOINT_KIND}
            wanted["steps_per_epoch"] = self.steps_per_epoch
            keys = ("kind", *RUN_FIELDS, "steps_per_epoch")
            diffs = ckpt.config_differences(*[{k: d[k] for k in keys} for d in (stored, wanted)])
            if diffs:
                raise ValueError(f"{existing} was trained with different settings: "
                                 f"{'; '.join(diffs)}. Resume with the same settings, or start a "
                                 "new run in another folder")  # fmt: skip
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if state["scaler"] and self.scaler is not None:
                self.scaler.load_state_dict(state["scaler"])
            self.step, self.history = state["step"], state["history"]
            self.partial, self.good = state["epoch_partial"], (existing, state["step"])
            torch.set_rng_state(state["rng"]["torch"])
            if state["rng"]["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        elif existing is not None and not overwrite:
            raise ValueError(
                f"{out} already holds a checkpoint ({existing.name}); resume it (resume=True, "
                "--resume), overwrite it (overwrite=True, --overwrite), or choose another folder"
            )
        else:
            for path in out.iterdir() if main and existing is not None else ():
                if path.name == ckpt.LATEST_NAME or re.match(r"epoch_\d+\.pt$", path.name):
                    path.unlink()
            torch.manual_seed(runtime.mix_seed(self.settings.seed, 1))
        if main:  # the checkpoint's own history (a first write also shows the folder is writable)
            _write(ckpt.save_json, out / HISTORY_NAME, self.history)
        dist.barrier(self.info)

    def _settle(self) -> None:
        """Read the pending losses back (one device sync) into the epoch's sums; stop at the
        first that is not finite."""
        if not self.pending:
            return
        values = [v / self.info.world_size for v in torch.cat(self.pending).tolist()]
        first, self.pending = self.step - len(values) + 1, []
        for i, value in enumerate(values):
            if not math.isfinite(value):
                self._diverged(first + i, value, "")
            self.partial["loss_sum"] += value
            self.partial["steps"] += 1
        self.last_loss = values[-1]

    def _check_state(self) -> None:
        """Before a save: the weights must be finite and give a finite loss on the last batch, in
        the precision the next step will use (under fp16 autocast, finite weights can overflow).
        The last step's own loss cannot vouch for them: it was computed before their update."""
        x, noise = self.last  # type: ignore[misc]  # a save always follows a step
        amp = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)
        with torch.no_grad(), amp, runtime.eval_mode(self.model):  # eval mode draws no randoms
            loss = self.model(x, noise=noise).loss.float().reshape(1)
            finite = torch.stack([p.isfinite().all() for p in self.model.parameters()]).all()
            loss = dist.all_reduce_sum(torch.where(finite, loss, torch.nan), self.info)
        if not math.isfinite(value := loss.item() / self.info.world_size):
            where = f"the weights after step {self.step}, on its batch; they were not saved"
            self._diverged(self.step + 1, value, f" ({where})")

    def _diverged(self, step: int, value: float, detail: str) -> NoReturn:
        epoch, index = divmod(step - 1, self.steps_per_epoch)
        # A checkpoint whose very next step diverges cannot be resumed: it is not a good one.
        good = self.good if self.good is not None and step > self.good[1] + 1 else None
        where = "there is no good checkpoint yet"
        if good is not None:
            self.model.load_state_dict(ckpt.load_checkpoint(good[0])["model"])
            where = f"the last good checkpoint is {good[0]} (step {good[1]}); the model holds it"
        raise NonFiniteLossError(
            f"non-finite loss {value} at step {step} of {self.total_steps} (epoch {epoch + 1}, "
            f"batch {index + 1} of {self.steps_per_epoch}){detail}; {where}. Try a lower "
            "--base-lr, a longer warmup or --amp off",
            step=step, loss=value, checkpoint=None if good is None else good[0],
        )  # fmt: skip

    def _save(self, snapshot: bool) -> Path:
        self._settle()
        self._check_state()
        path, cuda = self.out_dir / ckpt.LATEST_NAME, self.device.type == "cuda"
        done = self.step // self.steps_per_epoch
        dist.barrier(self.info)
        if self.info.is_main:  # the checkpoint first: history.json never runs ahead of it
            state = {
                "kind": CHECKPOINT_KIND, "format": 1, "model": self.model.state_dict(),
                "config": self.model.config.to_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "step": self.step, "epoch": done,
                "steps_per_epoch": self.steps_per_epoch, "world_size": self.info.world_size,
                "settings": self.settings.to_dict(), "history": self.history,
                "epoch_partial": dict(self.partial), "last_loss": self.last_loss,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if cuda else []},
            }  # fmt: skip
            _write(ckpt.save_checkpoint, path, state)
            if snapshot:
                _write(ckpt.save_checkpoint, self.out_dir / ckpt.snapshot_name(done), state)
            _write(ckpt.save_json, self.out_dir / HISTORY_NAME, self.history)
        dist.barrier(self.info)
        self.good = (path, self.step)
        return path

    def train(self, resume: bool, overwrite: bool, callback: Callable[[StepInfo], None] | None):
        self._prepare(resume, overwrite)
        net = dist.wrap(self.model, self.device, self.info)
        net = (torch.compile(net) if self.settings.compile else net).train()
        s, world, config = self.settings, self.info.world_size, self.model.config
        batches, hide = None, {} if self.info.is_main else {"disable": True}  # TQDM_DISABLE too
        with tqdm(
            total=self.total_steps, initial=self.step, desc="pretrain", unit="step", **hide
        ) as bar:
            while self.step < self.total_steps:
                epoch, index = divmod(self.step, self.steps_per_epoch)
                if batches is None:
                    self.loader.set_epoch(epoch)
                    batches = self.loader.iter_from(index)
                tic = time.perf_counter()
                x, _ = next(batches)  # (B, C, H, W) normalised and augmented, on the device
                lr = lr_at(self.step, self.total_steps, self.warmup_steps, s.lr, s.min_lr)
                noise = masking_noise(x.shape[0], config.num_patches, s.seed, self.step,
                                      self.info.rank, s.masking, config.mask_ratio)  # fmt: skip
                noise = noise.to(self.device, non_blocking=True)  # (B, L); blocking would sync
                loss = training.train_step(net, x, noise, self.optimizer, lr, scaler=self.scaler,
                                           autocast_dtype=self.dtype)  # fmt: skip
                total = dist.all_reduce_sum(loss.float().reshape(1).clone(), self.info)  # (1,)
                self.pending.append(total)
                self.step, self.last = self.step + 1, (x, noise)
                end_of_epoch = self.step % self.steps_per_epoch == 0
                if end_of_epoch or len(self.pending) >= SYNC_EVERY:
                    self._settle()
                    bar.set_postfix(epoch=epoch + 1, loss=f"{self.last_loss:.4f}", refresh=False)
                seconds = time.perf_counter() - tic
                self.partial["time"] += seconds
                self.partial["images"] += x.shape[0] * world
                bar.update(1)
                if callback is not None:
                    rate = x.shape[0] * world / seconds
                    callback(StepInfo(self.step, self.total_steps, epoch, lr, rate, total / world))
                saved = None
                if end_of_epoch:
                    p, self.partial = self.partial, dict(_NEW_EPOCH)
                    done, batches = self.step // self.steps_per_epoch, None
                    self.history.append({
                        "epoch": done, "step": self.step, "loss": p["loss_sum"] / p["steps"],
                        "lr": lr, "time": p["time"], "images_per_s": p["images"] / p["time"],
                    })  # fmt: skip
                    if done % s.checkpoint_every == 0 or done == s.epochs:
                        saved = self._save(s.keep_snapshots)
                stop = dist.any_process(bool(self.received), self.info, self.device)
                if stop and self.step < self.total_steps:
                    saved = saved or self._save(snapshot=False)
                    signum = self.received[0] if self.received else signal.SIGTERM  # another's
                    raise TrainingInterrupted(signum, self.step, saved)
        return self.history

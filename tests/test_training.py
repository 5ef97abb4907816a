"""mae_tutorial.training: the schedule, the groups, the noise, the step and the epoch; and the runner
(`pretrain.pretrain`) reproducing chapter 7's loop bit for bit."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import pytest
import torch

from mae_tutorial import training
from mae_tutorial.augment import random_resized_crop_flip
from mae_tutorial.config import MAEConfig
from mae_tutorial.data import DeviceLoader
from mae_tutorial.model import MaskedAutoencoder, ViTClassifier
from mae_tutorial.pretrain import TrainSettings, pretrain
from mae_tutorial.runtime import seeded
from mae_tutorial.training import (
    check_masking,
    lr_at,
    masking_noise,
    param_groups,
    train_epoch,
    train_step,
)

# ---------------------------------------------------------------------------------- the schedule


def test_lr_warms_up_from_zero_then_follows_a_cosine_to_min_lr() -> None:
    total, warmup, peak, low = 20, 4, 1e-3, 1e-5
    lrs = [lr_at(step, total, warmup, peak, low) for step in range(total + 2)]
    assert lrs[0] == 0.0 and lrs[warmup] == peak
    assert lrs[:warmup] == pytest.approx([peak * s / warmup for s in range(warmup)])
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))
    assert lrs[total - 1] > low and lrs[total] == pytest.approx(low) == lrs[total + 1]
    middle = warmup + (total - warmup) // 2
    assert lrs[middle] == pytest.approx((peak + low) / 2)


def test_lr_without_warmup_starts_at_the_peak_and_warmup_to_the_end_never_reaches_it() -> None:
    assert lr_at(0, 10, 0, 0.1, 0.0) == 0.1
    assert [lr_at(s, 8, 8, 1.0, 0.0) for s in range(8)] == [s / 8 for s in range(8)]


# ------------------------------------------------------------------------------------ the groups


def _names(model: torch.nn.Module, params: list[torch.nn.Parameter]) -> set[str]:
    ids = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def test_param_groups_decay_weight_matrices_only(tiny: MAEConfig) -> None:
    model = MaskedAutoencoder(tiny)
    decay, rest = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and rest["weight_decay"] == 0.0
    decayed, exempt = _names(model, decay["params"]), _names(model, rest["params"])
    assert decayed | exempt == {name for name, _ in model.named_parameters()}
    assert not decayed & exempt
    assert {"encoder.cls_token", "decoder.mask_token"} <= exempt
    assert all(model.get_parameter(n).ndim >= 2 for n in decayed)
    assert all(model.get_parameter(n).ndim <= 1 or n.endswith("token") for n in exempt)


def test_param_groups_leave_frozen_parameters_out(tiny: MAEConfig) -> None:
    model = ViTClassifier(tiny)
    for param in model.encoder.blocks[0].parameters():
        param.requires_grad_(False)
    grouped = set().union(*(_names(model, g["params"]) for g in param_groups(model, 0.1)))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not grouped & frozen
    assert grouped | frozen == {n for n, _ in model.named_parameters()}


# ------------------------------------------------------------------------------------- the noise


def test_masking_noise_depends_only_on_seed_step_and_rank() -> None:
    noise = masking_noise(4, 16, 0, 7)
    assert noise.shape == (4, 16) and noise.dtype == torch.float32
    assert torch.equal(noise, masking_noise(4, 16, 0, 7))
    for other in (
        masking_noise(4, 16, 0, 8),
        masking_noise(4, 16, 1, 7),
        masking_noise(4, 16, 0, 7, 1),
    ):
        assert not torch.equal(noise, other)


def test_masking_noise_is_what_the_runner_drew_before_the_move() -> None:
    """The seed mixing is unchanged, so old runs resume and the reference command reproduces."""
    import numpy as np

    state = np.random.SeedSequence((3, 5, 0, 2)).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state >> np.uint64(1)))
    assert torch.equal(masking_noise(2, 64, 3, 5), torch.rand(2, 64, generator=generator))


def test_check_masking_rejects_impossible_grids() -> None:
    check_masking("grid", 64, 0.75)
    with pytest.raises(ValueError, match="mask_ratio"):
        check_masking("grid", 64, 0.5)
    with pytest.raises(ValueError, match="square grid"):
        check_masking("grid", 49, 0.75)
    with pytest.raises(ValueError, match="masking must be one of"):
        masking_noise(2, 64, 0, 0, kind="stripes")


# -------------------------------------------------------------------------------------- the step


def _setup(tiny: MAEConfig, batch: int = 4) -> tuple:
    with seeded(0):
        model = MaskedAutoencoder(tiny)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=0.5, betas=(0.9, 0.95))
    images = torch.randn(batch, tiny.in_chans, tiny.image_size, tiny.image_size)
    return model, optimizer, images, masking_noise(batch, tiny.num_patches, 0, 0)


def test_train_step_is_the_five_lines_and_returns_a_detached_loss(tiny: MAEConfig) -> None:
    model, optimizer, images, noise = _setup(tiny)
    by_hand, hand_optimizer = copy.deepcopy((model, optimizer))
    for group in hand_optimizer.param_groups:
        group["lr"] = 1e-3
    hand_optimizer.zero_grad()
    expected = by_hand(images, noise=noise).loss
    expected.backward()
    hand_optimizer.step()

    loss = train_step(model, images, noise, optimizer, 1e-3)
    assert isinstance(loss, torch.Tensor) and loss.shape == () and not loss.requires_grad
    assert torch.equal(loss, expected.detach())
    assert [group["lr"] for group in optimizer.param_groups] == [1e-3, 1e-3]
    for ours, theirs in zip(model.parameters(), by_hand.parameters(), strict=True):
        assert torch.equal(ours, theirs)


def test_train_step_clears_stale_gradients(tiny: MAEConfig) -> None:
    model, optimizer, images, noise = _setup(tiny)
    clean = copy.deepcopy((model, optimizer))
    for param in model.parameters():
        param.grad = torch.full_like(param, 7.0)
    train_step(model, images, noise, optimizer, 1e-3)
    train_step(*clean[:1], images, noise, clean[1], 1e-3)
    for ours, theirs in zip(model.parameters(), clean[0].parameters(), strict=True):
        assert torch.equal(ours, theirs)


def test_train_step_with_a_scaler_takes_the_same_step(tiny: MAEConfig) -> None:
    """A power-of-two loss scale is undone exactly, so the scaled step equals the plain one."""
    model, optimizer, images, noise = _setup(tiny)
    scaled, scaled_optimizer = copy.deepcopy((model, optimizer))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    plain_loss = train_step(model, images, noise, optimizer, 1e-3)
    loss = train_step(scaled, images, noise, scaled_optimizer, 1e-3, scaler=scaler)
    assert torch.equal(loss, plain_loss)
    for ours, theirs in zip(model.parameters(), scaled.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_train_step_under_bf16_autocast(tiny: MAEConfig) -> None:
    model, optimizer, images, noise = _setup(tiny)
    fp32 = copy.deepcopy(model)(images, noise=noise).loss
    loss = train_step(model, images, noise, optimizer, 1e-3, autocast_dtype=torch.bfloat16)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    assert abs(loss.item() - fp32.item()) < 0.05 and loss.item() != fp32.item()
    assert all(p.dtype == torch.float32 for p in model.parameters())


# ------------------------------------------------------------------------------------- the epoch


def test_train_epoch_reads_the_losses_back_once(tiny: MAEConfig, monkeypatch) -> None:
    model, optimizer, images, _ = _setup(tiny, batch=8)
    batches = [(images[:4], torch.zeros(4)), images[4:]]  # pairs as a loader yields, or tensors
    steps, returned, reads = [], set(), []

    def noise_fn(step: int, batch: int) -> torch.Tensor:
        steps.append(step)
        return masking_noise(batch, tiny.num_patches, 0, step)

    def spied_step(*args, **kwargs) -> torch.Tensor:
        loss = train_step(*args, **kwargs)
        returned.add(id(loss))
        return loss

    item, tolist = torch.Tensor.item, torch.Tensor.tolist

    def spied_item(self: torch.Tensor):
        assert id(self) not in returned, "a step's loss was read back with .item()"
        return item(self)

    def spied_tolist(self: torch.Tensor):
        reads.append(len(steps))
        return tolist(self)

    monkeypatch.setattr(training, "train_step", spied_step)
    monkeypatch.setattr(torch.Tensor, "item", spied_item)
    monkeypatch.setattr(torch.Tensor, "tolist", spied_tolist)
    schedule = functools.partial(lr_at, total_steps=10, warmup_steps=0, peak_lr=1e-3, min_lr=0.0)
    losses = train_epoch(
        model, batches, optimizer, schedule=schedule, noise_fn=noise_fn, first_step=5
    )
    monkeypatch.undo()
    assert steps == [5, 6] and reads == [2]  # one read, after the last step
    assert optimizer.param_groups[0]["lr"] == schedule(6)
    assert len(losses) == 2 and all(isinstance(x, float) and math.isfinite(x) for x in losses)
    assert model.training
    assert train_epoch(model, [], optimizer, schedule=schedule, noise_fn=noise_fn) == []


# --------------------------------------------------- chapter 7's loop and the runner, bit for bit


def chapter_loop(model: MaskedAutoencoder, images: torch.Tensor, settings: TrainSettings) -> list:
    """Chapter 7's `train`, on the CPU: DeviceLoader, lr_at, param_groups, masking_noise,
    train_epoch."""
    loader = DeviceLoader(
        images,
        torch.zeros(len(images), dtype=torch.int64),
        settings.batch_size,
        augment=random_resized_crop_flip,
        device=torch.device("cpu"),
        seed=settings.seed,
    )
    steps_per_epoch = len(loader)
    schedule = functools.partial(
        lr_at,
        total_steps=settings.epochs * steps_per_epoch,
        warmup_steps=round(settings.warmup * steps_per_epoch),
        peak_lr=settings.lr,
        min_lr=settings.min_lr,
    )
    L = model.config.num_patches
    optimizer = torch.optim.AdamW(
        param_groups(model, settings.weight_decay), lr=settings.lr, betas=settings.betas
    )
    losses = []
    for epoch in range(settings.epochs):
        loader.set_epoch(epoch)
        losses += train_epoch(
            model,
            loader,
            optimizer,
            schedule=schedule,
            noise_fn=lambda step, batch: masking_noise(batch, L, settings.seed, step),
            first_step=epoch * steps_per_epoch,
        )
    return losses


@pytest.mark.parametrize("seed", [0, 3])
def test_the_runner_reproduces_chapter_7s_loop_bit_for_bit(
    tiny: MAEConfig, tmp_path: Path, seed: int
) -> None:
    images = torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8)
    settings = TrainSettings(
        epochs=2, batch_size=32, warmup_epochs=0.5, min_lr=1e-5, seed=seed, device="cpu"
    )
    with seeded(seed):
        ours = MaskedAutoencoder(tiny)
    theirs = copy.deepcopy(ours)
    our_losses = chapter_loop(ours, images, settings)
    runner_losses = []
    history = pretrain(
        theirs, images, settings, tmp_path, callback=lambda info: runner_losses.append(info.loss)
    )
    assert len(our_losses) == 2 * (200 // 32) == history[-1]["step"]
    assert our_losses == runner_losses  # exactly equal floats
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

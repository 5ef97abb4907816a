"""Tests for mae_tutorial.losses: masked MSE, normalised-pixel targets, and the model's use of them."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mae_tutorial.config import MAEConfig
from mae_tutorial.losses import masked_mse_loss, normalize_patches
from mae_tutorial.model import MaskedAutoencoder
from mae_tutorial.patches import patchify


def loss_by_loops(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool
) -> float:
    """The MAE loss in plain Python: per-patch MSE, averaged over masked patches only.

    With norm_pix each target patch becomes (t - mean) / sqrt(unbiased var + 1e-6).
    """
    batch, length, dim = pred.shape
    total, count = 0.0, 0
    for b in range(batch):
        for l in range(length):
            if mask[b, l] != 1:
                continue
            t = [float(v) for v in target[b, l]]
            if norm_pix:
                mean = sum(t) / dim
                var = sum((v - mean) ** 2 for v in t) / (dim - 1)
                t = [(v - mean) / math.sqrt(var + 1e-6) for v in t]
            total += sum((float(p) - v) ** 2 for p, v in zip(pred[b, l], t)) / dim
            count += 1
    return total / count


@pytest.fixture
def problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Small pred, target and mask: B=2, L=5, 6 values per patch, 3 and 2 patches masked."""
    pred = torch.randn(2, 5, 6, dtype=torch.float64)
    target = torch.randn(2, 5, 6, dtype=torch.float64) * 3 + 1
    mask = torch.tensor([[1, 0, 1, 0, 1], [0, 1, 0, 0, 1]], dtype=torch.float64)
    return pred, target, mask


def test_normalize_patches_by_hand() -> None:
    patches = torch.tensor([[[1.0, 2.0, 3.0, 6.0]]])  # mean 3, unbiased var 14/3
    expected = (patches - 3.0) / math.sqrt(14.0 / 3.0 + 1e-6)
    out = normalize_patches(patches)
    assert out.shape == (1, 1, 4)
    torch.testing.assert_close(out, expected)


def test_normalize_patches_gives_zero_mean_unit_variance() -> None:
    out = normalize_patches(torch.randn(3, 7, 48) * 5 + 2)
    torch.testing.assert_close(out.mean(-1), torch.zeros(3, 7), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1), torch.ones(3, 7), atol=1e-4, rtol=0)


def test_normalize_patches_of_a_flat_patch_is_finite() -> None:
    out = normalize_patches(torch.full((1, 2, 12), 0.7))
    assert torch.isfinite(out).all() and (out.abs() < 1e-3).all()


@pytest.mark.parametrize("norm_pix", [False, True])
def test_masked_mse_equals_a_hand_computation(problem, norm_pix: bool) -> None:
    pred, target, mask = problem
    loss = masked_mse_loss(pred, target, mask, norm_pix=norm_pix)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(loss_by_loops(pred, target, mask, norm_pix), rel=1e-10)


def test_norm_pix_is_the_default(problem) -> None:
    pred, target, mask = problem
    assert torch.equal(
        masked_mse_loss(pred, target, mask), masked_mse_loss(pred, target, mask, True)
    )
    assert not torch.allclose(
        masked_mse_loss(pred, target, mask), masked_mse_loss(pred, target, mask, False)
    )


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_ignores_visible_patches(problem, norm_pix: bool) -> None:
    pred, target, mask = problem
    visible = (mask == 0)[..., None]  # (B, L, 1)
    changed = torch.where(visible, pred + 100 * torch.randn_like(pred), pred)
    changed_target = torch.where(visible, target * 7 - 3, target)
    base = masked_mse_loss(pred, target, mask, norm_pix)
    assert masked_mse_loss(changed, target, mask, norm_pix) == base
    assert masked_mse_loss(pred, changed_target, mask, norm_pix) == base
    # ... while a change at one masked patch does move it.
    moved = pred.clone()
    moved[0, 0] += 1.0
    assert masked_mse_loss(moved, target, mask, norm_pix) != base


def test_loss_is_zero_for_perfect_masked_predictions(problem) -> None:
    pred, target, mask = problem
    perfect = torch.where((mask == 1)[..., None], target, pred)
    assert masked_mse_loss(perfect, target, mask, norm_pix=False).item() == 0.0
    perfect_norm = torch.where((mask == 1)[..., None], normalize_patches(target), pred)
    assert masked_mse_loss(perfect_norm, target, mask, norm_pix=True).item() == pytest.approx(
        0.0, abs=1e-20
    )


def test_loss_gradient_reaches_only_masked_predictions(problem) -> None:
    pred, target, mask = problem
    pred = pred.clone().requires_grad_()
    masked_mse_loss(pred, target, mask).backward()
    per_patch = pred.grad.abs().sum(-1)  # (B, L)
    assert (per_patch[mask == 0] == 0).all()
    assert (per_patch[mask == 1] > 0).all()


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"\(2, 5, 6\).*\(2, 5, 7\)"):
        masked_mse_loss(torch.randn(2, 5, 6), torch.randn(2, 5, 7), torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        masked_mse_loss(torch.randn(2, 5, 6), torch.randn(2, 5, 6), torch.ones(2, 4))


@pytest.mark.parametrize("norm_pix", [False, True])
def test_model_loss_is_masked_mse_on_patchified_images(
    tiny: MAEConfig, make_images, make_noise, norm_pix: bool
) -> None:
    config = dataclasses.replace(tiny, norm_pix_loss=norm_pix)
    model = MaskedAutoencoder(config)
    images, noise = make_images(config, 3), make_noise(config, 3)
    out = model(images, noise=noise)
    expected = masked_mse_loss(
        out.pred, patchify(images, config.patch_size), out.mask, norm_pix=norm_pix
    )
    torch.testing.assert_close(out.loss, expected, atol=0, rtol=0)
    # And by the loops, so the two settings really give different numbers.
    by_hand = loss_by_loops(
        out.pred.detach(), patchify(images, config.patch_size), out.mask, norm_pix
    )
    assert out.loss.item() == pytest.approx(by_hand, rel=1e-5)

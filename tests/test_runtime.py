"""Tests for mae_tutorial.runtime: the one place device, precision and seeds are decided."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mae_tutorial import runtime


def test_auto_device_is_usable() -> None:
    device = runtime.resolve_device("auto")
    torch.zeros(1, device=device)  # raises if the choice were wrong
    assert runtime.resolve_device(None) == device
    assert runtime.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "tpu"])
def test_unknown_device_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=repr(name)):
        runtime.resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_refused() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        runtime.resolve_device("cuda")


def test_autocast_vocabulary_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert runtime.autocast_dtype("auto", cpu) is None
    assert runtime.autocast_dtype("off", cpu) is None
    assert runtime.autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="needs a CUDA device"):
        runtime.autocast_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="amp must be one of"):
        runtime.autocast_dtype("yes", cpu)
    assert runtime.needs_grad_scaler(torch.float16)
    assert not runtime.needs_grad_scaler(torch.bfloat16)
    assert not runtime.needs_grad_scaler(None)


def test_mix_seed_separates_streams() -> None:
    assert runtime.mix_seed(0, 1) != runtime.mix_seed(1, 0)
    assert runtime.mix_seed(3, 4) == runtime.mix_seed(3, 4)
    assert 0 <= runtime.mix_seed(2**40, 7) < 2**63
    cpu = torch.device("cpu")
    a = torch.rand(4, generator=runtime.generator(cpu, 5, 6))
    b = torch.rand(4, generator=runtime.generator(cpu, 5, 6))
    assert torch.equal(a, b)


def test_seeded_restores_the_global_stream() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with runtime.seeded(7):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)
    with runtime.seeded(7):
        assert torch.equal(torch.rand(3), inside)


def test_eval_mode_restores_each_flag() -> None:
    model = nn.Sequential(nn.Dropout(0.5), nn.Dropout(0.5))
    model.train()
    model[1].eval()
    with runtime.eval_mode(model) as m:
        assert not any(sub.training for sub in m.modules())
    assert model.training and model[0].training and not model[1].training


def test_on_device_copies_only_when_needed() -> None:
    layer = nn.Linear(2, 2)
    assert runtime.on_device(layer, torch.device("cpu")) is layer

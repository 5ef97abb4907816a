"""Run-time decisions, made in one place: which device, which autocast dtype, which seed.

Every caller (the pretraining runner, evaluation, the chapters, the command line, the benchmarks)
asks this module instead of deciding for itself, so "auto" means the same thing everywhere.

    device     resolve_device("auto")        CUDA (the torchrun rank's GPU), then MPS, then the CPU
    precision  autocast_dtype("auto", dev)   bf16 on a GPU that has it, fp16 on one that does not,
                                             none (fp32) on a CPU; one vocabulary: AMP_MODES
    seeding    mix_seed(seed, step, ...)     one 63-bit seed from several ints (numpy's hash)
               generator(device, ...)        a torch.Generator seeded that way, where it is drawn
               seeded(seed)                  seed the global generators inside, restore them after
    modules    eval_mode(module)             eval mode inside, each submodule's own flag after
               on_device(module, device)     the module, or a copy moved to `device`
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

# The one vocabulary for mixed precision, in training and in evaluation.
AMP_MODES = ("auto", "bf16", "fp16", "off")


def parse_device(name: str | torch.device | None) -> torch.device | None:
    """`name` as a `torch.device` (None for "auto" or None), without checking it exists here.

    Raises:
        ValueError: `name` is not a device name.
    """
    if name is None or name == "auto":
        return None
    try:
        return torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device {name!r} is not a device; expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from err


def resolve_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """Turn "auto" (or None) or a device string into a usable `torch.device`, checking it exists.

    "auto" picks CUDA (device `local_rank` under torchrun), then MPS, then the CPU.

    Raises:
        ValueError: the device is unknown or not available on this machine.
    """
    device = parse_device(name)
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(name)!r} requested but CUDA is not available here")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        elif device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(name)!r} requested but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(name)!r} requested but MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {str(name)!r}: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return device


def autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `mode` (one of `AMP_MODES`) on `device`; None means fp32.

    "auto" is bf16 on a GPU that supports it, fp16 on an older GPU, and fp32 on a CPU or MPS (CPU
    bf16 is emulated, and slower, on most CPUs). "fp16" needs CUDA; training with it needs a
    GradScaler (`needs_grad_scaler`).

    Raises:
        ValueError: `mode` is not in `AMP_MODES`, or the device cannot run it.
    """
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {mode!r}")
    cuda = device.type == "cuda"
    if mode == "auto":
        if not cuda:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ValueError("amp='bf16' requested but this GPU does not support bfloat16")
        return torch.bfloat16
    if mode == "fp16":
        if not cuda:
            raise ValueError(f"amp='fp16' needs a CUDA device (loss scaling), got {device}")
        return torch.float16
    return None


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """Whether training under autocast `dtype` needs loss scaling: fp16 only (bf16 has fp32's range)."""
    return dtype == torch.float16


def mix_seed(*values: int) -> int:
    """A 63-bit seed mixing non-negative ints (numpy's SeedSequence hash), for `torch.Generator`.

    Mixing instead of adding keeps streams apart: (seed 0, step 1) and (seed 1, step 0) differ.
    """
    state = np.random.SeedSequence(values).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def generator(device: torch.device, *values: int) -> torch.Generator:
    """A generator seeded with `mix_seed(*values)`.

    It lives on the GPU for CUDA work, so drawing needs no host copy (which would stall the GPU),
    and on the CPU otherwise.
    """
    where = device if device.type == "cuda" else torch.device("cpu")
    return torch.Generator(device=where).manual_seed(mix_seed(*values))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generators (CPU and every CUDA device) inside, restore them after.

    Initialisation and stochastic depth draw from the global generators; forking them makes a run
    repeatable without changing the caller's random stream.
    """
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put `module` in eval mode, then give every submodule back its own train/eval flag."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def on_device(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` itself when its parameters are on `device`, else a copy moved there."""
    param = next(module.parameters(), None)
    here = param.device if param is not None else torch.device("cpu")
    same = here.type == device.type and (device.index is None or here.index == device.index)
    return module if same else copy.deepcopy(module).to(device)

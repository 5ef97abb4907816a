"""Distributed set-up for `torchrun`: one process per device, DistributedDataParallel.

`torchrun --nproc_per_node=N -m mae_tutorial pretrain ...` starts N processes and sets the
environment variables `RANK`, `LOCAL_RANK` and `WORLD_SIZE` in each. Without them (plain `python`),
everything here is a no-op for a single process with rank 0. The collectives (`all_reduce_sum`,
`any_process`, `barrier`) must be called by every process, in the same order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands among its peers.

    Attributes:
        rank: global index of this process, 0 for the one that writes files and prints.
        world_size: number of processes.
        local_rank: index on this machine; picks the GPU.
        owns_group: this code called `init_process_group`, so it must destroy the group too.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that writes checkpoints and shows progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when gradients and statistics must be reduced across processes."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def env_rank() -> int:
    """This process's rank from the environment (`RANK`), 0 outside `torchrun`."""
    return _env_int("RANK", 0)


def env_local_rank() -> int:
    """This process's index on its machine (`LOCAL_RANK`), 0 outside `torchrun`."""
    return _env_int("LOCAL_RANK", 0)


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group that `torchrun` describes, if any.

    Args:
        device_type: "cuda" uses the NCCL backend, anything else gloo.

    Returns:
        This process's `DistInfo`; `world_size == 1` outside `torchrun`.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world_size <= 1:
        return DistInfo()
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=False)
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, owns_group=True)


def cleanup_distributed(info: DistInfo) -> None:
    """Destroy the process group if `init_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum `tensor` over all processes in place (unchanged for a single process); returns it."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(info: DistInfo) -> None:
    """Wait until every process reaches this point (no-op for a single process)."""
    if info.enabled:
        dist.barrier()


def any_process(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Whether `flag` is true on any process, e.g. a signal that reached only some of them."""
    if not info.enabled:
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=device), info).item() > 0)


def wrap(model: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """`model` in DistributedDataParallel when there are several processes, else `model` itself.

    Its buffers are not broadcast at each forward: an MAE has none that training changes.
    """
    if not info.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

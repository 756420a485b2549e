"""Thin helpers over torch.distributed for DDP training under ``torchrun``.

Nothing here distributes work itself: gradients are averaged by PyTorch's
DistributedDataParallel, collectives go through torch.distributed (NCCL on
GPU, gloo on CPU). These helpers read torchrun's environment, pick the device
and backend, and wrap the few collectives the trainer needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from anira.errors import AniraError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """``auto`` → cuda if available, else cpu; under DDP each rank takes cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AniraError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AniraError("device 'cuda' requested but CUDA is not available")
        if info.enabled or device.index is None:
            device = torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise AniraError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def init(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the process group if launched by torchrun (else a 1-process run)."""
    if not launched_by_torchrun():
        info = DistInfo()
        return info, resolve_device(device_name, info)
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )
    device = resolve_device(device_name, info)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
    return info, device


def current() -> DistInfo:
    """The process group this process belongs to (1 process if none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                        local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over ranks (identity without a process group)."""
    if not current().enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank, so all ranks agree (e.g. to stop together)."""
    if not current().enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Send a small JSON-like object from ``src`` to every rank (e.g. an error message)."""
    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]

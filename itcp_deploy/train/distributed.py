"""``torchrun`` support: detect the launch from RANK/WORLD_SIZE/LOCAL_RANK and set up the process group.

Single-process runs see ``world_size == 1`` and none of this changes their behaviour. gloo serves CPU,
nccl CUDA. Only rank 0 writes files; metrics are summed over ranks before they are reported.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from itcp_deploy.errors import UsageError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"environment variable {name}={raw!r} is not an integer",
                         "launch with torchrun, which sets it") from None


def init_distributed(device: torch.device) -> DistContext:
    """Join the ``torchrun`` process group if launched by it (idempotent); otherwise a 1-process context."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))


def resolve_device(requested: str | None) -> torch.device:
    """The requested device, else CUDA (the local rank's GPU under torchrun) when available, else CPU."""
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"device {requested!r} requested but CUDA is not available", "use --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", _env_int("LOCAL_RANK", 0) % torch.cuda.device_count())
    return torch.device("cpu")


def sum_across_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over all ranks (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group, if one was joined (call once at the end of a torchrun process).

    The barrier first: a rank that tears gloo down while its peer still has a collective in flight aborts
    ("terminate called without an active exception", seen under CPU load in CI). Collect garbage before it:
    a DDP reducer left in a reference cycle would otherwise be freed at interpreter exit, after the group is gone,
    with gloo work still attached (pytorch/pytorch#179291 describes that abort)."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()

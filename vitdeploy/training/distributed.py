"""Where a training process runs: its device, and its place among the processes torchrun started (DDP).

Without torchrun there is one process and every collective here is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vitdeploy.core.cpu import torch_threads
from vitdeploy.errors import ConfigError, DeviceError


@dataclass(frozen=True)
class Processes:
    """This process's device and its rank among `world` processes."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to train: under torchrun, DDP around `model` (it all-reduces gradients in backward)."""
        if self.world == 1:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    def any(self, flag: bool) -> bool:
        """Whether `flag` is set on any process. All processes must stop at the same step, or DDP's next
        all-reduce would hang."""
        if self.world == 1:
            return flag
        t = torch.tensor([1 if flag else 0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, not {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise DeviceError(f"--device cuda requested, but {why} (torch {torch.__version__})")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def distributed(device_request: str) -> Iterator[Processes]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), and leave it at the end."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Processes(resolve_device(device_request))
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_nccl = device_request != "cpu" and torch.cuda.is_available()
    if use_nccl:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    try:
        yield Processes(resolve_device(device_request, local_rank), dist.get_rank(), dist.get_world_size())
    finally:
        dist.destroy_process_group()


def intra_op_threads(count: int | None) -> AbstractContextManager[None]:
    """torch_threads(count), unless the user set OMP_NUM_THREADS (as torchrun does: one thread per process)."""
    return torch_threads(None if "OMP_NUM_THREADS" in os.environ else count)

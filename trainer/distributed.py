"""Process-group set-up and the few collectives the trainer needs, for 1 or many ranks.

The same code runs under ``deepspeed train.py`` (the launcher sets RANK, WORLD_SIZE, …), under
SLURM, and as a plain ``python train.py`` (a world of one, set up here).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator

log = logging.getLogger(__name__)

# The variables that place a process in a process group (set by the launchers, or for a world of
# one by `init_distributed`): a child process that is to be a run of its own must not inherit them,
# or it tries to join, or listen on, its parent's rendezvous.
PROCESS_GROUP_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str = "auto") -> DistInfo:
    """Join (or, without a launcher, create) the process group and pick this rank's device.

    ``backend="auto"`` asks DeepSpeed's detected accelerator: nccl on CUDA, gloo on CPU.
    """
    if "RANK" not in os.environ:
        _single_process_env()
    accel = get_accelerator()
    if backend == "auto":
        backend = accel.communication_backend_name()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if accel.device_name() != "cpu":
        accel.set_device(local_rank)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend)
        _unlink_shm_workspace(dist.get_rank())
    device = torch.device(accel.current_device_name())
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), device)


def shm_workspace_path(rank: int) -> Path:
    """Where DeepSpeed's CPU shared-memory all-reduce keeps `rank`'s workspace (~66 MB, tmpfs)."""
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ['MASTER_ADDR']}_{os.environ['MASTER_PORT']}_{rank}"
    return Path("/dev/shm") / name


def _unlink_shm_workspace(rank: int) -> None:
    """Unlink this rank's shared-memory all-reduce workspace once every rank has mapped it.

    On CPU, DeepSpeed's shm communicator creates one ~66 MB file in /dev/shm per rank and never
    removes it (its ``shared_close`` is not called), so each run, one rank or many, leaves RAM
    behind until reboot. Every rank opens its peers' files inside ``init_distributed``; after the
    barrier below all mappings exist, and unlinking only drops the name: the mapped memory lives
    until the last rank exits, and a crash later can no longer leak it.
    """
    path = shm_workspace_path(rank)
    if not path.exists():  # GPU backends, or DeepSpeed without the shm communicator
        return
    dist.barrier()
    path.unlink(missing_ok=True)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any rank (one scalar all-reduce)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([float(flag)])
    if dist.get_backend() == "nccl":
        t = t.to(get_accelerator().current_device_name())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few scalars over all ranks (on CPU: cheap, and works with gloo and nccl alike)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.to(get_accelerator().current_device_name())
    dist.all_reduce(t)
    return t.cpu().tolist()


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` (picklable) as a list on rank 0, in rank order; None on other ranks."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    gathered: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` → bfloat16 on accelerators that support it, float32 elsewhere. A 16-bit dtype asked
    for on a CPU without native kernels for it is kept, with a warning."""
    if name == "auto":
        bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16_ok else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"model.dtype must be one of auto, {', '.join(dtypes)}; got {name!r}")
    dtype = dtypes[name]
    if device.type == "cpu" and dtype != torch.float32 and not cpu_has_native(dtype):
        # Measured on an AVX2-only EPYC, 1b preset under QLoRA: a bf16 forward took 18.5 s against
        # fp32's 6.6 s, and forward + backward over 6 min against 14.6 s.
        log.warning(
            "model.dtype=%s on a CPU without native %s kernels (torch's CPU capability: %s): "
            "torch falls back to generic kernels, many times slower than float32; model.dtype=auto uses float32 here",
            name,
            name,
            torch.backends.cpu.get_cpu_capability(),
        )
    return dtype


def cpu_has_native(dtype: torch.dtype) -> bool:
    """Whether oneDNN has native kernels for 16-bit ``dtype`` on this CPU (bf16: AVX-512 BF16 or AMX;
    fp16: AVX-512 FP16 or AMX)."""
    check = {
        torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported,
        torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported,
    }[dtype]
    return bool(check())


def _single_process_env() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )

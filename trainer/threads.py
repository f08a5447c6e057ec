"""How many intra-op (OpenMP) threads each training process runs, and where that number came from.

Torch starts with one intra-op thread per core of the machine, in every process. That is wrong as
soon as anything else wants those cores: the node's other ranks, and this rank's own DataLoader
workers, which decode video while the main process computes. An OpenMP parallel region ends at a
barrier, so when one of its threads loses its core to a worker the whole region waits for it: on 2
cores the demo ran 0.103 s/step with torch's 2 threads against 0.077 s/step with 1 (the worker
decoding on the other core), and 2.3 s/step with the default while another job ran.

Precedence, first that applies:

1. ``train.num_threads`` in the run config (source ``"config"``). The config is the run's record:
   it is stored with the checkpoint, logged to MLflow and varied by sweeps, so a value written
   there is a deliberate choice for this run and must not be overturned by whatever the shell or
   a launcher left in the environment.
2. ``OMP_NUM_THREADS`` in the environment (source ``"env"``), torch's own convention, for runs whose
   config leaves the key unset (the default). Read as torch reads it: the leading integer of the
   first comma-separated field ("4,2" is 4); an empty, non-numeric or non-positive value is
   ignored, as torch ignores it.
3. Otherwise ``auto`` (source ``"auto"``), see :func:`auto_threads`.

Launchers. ``torchrun`` (torch.distributed.run) sets ``OMP_NUM_THREADS=1`` by itself when it is
unset and it starts more than one process per node, with a warning asking to tune it. That value
is not a choice anyone made, and on a GPU node it would leave the CPU side of each rank (collation,
ZeRO-offload's CPU Adam) on one core of dozens; it is recognised by what torchrun's workers carry
(``TORCHELASTIC_RUN_ID``, ``LOCAL_WORLD_SIZE`` > 1, the value ``1``) and replaced by the auto
value. A user who exported ``OMP_NUM_THREADS=1`` themselves before ``torchrun`` looks the same from
inside the process; they get auto too, and the log line says how to force 1 (``train.num_threads=1``).
The deepspeed launcher (0.19.8) sets ``OMP_NUM_THREADS`` only with ``--bind_cores_to_rank``, to the
number of cores it binds the rank to with numactl; the user asked for that binding and the value
fits it, so it is honoured as ``"env"`` (auto could not do better: it cannot see that the affinity
is already this rank's alone).

Only the intra-op pool is set. ``OMP_NUM_THREADS`` does not change torch's inter-op pool either
(whose threads start only for inter-op parallelism such as ``torch.jit.fork``, which training does
not use), and ``torch.set_num_interop_threads`` raises once any inter-op work has run in the
process, so calling it would make a run's behaviour depend on what ran before it. The environment
is left as it is: writing ``OMP_NUM_THREADS`` back would make the next resolve in the same process
(a test, a second Trainer) take our own value for the user's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

SOURCES = ("config", "env", "auto")


@dataclass(frozen=True)
class ThreadSetting:
    """The intra-op thread count of this process and why: ``source`` is one of `SOURCES`, ``detail``
    one line for the log saying what was read."""

    num_threads: int
    source: str
    detail: str = ""


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity (taskset, numactl, SLURM and container
    cpusets narrow it), not the machine's core count; ``os.cpu_count()`` where affinity is not
    available (macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return max(os.cpu_count() or 1, 1)


def local_world_size(environ: Mapping[str, str] = os.environ) -> int:
    """Ranks on this node: ``LOCAL_WORLD_SIZE`` (torchrun; `trainer.distributed` sets it for a lone
    process), else ``LOCAL_SIZE`` (the deepspeed launcher sets only that one), else 1."""
    for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        value = environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def auto_threads(cores: int, *, num_workers: int, local_world_size: int) -> int:
    """``max(1, cores // local_world_size - num_workers)``.

    The node's ranks share the cores this process may use (each rank sees the same affinity unless
    a launcher bound them, see the module docstring), so a rank's share is ``cores //
    local_world_size``. Each of its DataLoader workers then takes one core of that share: torch
    runs every worker with one intra-op thread and the decoder decodes on one thread
    (`data.video_io`), so a worker is at most one busy core, and a thread of the rank's OpenMP team
    that has to share a core with it stalls the team at every barrier (module docstring). With
    ``num_workers=0`` the rank decodes between its own steps and keeps its whole share. At least 1.

    Reserving a whole core per worker is the cautious side: a worker whose prefetch queue is full
    sleeps, and its core then idles. On many cores that costs little (one core of many), on few
    cores it is what measured fastest (`benchmarks.threads`).
    """
    if cores < 1 or local_world_size < 1 or num_workers < 0:
        raise ValueError(
            f"auto_threads needs cores >= 1, local_world_size >= 1, num_workers >= 0; got "
            f"{cores}, {local_world_size}, {num_workers}"
        )
    return max(1, cores // local_world_size - num_workers)


def env_threads(environ: Mapping[str, str] = os.environ) -> tuple[int | None, str]:
    """``OMP_NUM_THREADS`` as torch reads it: (the count, "") or (None, why it is not used)."""
    raw = environ.get("OMP_NUM_THREADS")
    if raw is None:
        return None, ""
    first = raw.split(",", 1)[0].strip()
    digits = first[1:] if first.startswith("+") else first
    if not digits.isdigit() or int(digits) < 1:
        return None, f"OMP_NUM_THREADS={raw!r} is not a positive integer and was ignored"
    return int(digits), ""


def is_torchrun_default(environ: Mapping[str, str], value: int) -> bool:
    """Whether ``OMP_NUM_THREADS=value`` is what torchrun sets by itself for several local workers."""
    return value == 1 and bool(environ.get("TORCHELASTIC_RUN_ID")) and local_world_size(environ) > 1


def resolve_threads(
    configured: int | None,
    *,
    num_workers: int,
    local_world_size: int,
    environ: Mapping[str, str] = os.environ,
    cores: int | None = None,
) -> ThreadSetting:
    """This rank's intra-op thread count: ``configured`` (``train.num_threads``), else an explicit
    ``OMP_NUM_THREADS``, else :func:`auto_threads` over ``cores`` (default: :func:`available_cores`).

    Raises:
        ValueError: ``configured`` is below 1.
    """
    if configured is not None and (isinstance(configured, bool) or configured < 1):
        raise ValueError(f"train.num_threads must be a positive integer or null, got {configured!r}")
    env_value, env_problem = env_threads(environ)
    if configured is not None:
        detail = "train.num_threads"
        if env_value is not None and env_value != configured:
            detail += f" (OMP_NUM_THREADS={environ['OMP_NUM_THREADS']} left aside: the config wins)"
        return ThreadSetting(configured, "config", detail)
    if env_value is not None and not is_torchrun_default(environ, env_value):
        return ThreadSetting(env_value, "env", f"OMP_NUM_THREADS={environ['OMP_NUM_THREADS']}")
    cores = available_cores() if cores is None else cores
    n = auto_threads(cores, num_workers=num_workers, local_world_size=local_world_size)
    detail = f"{cores} cores // {local_world_size} local ranks - {num_workers} data workers"
    if env_value is not None:
        detail += (
            "; OMP_NUM_THREADS=1 taken for torchrun's own default (several local workers) and "
            "replaced; set train.num_threads=1 to keep 1"
        )
    elif env_problem:
        detail += f"; {env_problem}"
    return ThreadSetting(n, "auto", detail)


def apply_threads(setting: ThreadSetting) -> None:
    """Run this process's intra-op work on ``setting.num_threads`` threads.

    ``torch.set_num_threads`` sets torch's OpenMP team size (and MKL's) for this thread and every
    thread torch starts later. DeepSpeed's JIT-built CPU ops (CPU Adam for ZeRO-offload, the shm
    all-reduce) are compiled with ``-fopenmp`` but link no OpenMP runtime of their own: their
    ``GOMP_parallel`` resolves to the libgomp torch loaded, and the optimizer step runs on the main
    thread, so their parallel loops follow the same count (checked: a CPU Adam step starts an
    OpenMP worker thread after ``set_num_threads(2)`` and none after ``set_num_threads(1)``).
    DataLoader workers set their own count to 1 (torch does that in every worker).
    """
    torch.set_num_threads(setting.num_threads)
    log.info("intra-op threads: %d (%s: %s)", setting.num_threads, setting.source, setting.detail)

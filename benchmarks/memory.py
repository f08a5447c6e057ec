"""Peak memory of a stretch of code, on the device that runs it.

On CUDA the caching allocator keeps exact counters (`torch.cuda.max_memory_allocated` / `_reserved`)
and `reset` clears the peaks. On CPU there are no tensor counters, so the figure is the process's
resident set: `VmHWM` (peak RSS) from ``/proc/self/status``, whose peak Linux resets when ``5`` is
written to ``/proc/self/clear_refs``. Before each reset the C allocator gives freed memory back to the
kernel (``malloc_trim``); otherwise memory freed by an earlier phase (the bf16 → NF4 load, say) stays
resident, hides the next phase's growth and counts as if it were in use (shared/PLATFORM.md).

Freed memory must also leave the RSS *during* a measured stretch, or the peak depends on how the C
allocator happens to reuse its heap rather than on what the code holds: glibc serves allocations
below its mmap threshold from the heap, and that threshold grows on its own (up to 32 MiB) as large
blocks are freed, so a step's per-layer temporaries (a dequantized NF4 weight, say) pile up as
heap fragments. At the 1b preset the steps of QLoRA and temporal QLoRA, which hold the same
tensors to within a few MB, grew the RSS by 2.1 and 1.3 GiB that way. On
CPU, `PeakMemory` therefore pins the threshold at 1 MiB (``mallopt(M_MMAP_THRESHOLD)``): every
tensor above it is its own mapping, returned to the kernel when freed, and RSS follows the bytes
actually held (the two then agree to 0.3%: 0.98 and 0.98 GiB).

RSS also counts the Python runtime and the loaded libraries: compare CPU figures as differences
from a baseline taken in the same kind of process (see `benchmarks.train_memory`).

RSS is the CPU counterpart of CUDA's *reserved* bytes: it also holds the C heap's small blocks, the
libraries' own buffers and whatever glibc has not returned yet. The counterpart of
`max_memory_allocated`, the bytes tensors hold, is `tensor_step_peak`: the tensors alive before a
stretch of code (`live_tensor_bytes`) plus the highest sum of the allocations and frees torch's
profiler records inside it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _PROC_STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{_PROC_STATUS} has no {field} line: peak RSS needs Linux")
    return int(match.group(1))


# mallopt parameter number of M_MMAP_THRESHOLD (glibc malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def _libc() -> ctypes.CDLL | None:
    libc_name = ctypes.util.find_library("c")
    return ctypes.CDLL(libc_name) if libc_name else None


def _release_free_heap() -> None:
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):  # glibc only; elsewhere freed memory stays
        libc.malloc_trim(0)


def _map_large_allocations() -> bool:
    """Serve every allocation above `MMAP_THRESHOLD_BYTES` by its own mapping, so that freeing it
    lowers the RSS (module docstring). Returns False where the C library is not glibc."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


class PeakMemory:
    """Peak bytes since the last :meth:`reset` on `device`.

    `read()` returns ``{"current": bytes now, "peak": peak bytes since reset}`` plus, on CUDA,
    ``"peak_reserved"`` (the allocator's cached segments). CPU figures are RSS (whole process);
    creating a CPU meter changes how this process allocates (module docstring), and
    `large_allocations_mapped` says whether that worked.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.large_allocations_mapped = False
        if self.device.type != "cuda":
            if not _CLEAR_REFS.exists():
                raise RuntimeError(f"CPU peak memory needs {_CLEAR_REFS} (Linux >= 4.0)")
            self.large_allocations_mapped = _map_large_allocations()

    def reset(self) -> None:
        """Start a new peak from the memory in use now."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        _release_free_heap()
        _CLEAR_REFS.write_text("5")

    def read(self) -> dict[str, int]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return {
                "current": torch.cuda.memory_allocated(self.device),
                "peak": torch.cuda.max_memory_allocated(self.device),
                "peak_reserved": torch.cuda.max_memory_reserved(self.device),
            }
        return {"current": _status_kib("VmRSS") * 1024, "peak": _status_kib("VmHWM") * 1024}


def live_tensor_bytes(device: torch.device) -> int:
    """Bytes of every tensor storage on `device` that Python can reach now, each storage once (views
    and parameters sharing a flat buffer, as ZeRO's do, count once). Between training steps that is
    everything a step starts from: weights, trained parameters, ZeRO's partitions, optimizer state;
    inside a step the autograd graph holds tensors that Python cannot see."""
    device = torch.device(device)
    gc.collect()
    storages: dict[int, int] = {}
    with warnings.catch_warnings():  # isinstance() on deprecated module attributes warns
        warnings.simplefilter("ignore")
        objects = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in objects:
        # sparse and meta tensors have no storage of their own to count
        strided = obj.layout == torch.strided and not obj.is_meta
        if strided and obj.device.type == device.type:
            storage = obj.untyped_storage()
            if storage.data_ptr():
                storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
    return sum(storages.values())


def allocation_peak(run: Callable[[], object], device: torch.device) -> tuple[int, int]:
    """(highest, final) net bytes allocated on `device` while `run()` runs, from the allocation and
    free events of torch's profiler (``profile_memory=True``) in time order. A block allocated before
    the call and freed inside it has no size in the profile and is left out, so the highest value
    can only over-state what the call held above its start.

    The events are read from the profiler's event tree (``kineto_results.experimental_event_tree``,
    what torch's own memory timeline is built from): `prof.events()` folds allocations into the ops
    that made them and loses their order."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    changes: list[tuple[int, int]] = []
    pending = list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        node = pending.pop()
        if node.tag == _EventType.Allocation:
            fields = node.extra_fields
            if fields.device.type == device.type:
                changes.append((node.start_time_ns, fields.alloc_size))
        pending.extend(node.children)
    changes.sort(key=lambda change: change[0])
    held = highest = 0
    for _, size in changes:
        held += size
        highest = max(highest, held)
    return highest, held


def tensor_step_peak(run: Callable[[], object], device: torch.device) -> dict[str, int]:
    """The CPU counterpart of `torch.cuda.max_memory_allocated` for one call of `run` that starts and
    ends with no autograd graph alive (a training step): ``{"start": tensor bytes before it,
    "peak": the highest tensor bytes during it}`` (`live_tensor_bytes` + `allocation_peak`)."""
    start = live_tensor_bytes(device)
    highest, _ = allocation_peak(run, device)
    return {"start": start, "peak": start + highest}


def materialize_weights(model: torch.nn.Module) -> None:
    """Give every 16/32-bit weight its own memory. `from_pretrained` maps the safetensors file and
    keeps weights that need no conversion as views of the mapping; on CPU those pages count in RSS
    only once touched, and the kernel may drop them again under memory pressure, so a 16-bit model
    would look smaller than it is (shared/PLATFORM.md). A copy is ordinary memory that RSS counts.

    Quantized weights (NF4 / int8 storage) were made in memory by the quantizer and are left alone:
    bitsandbytes keeps other references to them (an int8 weight's ``CB``), and copying the data
    would leave those on the old storage and hold the weight twice."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dtype.is_floating_point:
                tensor.data = tensor.data.clone()


def measure_description(device: torch.device) -> str:
    """What `PeakMemory` figures on `device` are, for a result's config."""
    if torch.device(device).type == "cuda":
        return "CUDA max_memory_allocated"
    return f"process RSS (VmHWM), allocations above {MMAP_THRESHOLD_BYTES >> 20} MiB mmapped (freed at once)"


def available_bytes(device: torch.device) -> int:
    """Memory a new allocation on `device` can still get: free GPU memory on CUDA, the kernel's
    MemAvailable (free + reclaimable cache) elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    match = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError("/proc/meminfo has no MemAvailable line")
    return int(match.group(1)) * 1024

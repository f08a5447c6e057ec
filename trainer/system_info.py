"""Versions, devices and the code's commit: what makes two runs or two benchmark results comparable."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

import torch


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    """Versions of Python, torch and the training libraries; "not installed" for one that is absent
    (the GPU check's decode part runs where only the decoding packages were carried)."""
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("deepspeed", "transformers", "peft", "bitsandbytes"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and the vector instructions torch's kernels use on it
    ("AMD EPYC (AVX2)"): CPU timings and some code paths (bitsandbytes, oneDNN) differ by those."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()} ({torch.backends.cpu.get_cpu_capability()})"


def _cpu_model() -> str:
    """``model name`` of /proc/cpuinfo where there is one (Linux), else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def system_tags(device: torch.device, world_size: int) -> dict[str, str]:
    """The MLflow ``sys.*`` tags of a run: library versions, device, world size, commit."""
    return {
        **{f"sys.{k}": v for k, v in library_versions().items()},
        "sys.device": str(device),
        "sys.device_name": device_name(device),
        "sys.world_size": str(world_size),
        "sys.git_commit": git_commit(),
    }

"""What every benchmark shares: the command line, the machine record, and the JSON it writes.

A benchmark script measures two (or more) things side by side in one process run and reports
their ratios; absolute times are kept too but only mean something on the device they came from.
Each script calls :func:`parse_args` and ends with :func:`write_result`, which writes
``benchmarks/results/<name>-<device>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import result_stem
from trainer.system_info import device_name, git_commit, library_versions

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the result JSON")
    parser.add_argument("--quick", action="store_true", help="smallest sizes, for tests")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    check_device(parser, args.device)
    return args


def check_device(parser: argparse.ArgumentParser, device: str) -> None:
    """Refuse a --device this machine does not have, before minutes of set-up fail on it."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        parser.error(f"--device {device!r}: {exc}")
    if dev.type not in ("cpu", "cuda"):
        parser.error(f"--device {device!r}: the benchmarks run on cpu or cuda[:N]")
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            parser.error(
                f"--device {device}: no CUDA GPU visible (torch {torch.__version__}, CUDA {torch.version.cuda})"
            )
        if dev.index is not None and dev.index >= count:
            parser.error(f"--device {device}: only {count} CUDA GPU(s) visible")


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where a figure came from: enough to decide whether two results are comparable."""
    return {
        **library_versions(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": device_name(device),
        "git_commit": git_commit(),
    }


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``fn()`` per repeat, synchronising the device so queued work is counted."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def write_result(
    name: str,
    device: torch.device,
    config: dict[str, Any],
    figures: dict[str, Any],
    ratios: dict[str, float],
    out: Path,
) -> Path:
    """Write ``<out>/<name>-<device type>.json`` and print it; returns the path."""
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "config": config,
        "figures": figures,
        "ratios": ratios,
    }
    path = out / f"{result_stem(name, str(device))}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"benchmark": name, "ratios": ratios}, indent=2))
    print(f"wrote {path}")
    return path


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

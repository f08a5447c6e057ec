"""The result JSON every benchmark writes, and the peak-memory meter the memory benchmarks read."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from benchmarks.harness import check_device, time_call, write_result
from benchmarks.memory import PeakMemory, available_bytes
from benchmarks.report import REQUIRED_KEYS, load_results


def test_write_result_schema(tmp_path: Path) -> None:
    path = write_result(
        "demo_bench",
        torch.device("cpu"),
        config={"quick": True, "k": 4},
        figures={"step_s": [0.1, 0.2]},
        ratios={"a_over_b": 0.5},
        out=tmp_path / "results",
    )
    assert path == tmp_path / "results" / "demo_bench-cpu.json"
    result = json.loads(path.read_text())
    assert tuple(result) == REQUIRED_KEYS
    assert result["benchmark"] == "demo_bench"
    assert result["created"][:4].isdigit() and result["created"].endswith("+00:00")
    for key in ("python", "torch", "deepspeed", "bitsandbytes", "cpu_count", "device", "git_commit"):
        assert key in result["machine"], key
    assert result["machine"]["device"] == "cpu"
    assert result["config"] == {"quick": True, "k": 4}
    assert result["ratios"] == {"a_over_b": 0.5}
    # what the README generator reads back
    assert load_results(tmp_path / "results")[0]["ratios"] == {"a_over_b": 0.5}


def test_time_call_counts_repeats_not_warmup() -> None:
    calls = []
    times = time_call(lambda: calls.append(1), torch.device("cpu"), repeats=3, warmup=2)
    assert len(times) == 3 and len(calls) == 5
    assert all(t >= 0 for t in times)


def test_peak_memory_sees_a_transient_allocation_and_resets() -> None:
    meter = PeakMemory(torch.device("cpu"))
    meter.reset()
    before = meter.read()
    block = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB, touched
    del block
    after = meter.read()
    assert after["peak"] - before["current"] >= 60 * 2**20
    assert after["current"] - before["current"] < 32 * 2**20  # freed, given back
    meter.reset()
    assert meter.read()["peak"] - meter.read()["current"] < 32 * 2**20
    assert available_bytes(torch.device("cpu")) > 0


def test_peak_memory_follows_freed_heap_sized_blocks() -> None:
    """2 MiB blocks, each followed by a small survivor, after a freed 16 MiB block has raised glibc's
    own mmap threshold (as any model load does): from the heap, part of them would stay resident once
    freed (the survivors pin it; 34 of 96 MiB without the meter's setting), inflating later peaks."""
    meter = PeakMemory(torch.device("cpu"))
    assert meter.large_allocations_mapped
    meter.reset()
    before = meter.read()["current"]
    torch.ones(16 * 2**20, dtype=torch.uint8).sum()  # made and freed at once
    blocks, survivors = [], []
    for _ in range(48):
        blocks.append(torch.ones(2 * 2**20, dtype=torch.uint8))
        survivors.append(torch.ones(64, dtype=torch.uint8))
    held = meter.read()["current"] - before
    blocks.clear()
    after = meter.read()
    assert held >= 90 * 2**20
    assert after["current"] - before < 8 * 2**20
    assert after["peak"] - before >= 90 * 2**20


@pytest.mark.parametrize(("device", "message"), [("cuda:99", "CUDA GPU"), ("meta", "cpu or cuda")])
def test_a_device_the_machine_lacks_is_refused_up_front(device: str, message: str, capsys) -> None:
    with pytest.raises(SystemExit):
        check_device(argparse.ArgumentParser(prog="bench"), device)
    assert message in capsys.readouterr().err

"""The README generator: tables from result JSONs, only between the markers, idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import report

README = """# project

intro text that must stay

## Performance

<!-- bench:start -->
stale table
<!-- bench:end -->

## Layout

after text that must stay
"""


def _result(name: str, device: str, ratios: dict, figures: dict, created: str) -> dict:
    return {
        "benchmark": name,
        "created": created,
        "machine": {
            "torch": "2.13.0",
            "cpu_count": 2,
            "device": device,
            "device_name": "NVIDIA H100" if device.startswith("cuda") else "x86_64",
            "git_commit": "0123456789abcdef",
        },
        "config": {"quick": False},
        "figures": figures,
        "ratios": ratios,
    }


@pytest.fixture
def results(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    fixtures = {
        "train_memory-cpu.json": _result(
            "train_memory",
            "cpu",
            {"tiny/qlora_over_lora_step_peak": 0.41234},
            {"lora": {"step_s": 1.5, "peak_bytes": 10}},
            "2026-01-02T03:04:05+00:00",
        ),
        "train_memory-cuda.json": _result(
            "train_memory",
            "cuda:0",
            {"tiny/qlora_over_lora_step_peak": 0.3},
            {"lora": {"step_s": 0.0123, "peak_bytes": 10}, "by_k": {"4": {"fwd_s_median": 0.5}}},
            "2026-02-03T04:05:06+00:00",
        ),
        "scaling-cpu.json": _result(
            "scaling",
            "cpu",
            {"selection_over_uniform_step_time_frames_sweep": 1.02},
            {},
            "2026-03-04T00:00:00+00:00",
        ),
    }
    for file, content in fixtures.items():
        (folder / file).write_text(json.dumps(content))
    return folder


def test_writes_tables_between_markers_only(tmp_path: Path, results: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert report.update_readme(readme, results)
    text = readme.read_text()
    before, rest = text.split(report.START)
    inside, after = rest.split(report.END)
    assert before == README.split(report.START)[0]
    assert after == README.split(report.END)[1]
    assert "stale table" not in inside
    # one table per result, sorted by benchmark then device, with device and date
    headings = [line for line in inside.splitlines() if line.startswith("### ")]
    assert headings == ["### scaling — cpu", "### train_memory — cpu", "### train_memory — cuda:0"]
    assert "| `tiny/qlora_over_lora_step_peak` | 0.412 |" in inside
    assert "run 2026-01-02" in inside and "run 2026-02-03" in inside
    assert "ratios" in inside.splitlines()[1] and "GPU runs" in inside
    # the script's docstring describes its tables
    assert "Peak memory of one training step per method" in inside


def test_absolute_times_only_for_gpu_runs(tmp_path: Path, results: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    report.update_readme(readme, results)
    sections = readme.read_text().split("### ")
    cpu = next(s for s in sections if s.startswith("train_memory — cpu"))
    gpu = next(s for s in sections if s.startswith("train_memory — cuda"))
    assert "seconds" not in cpu and "1.5" not in cpu
    assert "| `lora.step_s` | 0.0123 |" in gpu
    assert "| `by_k.4.fwd_s_median` | 0.5 |" in gpu


def test_idempotent(tmp_path: Path, results: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert report.update_readme(readme, results) is True
    first = readme.read_text()
    assert report.update_readme(readme, results) is False
    assert readme.read_text() == first


def test_missing_markers_is_an_error_naming_the_file(tmp_path: Path, results: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    with pytest.raises(ValueError, match=r"README\.md.*bench:start"):
        report.update_readme(readme, results)
    assert readme.read_text() == "# no markers here\n"


@pytest.mark.parametrize(
    ("content", "message"), [("{not json", "not valid JSON"), ('{"benchmark": "x"}', "missing created")]
)
def test_bad_result_file_is_named(tmp_path: Path, results: Path, content: str, message: str) -> None:
    (results / "broken-cpu.json").write_text(content)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    with pytest.raises(ValueError, match=rf"broken-cpu\.json.*{message}"):
        report.update_readme(readme, results)
    assert readme.read_text() == README

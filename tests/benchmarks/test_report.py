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


def test_goals_table_marks_met_and_missed_per_device(tmp_path: Path, results: Path) -> None:
    (results / "train_memory_1b-cpu.json").write_text(
        json.dumps(
            _result("train_memory_1b", "cpu", {"1b/qlora_over_lora_step_peak": 0.38}, {}, "2026-03-04")
        )
    )
    (results / "train_memory_1b-cuda.json").write_text(
        json.dumps(
            _result("train_memory_1b", "cuda:0", {"1b/qlora_over_lora_step_peak": 0.61}, {}, "2026-03-04")
        )
    )
    (results / "pipeline-cpu.json").write_text(
        json.dumps(_result("pipeline", "cpu", {"pipeline_over_raw_decord": 0.8}, {}, "2026-03-04"))
    )
    readme = tmp_path / "README.md"
    readme.write_text(README)
    report.update_readme(readme, results)
    inside = readme.read_text().split(report.START)[1]
    goals = inside.split("### Goals")[1].split("\n### ")[0]
    assert "| | ratio | goal | cpu | cuda:0 |" in goals
    memory = next(line for line in goals.splitlines() if "qlora_over_lora_step_peak" in line)
    assert "≤ 0.5 | 0.38 ✓ | 0.61 ✗ |" in memory
    assert "≥ 0.9 | 0.8 ✗ |  |" in goals  # measured on the CPU only
    assert "ours_vs_bare" not in goals  # no result for it: no row


def test_optimizer_comparison_fills_its_goal_rows(tmp_path: Path, results: Path) -> None:
    ratios = {
        "1b/paged_adamw_8bit_over_adamw_optimizer_state": 0.2564,
        "1b/paged_adamw_8bit_over_adamw_step_peak": 1.03,
        "1b/offload_over_adamw_step_peak": 0.7,
    }
    name = "train_memory_optimizers_1b_bfloat16"
    (results / f"{name}-cpu.json").write_text(json.dumps(_result(name, "cpu", ratios, {}, "2026-12-02")))
    readme = tmp_path / "README.md"
    readme.write_text(README)
    report.update_readme(readme, results)
    goals = readme.read_text().split("### Goals")[1].split("\n### ")[0]
    rows = {ratio: next(line for line in goals.splitlines() if f"`{ratio}`" in line) for ratio in ratios}
    assert " | ≤ 0.3 | 0.256 ✓ |" in rows["1b/paged_adamw_8bit_over_adamw_optimizer_state"]
    assert " | ≤ 1 | 1.03 ✗ |" in rows["1b/paged_adamw_8bit_over_adamw_step_peak"]
    assert " | ≤ 1 | 0.7 ✓ |" in rows["1b/offload_over_adamw_step_peak"]
    # the table of the result itself says which script wrote it
    assert "with --optimizers, step peak, time and optimizer state per optimizer" in readme.read_text()


def _scaling_figures() -> dict:
    variants = ("selection/plain", "uniform/plain", "selection/checkpointing", "uniform/checkpointing")
    point = {v: {"step_s": 0.5 + i / 10, "peak_bytes": 2**20 * (8 + i)} for i, v in enumerate(variants)}
    return {"by_frames": {"2": point, "4": point}, "by_batch": {"1": point, "2": point}}


def test_scaling_result_gets_a_plot_linked_from_the_readme(tmp_path: Path, results: Path) -> None:
    scaling = _result("scaling", "cpu", {"x": 1.0}, _scaling_figures(), "2026-03-04T00:00:00+00:00")
    scaling["config"].update(
        frames_sweep={"k": [2, 4], "batch_size": 1}, batch_sweep={"batch_size": [1, 2], "k": 2}
    )
    (results / "scaling-cpu.json").write_text(json.dumps(scaling))
    readme = tmp_path / "README.md"
    readme.write_text(README)
    report.update_readme(readme, results)
    png = results / "scaling-cpu.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "![scaling on cpu](results/scaling-cpu.png)" in readme.read_text()
    first = png.read_bytes()
    report.update_readme(readme, results)
    assert png.read_bytes() == first  # drawn from the JSON alone: the same bytes every time


def test_gpu_check_rows_sit_beside_their_cpu_counterparts(tmp_path: Path, results: Path) -> None:
    gpu = _result(
        "gpu_check",
        "cuda",
        {"mid_qlora_over_lora_step_peak": 0.3456, "large_qlora_step_peak_gb": 19.87},
        {"nf4": {"ok": True}, "train": {"ok": False, "error": "RuntimeError: NCCL error"}},
        "2026-12-01T00:00:00+00:00",
    )
    cpu = _result(
        "train_memory_1b_bfloat16",
        "cpu",
        {"1b/qlora_over_lora_step_peak": 0.3912},
        {},
        "2026-11-01T00:00:00+00:00",
    )
    (results / "gpu_check-cuda.json").write_text(json.dumps(gpu))
    (results / "train_memory_1b_bfloat16-cpu.json").write_text(json.dumps(cpu))
    section = report.render_section(report.load_results(results))
    table = section.split("### GPU check")[1].split("###")[0]
    assert "NVIDIA H100, torch 2.13.0, run 2026-12-01" in table
    assert (
        "| QLoRA / LoRA step peak, ~1B preset, bf16 | 0.346 "
        "| `train_memory_1b_bfloat16` `1b/qlora_over_lora_step_peak` | 0.391 |"
    ) in table
    assert "| QLoRA step peak GB, 7B-shaped (goal ≤ 24; VideoLLaMA2: 36) | 19.9 | |" in table
    assert "Failed parts: `train`: RuntimeError: NCCL error." in table
    # a CPU rehearsal is no GPU figure
    gpu["machine"]["device"] = "cpu"
    (results / "gpu_check-cuda.json").write_text(json.dumps(gpu))
    assert "### GPU check" not in report.render_section(report.load_results(results))


def test_a_goal_value_next_to_its_bound_shows_the_digits_that_decide_it():
    goal = report.Goal("b", "r", "what", at_most=1.10)
    assert goal.shown(1.1006) == "1.101 ✗"
    assert goal.shown(1.0998) == "1.0998 ✓"
    assert goal.shown(1.1) == "1.1 ✓"
    assert goal.shown(1.234) == "1.23 ✗"
    assert report.Goal("b", "r", "what", at_least=0.9).shown(0.8996) == "0.8996 ✗"

"""benchmarks.inference: the whole run at --quick sizes (tiny preset, every variant in its child), and
how runs become figures and figures become ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import inference
from benchmarks.report import render_goals

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("results")
    cmd = [sys.executable, "-m", "benchmarks.inference", "--device", "cpu", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "inference-cpu.json").read_text())


def test_every_variant_captions_the_batch_with_fixed_length(result: dict[str, Any]) -> None:
    sizes = inference.QUICK
    assert result["config"]["quick"] and result["config"]["rounds"] == 1
    for variant in inference.VARIANTS:
        figures = result["figures"][variant]
        assert figures["quantization"] == inference.QUANTIZATION[variant]
        # eos held back: every clip gets exactly new_tokens tokens, so tokens/s compare
        assert [len(row) for row in figures["token_ids"]] == [sizes.new_tokens] * sizes.batch
        assert figures["generated_tokens"] == sizes.batch * sizes.new_tokens
        assert len(figures["captions"]) == sizes.batch
        assert figures["latency_per_clip_s"] == pytest.approx(figures["batch_s"] / sizes.batch)
        assert figures["tokens_per_s"] == pytest.approx(figures["generated_tokens"] / figures["batch_s"])
        (run,) = figures["runs"]
        assert len(run["batch_s"]) == sizes.repeats and figures["batch_s"] == pytest.approx(run["batch_s"][0])
        # the Python runtime + torch + transformers alone take well over 100 MB of RSS
        assert (
            run["first_call_peak_bytes"] >= run["generate_start_bytes"] > run["baseline_bytes"] > 100 * 2**20
        )
        assert run["steady_peak_bytes"] >= run["warm_start_bytes"] >= run["generate_start_bytes"]
        assert run["peak_bytes"] == max(run["first_call_peak_bytes"], run["steady_peak_bytes"])
        assert figures["peak_above_baseline_bytes"] == run["peak_bytes"] - run["baseline_bytes"]
        assert figures["peak_above_baseline_bytes"] > figures["weight_bytes"] > 0
        assert figures["batch_peak_bytes"] == run["steady_peak_bytes"] - run["warm_start_bytes"] >= 0
    weights = {v: result["figures"][v]["weight_bytes"] for v in inference.VARIANTS}
    assert weights["nf4"] < weights["bf16"]  # the quantized towers take fewer bytes
    assert weights["merged"] < weights["bf16"]  # merging leaves no LoRA matrices behind


def test_ratios_are_the_figures_ratios(result: dict[str, Any]) -> None:
    figures, ratios = result["figures"], result["ratios"]
    assert ratios == inference.inference_ratios(figures)
    bf16, nf4, merged = (figures[v] for v in inference.VARIANTS)
    assert (
        ratios["nf4_over_bf16_peak"] == nf4["peak_above_baseline_bytes"] / bf16["peak_above_baseline_bytes"]
    )
    assert ratios["nf4_over_bf16_latency"] == nf4["latency_per_clip_s"] / bf16["latency_per_clip_s"]
    assert ratios["merged_over_unmerged_latency"] == merged["latency_per_clip_s"] / bf16["latency_per_clip_s"]
    assert 0 <= ratios["merged_token_agreement"] <= 1


def test_the_tiny_result_fills_its_goal_row(result: dict[str, Any]) -> None:
    table = render_goals([result])
    value = result["ratios"]["merged_over_unmerged_latency"]
    assert f"`inference` `merged_over_unmerged_latency` | ≤ 1 | {value:.3g}" in table
    assert "inference_1b" not in table  # the 1b rows wait for a 1b result


def _run(variant: str, batch_s: list[float], peak: int, tokens: list[list[int]]) -> dict[str, Any]:
    return {
        "variant": variant,
        "clips": 2,
        "weight_bytes": 1000,
        "peak_above_baseline_bytes": peak,
        "steady_peak_bytes": peak + 50,
        "warm_start_bytes": peak // 2 + 50,
        "batch_s": batch_s,
        "selector_batch_s": [0.01] * len(batch_s),
        "decode_s": 0.1,
        "token_ids": tokens,
        "captions": ["a", "b"],
    }


def test_summary_takes_medians_over_every_call_of_every_round() -> None:
    runs = [
        _run("nf4", [1.0, 9.0, 2.0], 300, [[1, 2], [3, 4]]),
        _run("nf4", [3.0, 4.0, 5.0], 100, [[1, 2], [3, 5]]),
        _run("nf4", [6.0, 7.0, 8.0], 200, [[1, 2], [3, 4]]),
    ]
    summary = inference.summarize(runs)
    assert summary["batch_s"] == 5.0 and summary["latency_per_clip_s"] == 2.5
    assert summary["generated_tokens"] == 4 and summary["tokens_per_s"] == pytest.approx(0.8)
    assert summary["peak_above_baseline_bytes"] == 200  # the median run's, a measured value
    assert summary["batch_peak_bytes"] == 100
    assert summary["quantization"] == "nf4"
    assert summary["token_ids"] == [[1, 2], [3, 4]] and not summary["same_tokens_every_run"]
    assert len(summary["runs"]) == 3 and "token_ids" not in summary["runs"][0]


def test_token_agreement_counts_positions() -> None:
    assert inference.token_agreement([[1, 2], [3, 4]], [[1, 2], [3, 9]]) == 0.75
    with pytest.raises(ValueError):
        inference.token_agreement([[1, 2]], [[1, 2], [3, 4]])


def test_ratios_need_every_variant() -> None:
    summary = inference.summarize([_run("bf16", [1.0], 100, [[1]])])
    with pytest.raises(ValueError, match=r"missing \['nf4', 'merged'\]"):
        inference.inference_ratios({"bf16": summary})


def test_result_names_keep_presets_apart() -> None:
    assert inference.result_name("tiny") == "inference"
    assert inference.result_name("1b") == "inference_1b"

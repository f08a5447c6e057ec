"""trainer.experiments.compare on runs logged to a real MLflow server; the Pareto front, the law fit, the README writer."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from trainer.experiments import compare as cmp
from trainer.experiments import results_readme
from trainer.experiments.compare_laws import fit_rank_law, power_law, rank_series
from trainer.experiments.compare_plots import pareto_front
from trainer.experiments.compare_runs import load_runs
from trainer.experiments.compare_tables import GATE_COLUMNS, aggregate, markdown_gates, with_gate_separation

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Synthetic configurations: (method, rank) → (CIDEr per seed, peak RSS GiB, step times logged per step).
LAW = {"a": 0.9, "b": 0.6, "c": 0.8}
RUNS = {
    ("qlora", r): (
        [power_law(r, **LAW) + d for d in (-0.01, 0.01)],
        1.0 + r / 100,
        [5.0, 0.50, 0.52, 0.48],
    )
    for r in (4, 8, 16, 32)
}
RUNS[("lora", 16)] = ([0.70, 0.74], 2.0, [5.0, 0.40, 0.41, 0.39])  # faster, more memory
RUNS[("full", 16)] = ([0.60, 0.62], 3.0, [5.0, 0.90, 0.92, 0.88])  # dominated on both fronts


def log_runs(uri: str, experiment: str) -> None:
    client = MlflowClient(uri)
    exp_id = client.create_experiment(experiment)
    for (method, rank), (ciders, rss, step_times) in RUNS.items():
        for seed, cider in enumerate(ciders):
            run_id = client.create_run(exp_id, run_name=f"{method}-r{rank}-s{seed}").info.run_id
            params = {
                "seed": seed,
                "adapter.method": method,
                "adapter.r": rank,
                "output_dir": f"/tmp/{method}{rank}{seed}",
                "model.trainable_params": 1000 * rank,
            }
            metrics = [Metric("time/step_s", v, 0, i + 1) for i, v in enumerate(step_times)]
            metrics += [
                Metric("eval/cider", cider, 0, 4),
                Metric("memory/peak_rss_gib", rss, 0, 4),
                Metric("flops/per_step_tflop", 0.001 * rank, 0, 1),
            ]
            client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
            client.set_terminated(run_id)
    unfinished = client.create_run(exp_id, run_name="crashed").info.run_id
    client.log_metric(unfinished, "eval/cider", 99.0)
    client.set_terminated(unfinished, status="FAILED")


@pytest.fixture(scope="module")
def compared(mlflow_server, tmp_path_factory):
    experiment = f"compare-test-{os.getpid()}"
    log_runs(mlflow_server.uri, experiment)
    out = tmp_path_factory.mktemp("comparison")
    return cmp.compare(mlflow_server.uri, experiment, out), out, experiment


def test_table_is_mean_and_std_over_seeds(compared):
    result, out, _ = compared
    table = result.table.set_index("label")
    assert len(result.runs) == 12 and len(table) == 6  # the FAILED run is left out
    full = table.loc["full-r16-s0"]  # label of a run without sweep tags: its first run's name
    assert full["n"] == 2
    assert full["eval/cider_mean"] == pytest.approx(0.61)
    assert full["eval/cider_std"] == pytest.approx(np.std([0.60, 0.62], ddof=1))
    assert full["time/step_s_mean"] == pytest.approx(0.90)  # median after the warm-up step
    assert full["memory/peak_rss_gib_mean"] == pytest.approx(3.0)
    assert full["model.trainable_params_mean"] == 16000
    assert result.quality == ["eval/cider"] and result.memory == "memory/peak_rss_gib"
    md = (out / "table.md").read_text().splitlines()
    assert md[0].startswith("| configuration | method | seeds | CIDEr | peak process RSS (GiB)")
    row = next(line for line in md if "full-r16" in line)
    assert "0.610 ± 0.014" in row and "3.000" in row and "16,000" in row
    csv = pd.read_csv(out / "table.csv")
    assert set(csv["method"]) == {"qlora", "lora", "full"} and len(csv) == 6


def test_pareto_plots_highlight_the_front(compared):
    _, out, _ = compared
    summary = json.loads((out / "comparison.json").read_text())
    fronts = summary["pareto_fronts"]
    assert set(fronts) == {"pareto_cider_vs_memory.png", "pareto_cider_vs_step_time.png"}
    assert "full-r16-s0" not in fronts["pareto_cider_vs_memory.png"]
    assert "lora-r16-s0" in fronts["pareto_cider_vs_step_time.png"]  # the fastest
    assert "qlora-r4-s0" in fronts["pareto_cider_vs_memory.png"]  # the smallest
    for name in fronts:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_rank_law_recovers_the_generating_law(compared):
    result, out, _ = compared
    law = json.loads((out / "rank_law.json").read_text())
    assert law == result.rank_law
    assert law["law"] == "a - b * r**(-c)" and law["metric"] == "eval/cider"
    assert law["distinct_ranks"] == [4.0, 8.0, 16.0, 32.0] and law["points"] == 8  # lora / full left out
    for key, value in LAW.items():
        assert law["params"][key] == pytest.approx(value, rel=0.1)
    assert (out / "rank_law.png").read_bytes()[:8] == PNG_MAGIC


def test_comparison_is_logged_to_mlflow(compared, mlflow_server):
    _, _, experiment = compared
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id], filter_string="tags.`sweep.kind` = 'comparison'")
    assert len(found) == 1
    files = {a.path for a in client.list_artifacts(found[0].info.run_id, "comparison")}
    assert {"comparison/table.md", "comparison/table.csv", "comparison/rank_law.png"} <= files
    # A second comparison of the same experiment ignores the first one's run.
    assert len(load_runs(mlflow_server.uri, experiment)) == 12


def test_pareto_front_mask():
    cost = np.array([1.0, 2.0, 3.0, 2.0, 1.0])
    quality = np.array([0.5, 0.7, 0.9, 0.6, 0.5])
    # (2, 0.6) is beaten by (2, 0.7); the two identical cheapest points do not beat each other.
    assert pareto_front(cost, quality).tolist() == [True, True, True, False, True]


def test_rank_series_keeps_every_seed_when_a_setting_follows_the_data_seed():
    # SynthVid logs the shards each data seed wrote (data.train_shards): a path per seed, the same
    # configuration. Grouping on it gave one run per rank per series (3 points, a zero-width band).
    rows = [
        {
            "label": f"rank-r={r}",
            "seed": seed,
            "eval/q": 20.0 + r / 8 + seed,
            "cfg.adapter.r": str(r),
            "cfg.adapter.method": "qlora",
            "cfg.data.train_shards": f"assets/order-train-{seed}",
        }
        for r in (8, 16, 32)
        for seed in range(5)
    ]
    rows.append({**rows[0], "label": "lora-r=8", "cfg.adapter.method": "lora"})
    series = rank_series(pd.DataFrame(rows), "adapter.r", "eval/q")
    assert len(series) == 15 and set(series["label"]) == {"rank-r=8", "rank-r=16", "rank-r=32"}
    assert sorted(series["rank"].unique()) == [8.0, 16.0, 32.0]


def test_an_exponent_at_its_bound_falls_back_to_a_log_linear_fit():
    # Quality that dips at the middle rank (as SynthVid's order: 25.4, 24.6, 25.1): no a - b r^-c
    # fits it, and curve_fit runs c to its bound.
    ranks = np.repeat([8.0, 16.0, 32.0], 5)
    quality = np.repeat([25.4, 24.6, 25.1], 5) + np.tile([-1.0, -0.5, 0.0, 0.5, 1.0], 3)
    fit = fit_rank_law(ranks, quality)
    assert fit["law"] == "a + b * ln(r)" and "not identified" in fit["power_law_error"]


def test_two_ranks_fall_back_to_a_log_linear_fit():
    fit = fit_rank_law(np.array([8.0, 8.0, 32.0, 32.0]), np.array([0.5, 0.5, 0.7, 0.7]))
    assert fit["law"] == "a + b * ln(r)"
    assert fit["params"]["b"] == pytest.approx(0.2 / np.log(4))
    assert fit["r2"] == pytest.approx(1.0)


def test_readme_section_is_written_between_markers(compared, tmp_path):
    _, out, _ = compared
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nintro\n{results_readme.START}\nold\n{results_readme.END}\n\n## after\n")
    assert results_readme.main(["--comparison", str(out), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nintro\n") and text.endswith(f"{results_readme.END}\n\n## after\n")
    assert "old" not in text and "| configuration |" in text and "R² =" in text
    rel = os.path.relpath(out, tmp_path)
    assert f"![pareto_cider_vs_memory.png]({rel}/pareto_cider_vs_memory.png)" in text
    with pytest.raises(ValueError, match="results:start"):
        results_readme.replace_section("no markers", "x")


def test_split_by_task_gives_each_task_its_own_configurations():
    runs = pd.DataFrame(
        {
            "config_id": ["a", "a", "b", "c"],
            "cfg.data.synthvid.task": ["order", "order", "retrieval", "order"],
        }
    )
    table = pd.DataFrame({"config_id": ["a", "b", "c"], "label": ["qlora-o", "qlora-r", "lora-o"]})
    parts = cmp._split(runs, table, "data.synthvid.task")
    assert {k: v["label"].tolist() for k, v in parts.items()} == {
        "data.synthvid.task=retrieval": ["qlora-r"],
        "data.synthvid.task=order": ["qlora-o", "lora-o"],
    }
    assert list(cmp._split(runs, table, None)) == [""] and list(cmp._split(runs, table, "absent.key")) == [""]


def test_chance_levels_are_no_quality_and_forced_choice_leads():
    from trainer.experiments.compare_tables import quality_columns

    runs = pd.DataFrame(
        {
            "eval/cider": [1.0],
            "eval/choice_acc_pct": [40.0],
            "eval/chance/choice_acc_pct": [25.0],
            "eval/t2v_medr": [3.0],
            "eval/shuffled/choice_acc_pct": [30.0],
        }
    )
    assert quality_columns(runs) == ["eval/choice_acc_pct", "eval/cider", "eval/shuffled/choice_acc_pct"]


def test_allocation_plot_stacks_each_towers_parameters(tmp_path):
    """allocations.png: one stacked bar per configuration that logged its allocation (seeds
    averaged), the rest of its trainable parameters on top; configurations without one left out."""
    runs = pd.DataFrame(
        {
            "label": ["qlora", "qlora", "static_llm", "prefix"],
            "model.trainable_params": [102528, 102528, 101760, 5000],
            "allocation/lora_params_vision": [24576, 24576, 7680, np.nan],
            "allocation/lora_params_llm": [69632, 69632, 65280, np.nan],
            "allocation/lora_params_frame_qformer": [np.nan, np.nan, 9216, np.nan],
            "allocation/budget_params": [np.nan, np.nan, 102528, np.nan],
        }
    )
    table = cmp.allocation_table(runs)
    assert list(table.index) == ["qlora", "static_llm"]
    assert list(table.columns) == ["lora frame_qformer", "lora llm", "lora vision", "other", "budget"]
    assert table.loc["qlora", "other"] == 102528 - 24576 - 69632  # the saved projection
    assert table.loc["static_llm", "lora frame_qformer"] == 9216 and np.isnan(table.loc["qlora", "budget"])
    path = tmp_path / "allocations.png"
    assert cmp.plot_allocations(runs, path) is not None
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert cmp.plot_allocations(runs[["label", "model.trainable_params"]], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_gate_table_lists_only_the_gated_configurations():
    runs = pd.DataFrame(
        {
            "config_id": ["a", "a", "b"],
            "label": ["temporal", "temporal", "plain"],
            "method": ["temporal_qlora", "temporal_qlora", "qlora"],
            "groups": ["g", "g", "g"],
            # one seed's gates open on events, the other's close on them: both separate them
            "eval/gate_auroc": [0.2, 0.8, float("nan")],
            "eval/gate_spread": [0.1, 0.3, float("nan")],
        }
    )
    runs = with_gate_separation(runs)
    assert runs["eval/gate_separation"].iloc[:2].tolist() == pytest.approx([0.8, 0.8])
    assert runs["eval/gate_separation"].isna().iloc[2]
    text = markdown_gates(aggregate(runs, list(GATE_COLUMNS)))
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows == ["| `temporal` | temporal_qlora | 2 | 0.500 ± 0.424 | 0.800 ± 0.000 | 0.200 ± 0.141 |"]
    assert markdown_gates(aggregate(runs.drop(columns=list(GATE_COLUMNS)), [])) == ""

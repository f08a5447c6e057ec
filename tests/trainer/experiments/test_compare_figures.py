"""The comparison's figures (compare_figures, the Pareto error bars, the rank law's bootstrap band) on
synthetic runs logged to a real MLflow server, and their pure parts on hand-built inputs."""

from __future__ import annotations

import json
import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from data.synthvid_grammar import CaptionFacts, caption
from trainer.experiments import compare as cmp
from trainer.experiments import compare_plots, results_readme
from trainer.experiments.compare_figures import (
    OTHER,
    accuracy_table,
    direction_confusion,
    frame_settings,
    match_observability,
    moving_average,
    observability_points,
    plot_observability_vs_accuracy,
    sequence_name,
)
from trainer.experiments.compare_laws import fit_rank_law, law_curve, power_law, rank_law_band

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = (
    "learning_curves.png",
    "accuracy_vs_k.png",
    "observability_vs_accuracy.png",
    "direction_confusion.png",
)
CLIPS = [f"{i:04d}" for i in range(40)]
SEEDS = (0, 1)
ORDER = {"data.synthvid.task": "order", "adapter.method": "qlora", "adapter.r": 16}
SPARSE = {"data.synthvid.task": "sparse", "adapter.method": "qlora", "data.num_candidate_frames": 32}
# label → (groups, params, probability that a clip's forced choice is right)
CONFIGS = {
    "methods-order-qlora": ("methods", ORDER, 0.5),
    "methods-order-temporal_qlora": ("methods", {**ORDER, "adapter.method": "temporal_qlora"}, 0.8),
    "rank-r=8": ("rank", {**ORDER, "adapter.r": 8}, 0.4),
    "frames-sparse-policy=uniform-k=2": (
        "frames",
        {**SPARSE, "selector.policy": "uniform", "selector.k": 2},
        0.3,
    ),
    "frames-sparse-policy=uniform-k=4": (
        "frames",
        {**SPARSE, "selector.policy": "uniform", "selector.k": 4},
        0.5,
    ),
    "tasks-sparse-qlora": ("tasks,frames", {**SPARSE, "selector.policy": "entropy", "selector.k": 4}, 0.7),
    "policy-sparse-policy=motion": ("policy", {**SPARSE, "selector.policy": "motion", "selector.k": 4}, 0.6),
}
CURVES = {"order": [30.0, 45.0, 55.0, 60.0], "sparse": [28.0, 35.0, 50.0, 52.0]}


def facts(*directions: str) -> CaptionFacts:
    return CaptionFacts(1, "red", "circle", directions)


# Captions of the 2-event clips: the baseline swaps the order of (up, left) and writes garbage for
# (down, right); temporal QLoRA gets both right. Plus a 1-event clip, never counted.
CAPTIONS = {
    "methods-order-qlora": [
        (facts("left", "up"), facts("up", "left")),
        ("a red circle moves moves", facts("down", "right")),
        (facts("up"), facts("up")),
    ],
    "methods-order-temporal_qlora": [
        (facts("up", "left"), facts("up", "left")),
        (facts("down", "right"), facts("down", "right")),
        (facts("down"), facts("up")),
    ],
}


def outcomes(label: str, seed: int) -> dict[str, dict[str, float]]:
    gen = np.random.default_rng([seed, list(CONFIGS).index(label)])
    return {"choice_acc_pct": {c: float(gen.random() < CONFIGS[label][2]) for c in CLIPS}}


def log_run(
    client: MlflowClient, exp_id: str, label: str, groups: str, params: dict, seed: int, **extra
) -> str:
    run_id = client.create_run(exp_id, run_name=f"{label}-s{seed}").info.run_id
    tags = [RunTag("sweep.label", label), RunTag("sweep.groups", groups)]
    client.log_batch(
        run_id,
        params=[Param(k, str(v)) for k, v in {**params, "seed": seed}.items()],
        metrics=extra.get("metrics", []),
        tags=tags,
    )
    for path, body in extra.get("artifacts", {}).items():
        client.log_dict(run_id, body, path)
    client.set_terminated(run_id)
    return run_id


def log_experiment(
    uri: str, experiment: str, with_figure_data: bool = True, only: tuple[str, ...] | None = None
) -> None:
    """Every configuration (or those ``only`` names) for two seeds, and the curve runs for one;
    without figure data, only the final metrics (no histories, per-clip outcomes or captions)."""
    client = MlflowClient(uri)
    exp_id = client.create_experiment(experiment)
    for label, (groups, params, p) in CONFIGS.items():
        if only is not None and label not in only:
            continue
        for seed in SEEDS:
            metrics = [
                Metric(
                    "eval/choice_acc_pct",
                    100 * np.mean(list(outcomes(label, seed)["choice_acc_pct"].values())),
                    0,
                    30,
                ),
                Metric(
                    "memory/analytic_1b_train_state_gib", 2.0 + (params["adapter.method"] != "qlora"), 0, 30
                ),
            ]
            artifacts = {}
            if with_figure_data:
                metrics += [
                    Metric("train/loss", 3.0 * (1 - p) + 2.0 / (1 + step), 0, step) for step in range(30)
                ]
                artifacts["eval/per_clip_step30.json"] = outcomes(label, seed)
                if label in CAPTIONS:
                    artifacts["eval/captions_step30.json"] = {
                        f"c{i}": {
                            "prediction": pred if isinstance(pred, str) else caption(pred),
                            "references": [caption(ref)],
                        }
                        for i, (pred, ref) in enumerate(CAPTIONS[label])
                    }
            log_run(client, exp_id, label, groups, params, seed, metrics=metrics, artifacts=artifacts)
    for task, accuracy in CURVES.items():
        steps = (100, 200, 300, 400)
        metrics = [Metric("eval/choice_acc_pct", a, 0, s) for a, s in zip(accuracy, steps, strict=True)]
        params = {**ORDER, "data.synthvid.task": task, "train.steps": 400, "train.eval_every": 100}
        log_run(
            client,
            exp_id,
            f"curve-{task}",
            "curve",
            params,
            0,
            metrics=metrics if with_figure_data else metrics[-1:],
        )


def observability_report(path) -> None:
    rows = [
        {"task": "sparse", "n": n, "policy": policy, "k": k, "events_recoverable": value + (n == 16)}
        for n in (16, 32)
        for (policy, k), value in {
            ("uniform", 2): 0.0,
            ("uniform", 4): 0.25,
            ("entropy", 2): 0.5,
            ("entropy", 4): 0.9,
            ("motion", 4): 0.75,
        }.items()
    ]
    path.write_text(json.dumps({"settings": {}, "rows": rows}))


@pytest.fixture(scope="module")
def compared(mlflow_server, tmp_path_factory):
    experiment = f"figures-test-{os.getpid()}"
    log_experiment(mlflow_server.uri, experiment)
    out = tmp_path_factory.mktemp("figures")
    observability_report(out / "observability.json")
    result = cmp.compare(
        mlflow_server.uri, experiment, out, log_to_mlflow=False, split_by="data.synthvid.task"
    )
    return result, out, experiment


def test_every_figure_is_written_and_captioned(compared, tmp_path):
    result, out, _ = compared
    summary = json.loads((out / "comparison.json").read_text())
    assert set(summary["figures"]) == set(FIGURES)
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC and result.files[name] == name
    captions = summary["figures"]
    assert (
        "on 2 tasks" in captions["learning_curves.png"]
        and "2 configurations on order" in captions["learning_curves.png"]
    )
    assert "2 selection policies" in captions["accuracy_vs_k.png"]
    assert "at 32 candidate frames), 4 configurations" in captions["observability_vs_accuracy.png"]
    # 2 two-event clips per seed and configuration: the baseline gets none right, temporal all.
    assert "`methods-order-qlora` 0.0%" in captions["direction_confusion.png"]
    assert "`methods-order-temporal_qlora` 100.0%" in captions["direction_confusion.png"]
    readme = tmp_path / "README.md"
    readme.write_text(f"# R\n{results_readme.START}\n{results_readme.END}\n")
    results_readme.main(["--comparison", str(out), "--readme", str(readme)])
    text = readme.read_text()
    rel = os.path.relpath(out, tmp_path)
    for name in FIGURES:
        assert f"![{name}]({rel}/{name})\n\n{captions[name]}\n" in text
    assert "shaded: 2.5–97.5% of" in text  # the rank law's band


def test_rank_law_json_records_the_band(compared):
    result, out, _ = compared
    law = json.loads((out / "rank_law.json").read_text())
    assert law["distinct_ranks"] == [8.0, 16.0]  # two ranks: the log-linear law
    band = law["band"]
    assert band["percentiles"] == [2.5, 97.5] and 0 < band["used"] <= band["resamples"]
    assert set(band["params"]) == set(law["params"])
    for name, (low, high) in band["params"].items():
        assert low <= law["params"][name] <= high


def test_figures_are_skipped_without_their_data(mlflow_server, compared, tmp_path):
    result, _, _ = compared
    # Without the observability report there is nothing to plot against (and no file is written).
    settings = frame_settings(result.runs, ("frames", "policy"))
    assert len(settings) == 4
    points = observability_points(tmp_path / "absent.json", settings, pd.DataFrame(columns=["mean"]))
    assert plot_observability_vs_accuracy(points, tmp_path / "o.png") is None
    assert not (tmp_path / "o.png").exists()
    # Runs with final metrics only (the curve run evaluated once): no figure at all, and the
    # comparison still completes.
    bare = f"figures-bare-{os.getpid()}"
    log_experiment(
        mlflow_server.uri,
        bare,
        with_figure_data=False,
        only=("methods-order-qlora", "methods-order-temporal_qlora", "tasks-sparse-qlora"),
    )
    out = tmp_path / "bare"
    out.mkdir()
    observability_report(out / "observability.json")
    bare_result = cmp.compare(mlflow_server.uri, bare, out, log_to_mlflow=False)
    assert json.loads((out / "comparison.json").read_text())["figures"] == {}
    assert not any((out / name).exists() for name in FIGURES)
    assert len(bare_result.runs) == 8 and "table.md" in bare_result.files


def test_accuracy_table_is_the_mean_with_a_crossed_ci():
    gen = np.random.default_rng(0)
    rows = [
        ("a", seed, clip, "choice_acc_pct", float(gen.random() < 0.6))
        for seed in range(3)
        for clip in range(50)
    ]
    rows.append(("a", 2, 50, "choice_acc_pct", np.nan))  # a clip one seed did not score: left out
    rows.append(("a", 0, 50, "choice_acc_pct", 1.0))
    table = pd.DataFrame(rows, columns=["config", "seed", "clip", "metric", "value"])
    acc = accuracy_table(table, ["a", "never-ran"], num_resamples=2000)
    assert list(acc.index) == ["a"]
    row = acc.loc["a"]
    expected = 100 * table[table["clip"] < 50]["value"].mean()
    assert row["mean"] == pytest.approx(expected) and row["num_clips"] == 50 and row["num_seeds"] == 3
    assert row["ci_low"] < row["mean"] < row["ci_high"] and row["ci_high"] - row["ci_low"] < 40


def test_direction_confusion_counts_and_other():
    pairs = [
        (caption(facts("up", "left")), caption(facts("up", "left"))),
        (caption(facts("left", "up")), caption(facts("up", "left"))),
        ("the circle went somewhere", caption(facts("up", "left"))),
        (caption(facts("up")), caption(facts("up", "left"))),  # one event stated: other
        (caption(CaptionFacts(2, "blue", "square", ())), caption(facts("down", "up"))),
        (caption(facts("down", "up")), caption(facts("down"))),  # a 1-event clip: not counted
        (caption(facts("down", "up")), "not a caption"),
    ]
    counts = direction_confusion(pairs)
    assert counts.shape == (12, 13) and counts.columns[-1] == OTHER
    up_left, left_up, down_up = (
        sequence_name(("up", "left")),
        sequence_name(("left", "up")),
        sequence_name(("down", "up")),
    )
    assert counts.loc[up_left, up_left] == 1 and counts.loc[up_left, left_up] == 1
    assert counts.loc[up_left, OTHER] == 2 and counts.loc[down_up, OTHER] == 1
    assert counts.to_numpy().sum() == 5


def test_observability_is_matched_on_task_candidates_policy_and_k():
    report = pd.DataFrame(
        [
            {"task": "sparse", "n": 32, "policy": "uniform", "k": 4, "events_recoverable": 0.25},
            {"task": "sparse", "n": 16, "policy": "uniform", "k": 4, "events_recoverable": 0.5},
            {"task": "order", "n": 32, "policy": "uniform", "k": 4, "events_recoverable": 0.75},
            {"task": "sparse", "n": 32, "policy": "entropy", "k": 2, "events_recoverable": 0.1},
        ]
    )
    settings = pd.DataFrame(
        {
            "task": ["sparse", "sparse", "sparse"],
            "n": [32.0, 32.0, 32.0],
            "policy": ["uniform", "entropy", "motion"],
            "k": [4.0, 4.0, 4.0],
        },
        index=pd.Index(["u4", "e4", "m4"], name="label"),
    )
    matched = match_observability(report, settings)
    # Only u4 has a report row of its own task, n, policy and K (e4's row is at K = 2; m4 has none).
    assert matched["events_recoverable"].to_dict() == {"u4": 0.25}
    assert match_observability(report.iloc[:0], settings).empty


def test_moving_average_is_centred_and_keeps_the_length():
    values = np.array([0.0, 0.0, 3.0, 0.0, 0.0])
    assert moving_average(values, 3).tolist() == pytest.approx([0.0, 1.0, 1.0, 1.0, 0.0])


LAW = {"a": 0.9, "b": 0.6, "c": 0.8}


def noisy_rank_runs(seeds: int, noise: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(seeds)
    ranks = np.repeat([4.0, 8.0, 16.0, 32.0], seeds)
    return ranks, power_law(ranks, **LAW) + gen.normal(0, noise, ranks.size)


def test_rank_law_band_contains_the_fit_and_narrows_with_more_seeds():
    grid = np.geomspace(4, 32, 20)
    widths = {}
    for seeds in (2, 20):
        ranks, quality = noisy_rank_runs(seeds)
        fit = fit_rank_law(ranks, quality)
        band = rank_law_band(ranks, quality, fit, grid, num_resamples=100)
        low, high = np.array(band["low"]), np.array(band["high"])
        curve = law_curve(fit, grid)
        assert band["used"] >= 90 and np.all(low <= curve + 1e-9) and np.all(curve <= high + 1e-9)
        for name, (lo, hi) in band["params"].items():
            assert lo <= fit["params"][name] <= hi
        widths[seeds] = float(np.mean(high - low))
    # ~ sqrt(((S - 1) / S) / S): 0.5 at 2 seeds, 0.22 at 20 (the bootstrap's seed-term bias included)
    assert widths[20] < 0.7 * widths[2]


def test_pareto_bars_are_the_ci_and_cost_bars_only_where_cost_varies(tmp_path, monkeypatch):
    axes = []
    subplots = plt.subplots

    def recording_subplots(*args, **kwargs):
        fig, ax = subplots(*args, **kwargs)
        axes.append(ax)
        return fig, ax

    monkeypatch.setattr(compare_plots.plt, "subplots", recording_subplots)
    table = pd.DataFrame(
        {
            "label": ["a", "b"],
            "q_mean": [50.0, 60.0],
            "q_std": [1.0, 1.0],
            "mem_mean": [1.0, 2.0],
            "mem_std": [0.0, 0.0],
        }
    )
    ci = pd.DataFrame({"ci_low": [40.0, 55.0], "ci_high": [58.0, 61.0]}, index=["a", "b"])
    compare_plots.plot_pareto(table, "q", "mem", tmp_path / "p.png", quality_ci=ci, chance=25.0)
    bars = axes[-1].containers[0]
    assert bars.has_yerr and not bars.has_xerr  # an analytic cost without spread gets no bars
    segments = bars.lines[2][0].get_segments()
    assert [tuple(s[:, 1]) for s in segments] == [(40.0, 58.0), (55.0, 61.0)]
    assert any(line.get_linestyle() == "--" and line.get_ydata()[0] == 25.0 for line in axes[-1].lines)
    # Without a CI for every configuration: ± std over seeds, and cost bars once cost varies.
    table["mem_std"] = [0.1, 0.0]
    compare_plots.plot_pareto(table, "q", "mem", tmp_path / "p.png", quality_ci=ci.iloc[:1])
    bars = axes[-1].containers[0]
    assert bars.has_xerr
    assert [tuple(s[:, 1]) for s in bars.lines[2][1].get_segments()] == [(49.0, 51.0), (59.0, 61.0)]
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG_MAGIC

"""The figures a reader of a SynthVid comparison expects, next to the tables and the claims.

- ``learning_curves.png``: (A) QLoRA's forced-choice accuracy against the training step on every
  task (the ``curve`` group, evaluated every ``train.eval_every`` steps); (B) the training loss
  against the step of every configuration of the ``methods`` group on ``order`` (mean over seeds,
  moving average);
- ``accuracy_vs_k.png``: forced-choice accuracy against the number of kept frames K per selection
  policy (the ``frames`` group, task ``sparse``), with the 95% CI of the crossed seed × clip
  bootstrap (`statistics.paired_bootstrap` of the outcomes against a table of zeros);
- ``observability_vs_accuracy.png``: for the same configurations and the ``policy`` group, the share
  of events their frame selection keeps recoverable (the observability report,
  ``data/observability.py``) against their accuracy;
- ``direction_confusion.png``: which direction sequence the baseline and temporal QLoRA caption for
  each true sequence of the 2-event clips of ``order`` (their final captions, every seed pooled).

Each figure is written only when its data are there (a quick sweep without the ``curve`` group, a
comparison without the observability report): `write_figures` returns what it wrote, name →
one-line caption, for ``comparison.json`` and the README.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")  # files only; no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402

from data.synthvid_grammar import CHOICE_CHANCE, DIRECTION_PHRASES, parse_caption  # noqa: E402
from trainer.experiments.compare_runs import as_number  # noqa: E402
from trainer.experiments.statistics import paired_bootstrap  # noqa: E402

CHOICE = "choice_acc_pct"  # the per-clip forced choice among CHOICE_SET_SIZE captions
CHANCE_PCT = 100.0 * CHOICE_CHANCE
LOSS = "train/loss"
TASK = "cfg.data.synthvid.task"
# The two configurations whose direction sequences are compared: the baseline of `order` and the
# treatment of the temporal claim (configs/synthvid/experiments.yaml).
CONFUSION_CONFIGS = ("methods-order-qlora", "methods-order-temporal_qlora")
OTHER = "other/unparsed"
# Every 2-event sequence the grammar allows (no direction twice in a row), in a fixed order so that
# the two panels of the confusion figure share their axes.
TWO_EVENT_SEQUENCES = tuple((a, b) for a in DIRECTION_PHRASES for b in DIRECTION_PHRASES if a != b)
_ARROWS = {"right": "→", "left": "←", "up": "↑", "down": "↓"}


def write_figures(
    tracking_uri: str,
    runs: pd.DataFrame,
    per_clip: pd.DataFrame,
    out: Path,
    observability: Path | None = None,
) -> dict[str, str]:
    """Every figure of the module docstring whose data are present; returns name → caption.

    ``runs``: `compare_runs.load_runs`'s table; ``per_clip``: `claims.per_clip_table`'s long table
    (empty when no run logged per-clip outcomes); ``observability``: the observability report's JSON.
    """
    figures: dict[str, str] = {}
    accuracy = accuracy_table(per_clip, runs["label"].unique())
    makers = {
        "learning_curves.png": lambda p: plot_learning_curves(tracking_uri, runs, p),
        "accuracy_vs_k.png": lambda p: plot_accuracy_vs_k(frame_settings(runs, ("frames",)), accuracy, p),
        "observability_vs_accuracy.png": lambda p: plot_observability_vs_accuracy(
            observability_points(observability, frame_settings(runs, ("frames", "policy")), accuracy), p
        ),
        "direction_confusion.png": lambda p: plot_direction_confusion(
            {
                label: direction_confusion(pairs)
                for label, pairs in final_captions(tracking_uri, runs).items()
            },
            p,
        ),
    }
    for name, make in makers.items():
        caption = make(out / name)
        if caption is not None:
            figures[name] = caption
    return figures


# --- shared helpers -----------------------------------------------------------------------------


def in_group(runs: pd.DataFrame, group: str) -> pd.Series:
    """Boolean [runs]: the run belongs to sweep group ``group`` (``groups`` is comma-separated)."""
    return runs["groups"].fillna("").map(lambda g: group in str(g).split(","))


def seed_clip_values(per_clip: pd.DataFrame, config: str, metric: str = CHOICE) -> np.ndarray:
    """One configuration's per-clip outcomes as float [S, C] (seeds sorted, clips sorted), keeping
    only the clips scored under every seed so that the crossed bootstrap sees no hole."""
    rows = per_clip[(per_clip["config"] == config) & (per_clip["metric"] == metric)]
    grid = rows.pivot_table(index="seed", columns="clip", values="value", aggfunc="mean", dropna=False)
    return grid.loc[:, grid.notna().all(axis=0)].sort_index().sort_index(axis=1).to_numpy(float)


def accuracy_table(
    per_clip: pd.DataFrame, configs: Iterable[str], metric: str = CHOICE, num_resamples: int = 10_000
) -> pd.DataFrame:
    """Per configuration with outcomes of ``metric``: mean (percent) and its 95% CI by the crossed
    seed × clip bootstrap, indexed by label; columns mean, ci_low, ci_high, num_seeds, num_clips."""
    rows = {}
    has_metric = per_clip[per_clip["metric"] == metric] if not per_clip.empty else per_clip
    for config in configs:
        if has_metric.empty or not (has_metric["config"] == config).any():
            continue
        values = 100.0 * seed_clip_values(has_metric, config, metric)  # [S, C]
        if values.size == 0:
            continue
        # The mean of b − 0 with the bootstrap's CI is the CI of b's own mean, resampled as the
        # paired comparisons are (seeds and clips crossed).
        d = paired_bootstrap(np.zeros_like(values), values, num_resamples=num_resamples)
        rows[config] = {
            "mean": d.delta,
            "ci_low": d.ci_low,
            "ci_high": d.ci_high,
            "num_seeds": d.num_seeds,
            "num_clips": d.num_clips,
        }
    return pd.DataFrame.from_dict(
        rows, orient="index", columns=["mean", "ci_low", "ci_high", "num_seeds", "num_clips"]
    )


def metric_history(tracking_uri: str, run_ids: Iterable[str], metric: str) -> pd.DataFrame:
    """Long table [run_id, step, value] of ``metric``'s logged history in each run."""
    from trainer.tracking import tracking_client

    client = tracking_client(tracking_uri)
    rows = [
        (run_id, m.step, m.value) for run_id in run_ids for m in client.get_metric_history(run_id, metric)
    ]
    return pd.DataFrame(rows, columns=["run_id", "step", "value"])


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of float [T] over ``window`` points (fewer at the ends), [T]."""
    return pd.Series(np.asarray(values, float)).rolling(window, min_periods=1, center=True).mean().to_numpy()


def _finish(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _chance_line(ax: Any, horizontal: bool = True) -> None:
    line = ax.axhline if horizontal else ax.axvline
    line(CHANCE_PCT, ls="--", color="0.3", lw=1, label=f"chance ({CHANCE_PCT:.0f}%: 1 of 4 captions)")


def _short_labels(labels: list[str]) -> dict[str, str]:
    """Labels without the prefix they all share up to a dash (``methods-order-``), for legends."""
    common = os.path.commonprefix(labels) if len(labels) > 1 else ""
    cut = common.rfind("-") + 1
    return {label: label[cut:] or label for label in labels}


# --- 1. learning curves -------------------------------------------------------------------------


def plot_learning_curves(tracking_uri: str, runs: pd.DataFrame, path: Path, window: int = 10) -> str | None:
    """(A) eval/choice_acc_pct against step per task of the ``curve`` group; (B) train/loss against
    step per configuration of the ``methods`` group on ``order``, mean over seeds then a centred
    moving average over ``window`` steps. None (nothing written) when neither panel has data."""
    curve_runs = runs[in_group(runs, "curve")]
    curves = metric_history(tracking_uri, curve_runs["run_id"], f"eval/{CHOICE}")
    if TASK in runs and not curves.empty:
        curves = curves.merge(curve_runs[["run_id", TASK]], on="run_id")
        # A curve needs two evaluations: a run evaluated only at its end has a final figure, no curve.
        curves = curves[curves.groupby(TASK)["step"].transform("nunique") >= 2]
    else:
        curves = curves.iloc[:0]
    method_runs = runs[
        in_group(runs, "methods") & (runs.get(TASK, pd.Series("", index=runs.index)) == "order")
    ]
    losses = metric_history(tracking_uri, method_runs["run_id"], LOSS).merge(
        method_runs[["run_id", "label"]], on="run_id"
    )
    if curves.empty and losses.empty:
        return None
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110)
    if curves.empty:
        ax_a.text(0.5, 0.5, "no learning-curve runs (group `curve`)", ha="center", transform=ax_a.transAxes)
    else:
        for task, rows in curves.groupby(TASK):
            by_step = rows.groupby("step")["value"].mean()
            ax_a.plot(by_step.index, by_step.to_numpy(), "o-", label=str(task))
        _chance_line(ax_a)
        ax_a.legend(fontsize=7, title="task", title_fontsize=7)
    ax_a.set(
        xlabel="training step",
        ylabel="forced-choice accuracy (%)",
        title="A. QLoRA's learning curve per task",
    )
    ax_a.grid(alpha=0.3)
    seeds = 0
    if losses.empty:
        ax_b.text(0.5, 0.5, "no training loss of group `methods`", ha="center", transform=ax_b.transAxes)
    else:
        names = _short_labels(sorted(losses["label"].unique()))
        for label, rows in losses.groupby("label"):
            # Mean over the seeds at each step (steps a seed did not log are left out of its mean).
            by_step = rows.pivot_table(index="step", columns="run_id", values="value").mean(axis=1)
            seeds = max(seeds, rows["run_id"].nunique())
            ax_b.plot(by_step.index, moving_average(by_step.to_numpy(), window), lw=1.2, label=names[label])
        ax_b.legend(fontsize=7, ncol=2, title="configuration", title_fontsize=7)
    ax_b.set(
        xlabel="training step",
        ylabel="training loss (nats per token)",
        title=f"B. training loss on order ({window}-step moving average, mean over seeds)",
    )
    ax_b.grid(alpha=0.3)
    _finish(fig, path)
    parts = []
    if not curves.empty:
        parts.append(
            f"(A) QLoRA's forced-choice accuracy against the training step on {curves[TASK].nunique()} tasks "
            f"(chance {CHANCE_PCT:.0f}%, dashed)"
        )
    if not losses.empty:
        parts.append(
            f"(B) the training loss of {losses['label'].nunique()} configurations on order "
            f"(mean of up to {seeds} seeds, {window}-step moving average)"
        )
    return "Learning curves: " + "; ".join(parts) + "."


# --- 2. accuracy against K ----------------------------------------------------------------------


def frame_settings(runs: pd.DataFrame, groups: Iterable[str], task: str = "sparse") -> pd.DataFrame:
    """One row per configuration of any of ``groups`` on ``task``: label, task, n (candidate
    frames), policy, k; indexed by label. Empty when the runs do not log those settings."""
    columns = {
        "task": TASK,
        "n": "cfg.data.num_candidate_frames",
        "policy": "cfg.selector.policy",
        "k": "cfg.selector.k",
    }
    mask = np.logical_or.reduce([in_group(runs, g).to_numpy() for g in groups])
    if not all(c in runs for c in columns.values()):
        return pd.DataFrame(columns=list(columns)).rename_axis("label")
    chosen = runs[mask & (runs[TASK] == task).to_numpy()]
    table = chosen.groupby("label")[list(columns.values())].first()
    table.columns = list(columns)
    table["n"] = table["n"].map(as_number)
    table["k"] = table["k"].map(as_number)
    return table.dropna(subset=["n", "k"])


def plot_accuracy_vs_k(settings: pd.DataFrame, accuracy: pd.DataFrame, path: Path) -> str | None:
    """Forced-choice accuracy (mean, 95% CI) against K, one line per policy; None without data."""
    data = settings.join(accuracy, how="inner")
    if data.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=110)
    policies = sorted(data["policy"].unique())
    for i, (policy, rows) in enumerate(data.sort_values("k").groupby("policy")):
        yerr = np.stack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]])
        # Policies measured at the same K are drawn slightly apart so that their bars do not hide
        # each other (a shift of a few percent on the log axis, centred on the true K).
        dodge = 2.0 ** (0.06 * (i - (len(policies) - 1) / 2))
        ax.errorbar(rows["k"] * dodge, rows["mean"], yerr=yerr, fmt="o-", capsize=3, label=str(policy))
    _chance_line(ax)
    ks = sorted(data["k"].unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [f"{k:g}" for k in ks])
    ax.set(
        xlabel="frames kept K (selector.k, log scale)",
        ylabel="forced-choice accuracy (%)",
        title="Accuracy vs frames kept (sparse; mean, 95% CI over seeds × clips)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="selector.policy", title_fontsize=7)
    _finish(fig, path)
    seeds = int(data["num_seeds"].max())
    return (
        f"Forced-choice accuracy on sparse against the frames kept K for {data['policy'].nunique()} "
        f"selection policies ({seeds} seeds; bars: 95% CI of the seed × clip bootstrap; chance {CHANCE_PCT:.0f}%)."
    )


# --- 3. observability against accuracy ----------------------------------------------------------


def load_observability(path: Path | None) -> pd.DataFrame:
    """The observability report's rows [task, n, policy, k, events_recoverable, …]; empty when absent."""
    if path is None or not Path(path).is_file():
        return pd.DataFrame(columns=["task", "n", "policy", "k", "events_recoverable"])
    return pd.DataFrame(json.loads(Path(path).read_text())["rows"])


def match_observability(report: pd.DataFrame, settings: pd.DataFrame) -> pd.DataFrame:
    """``settings`` (indexed by label: task, n, policy, k) with the report row of the same task,
    candidate count, policy and K joined on (its events_recoverable); configurations the report
    did not measure are left out."""
    if report.empty or settings.empty:
        return settings.assign(events_recoverable=pd.Series(dtype=float)).iloc[:0]
    keys = ["task", "n", "policy", "k"]
    left = settings.reset_index().astype({"task": str, "policy": str, "n": float, "k": float})
    right = report[[*keys, "events_recoverable"]].astype({"task": str, "policy": str, "n": float, "k": float})
    return left.merge(right.drop_duplicates(keys), on=keys, how="inner").set_index("label")


def observability_points(
    report_path: Path | None, settings: pd.DataFrame, accuracy: pd.DataFrame
) -> pd.DataFrame:
    """Per configuration: its observability (events_recoverable) and accuracy (mean, CI)."""
    return match_observability(load_observability(report_path), settings).join(accuracy, how="inner")


def plot_observability_vs_accuracy(points: pd.DataFrame, path: Path) -> str | None:
    """Accuracy (mean, 95% CI) against the share of events recoverable, labelled points; None
    without data."""
    if points.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.8), dpi=110)
    x = 100.0 * points["events_recoverable"].astype(float)
    for policy, rows in points.assign(x=x).groupby("policy"):
        yerr = np.stack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]])
        ax.errorbar(rows["x"], rows["mean"], yerr=yerr, fmt="o", capsize=3, label=str(policy))
        for _, row in rows.iterrows():
            ax.annotate(
                f"{policy} K={row['k']:g}",
                (row["x"], row["mean"]),
                fontsize=6,
                xytext=(4, 3),
                textcoords="offset points",
            )
    _chance_line(ax)
    ax.set_xlim(-5, 105)
    ax.set(
        xlabel="events recoverable from the kept frames (%, observability report)",
        ylabel="forced-choice accuracy (%)",
        title="What the frames show vs what the model gets right (sparse)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="selector.policy", title_fontsize=7)
    _finish(fig, path)
    n = ", ".join(f"{v:g}" for v in sorted(points["n"].unique()))
    return (
        f"Forced-choice accuracy on sparse (95% CI) against the share of events the frame selection "
        f"keeps recoverable (observability report at {n} candidate frames), {len(points)} configurations."
    )


# --- 4. direction confusion ---------------------------------------------------------------------


def sequence_name(directions: tuple[str, ...]) -> str:
    """("up", "left") → "↑ then ←"."""
    return " then ".join(_ARROWS[d] for d in directions)


def direction_confusion(pairs: Iterable[tuple[str, str]]) -> pd.DataFrame:
    """Counts of predicted against true direction sequence over the 2-event clips.

    Args:
        pairs: (prediction, reference) captions; a pair whose reference does not parse to two
            directions (another task's clip, one event) is left out.
    Returns:
        int DataFrame [12 true sequences, 12 predicted sequences + OTHER]: a prediction that is
        outside the grammar or states another number of events counts as OTHER; its other words
        (colour, shape) do not matter here.
    """
    columns = [sequence_name(s) for s in TWO_EVENT_SEQUENCES] + [OTHER]
    counts = pd.DataFrame(0, index=columns[:-1], columns=columns, dtype=int)
    for prediction, reference in pairs:
        truth = parse_caption(reference)
        if truth is None or len(truth.directions) != 2:
            continue
        said = parse_caption(prediction)
        column = sequence_name(said.directions) if said is not None and len(said.directions) == 2 else OTHER
        counts.loc[sequence_name(truth.directions), column] += 1
    return counts


def final_captions(
    tracking_uri: str, runs: pd.DataFrame, configs: tuple[str, ...] = CONFUSION_CONFIGS
) -> dict[str, list[tuple[str, str]]]:
    """Per configuration of ``configs`` that has runs with captions: the (prediction, reference)
    pairs of every run's last ``eval/captions_step<N>.json``, seeds pooled."""
    from trainer.tracking import tracking_client

    client = tracking_client(tracking_uri)
    pairs: dict[str, list[tuple[str, str]]] = {}
    for run in runs[runs["label"].isin(configs)].itertuples():
        files = [a.path for a in client.list_artifacts(run.run_id, "eval") if "captions_step" in a.path]
        if not files:
            continue
        final = max(files, key=lambda p: int(Path(p).stem.removeprefix("captions_step")))
        with tempfile.TemporaryDirectory() as tmp:
            clips: Mapping[str, Any] = json.loads(
                Path(client.download_artifacts(run.run_id, final, tmp)).read_text()
            )
        pairs.setdefault(run.label, []).extend(
            (str(c.get("prediction", "")), str((c.get("references") or [""])[0])) for c in clips.values()
        )
    return {label: pairs[label] for label in configs if label in pairs}


def plot_direction_confusion(matrices: dict[str, pd.DataFrame], path: Path) -> str | None:
    """Row-normalised confusion matrices side by side (one per configuration, shared colour
    scale); None when no configuration has a 2-event clip."""
    matrices = {label: m for label, m in matrices.items() if m.to_numpy().sum() > 0}
    if not matrices:
        return None
    fig, axes = plt.subplots(
        1, len(matrices), figsize=(6.2 * len(matrices) + 1, 5.8), dpi=110, squeeze=False, layout="constrained"
    )
    image = None
    parts = []
    for ax, (label, counts) in zip(axes[0], matrices.items(), strict=True):
        totals = counts.sum(axis=1).to_numpy(float)  # [12]
        with np.errstate(invalid="ignore", divide="ignore"):
            share = counts.to_numpy(float) / totals[:, None]  # rows without clips stay NaN (blank)
        image = ax.imshow(share, vmin=0, vmax=1, cmap="Blues", aspect="auto")
        ax.set_xticks(range(counts.shape[1]), counts.columns, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(counts.shape[0]), counts.index, fontsize=7)
        for i, j in zip(*np.nonzero(counts.to_numpy()), strict=True):
            ax.text(
                j,
                i,
                f"{share[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=5,
                color="white" if share[i, j] > 0.5 else "black",
            )
        diagonal = np.trace(counts.to_numpy()[:, : len(TWO_EVENT_SEQUENCES)])
        correct = 100.0 * diagonal / totals.sum()
        ax.set(
            xlabel="predicted direction sequence",
            ylabel="true direction sequence" if ax is axes[0, 0] else "",
            title=f"{label}\n{int(totals.sum())} clips: sequence right {correct:.1f}% "
            f"(chance {100 / len(TWO_EVENT_SEQUENCES):.1f}%)",
        )
        parts.append(f"`{label}` {correct:.1f}%")
    fig.colorbar(image, ax=axes[0].tolist(), label="share of the true sequence's clips", shrink=0.8)
    fig.savefig(path)
    plt.close(fig)
    return (
        "Direction sequences of the 2-event clips of order, true (rows) against captioned (columns; "
        f"{OTHER}: outside the grammar or another number of events), row-normalised, seeds pooled; "
        f"sequence right: {', '.join(parts)} (chance {100 / len(TWO_EVENT_SEQUENCES):.1f}%)."
    )

"""Plots: quality against cost with the Pareto front highlighted, and quality against rank with its law."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")  # files only; no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402

from trainer.experiments.compare_laws import law_curve  # noqa: E402
from trainer.experiments.compare_runs import MEMORY_TITLES, STEP_TIME  # noqa: E402
from trainer.experiments.compare_tables import metric_title  # noqa: E402


def pareto_front(cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Boolean mask of the points no other point beats: cost <= and quality >= with one strict.

    cost, quality: float [P]. Lower cost and higher quality are better.
    """
    cost, quality = np.asarray(cost, float), np.asarray(quality, float)
    no_worse = (cost[None, :] <= cost[:, None]) & (quality[None, :] >= quality[:, None])
    better = (cost[None, :] < cost[:, None]) | (quality[None, :] > quality[:, None])
    return ~(no_worse & better).any(axis=1)


def plot_pareto(table: pd.DataFrame, quality: str, cost: str, path: Path, subset: str = "") -> list[str]:
    """Scatter of the configurations (error bars: std over seeds), front highlighted; returns its labels.

    ``subset`` names the part of the experiment plotted (e.g. one task), for the title."""
    data = table.dropna(subset=[f"{quality}_mean", f"{cost}_mean"])
    x, y = data[f"{cost}_mean"].to_numpy(), data[f"{quality}_mean"].to_numpy()
    front = pareto_front(x, y)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    ax.errorbar(
        x,
        y,
        xerr=data[f"{cost}_std"],
        yerr=data[f"{quality}_std"],
        fmt="o",
        color="0.6",
        ecolor="0.8",
        label="configuration (mean ± std over seeds)",
    )
    order = np.argsort(x[front])
    ax.plot(
        x[front][order],
        y[front][order],
        "o-",
        color="tab:red",
        drawstyle="steps-post",
        label="Pareto front",
        zorder=3,
        markersize=7,
    )
    for xi, yi, label, on_front in zip(x, y, data["label"], front, strict=True):
        ax.annotate(
            label,
            (xi, yi),
            fontsize=6,
            xytext=(3, 3),
            textcoords="offset points",
            color="tab:red" if on_front else "0.4",
        )
    title = f"{metric_title(quality)} vs {_axis_name(cost)}" + (f" ({subset})" if subset else "")
    _finish_plot(fig, ax, _axis_name(cost), metric_title(quality), path, title=title)
    return data["label"][front].tolist()


def _axis_name(col: str) -> str:
    return {**MEMORY_TITLES, STEP_TIME: "step time (s)"}.get(col, col)


def plot_rank_law(series: pd.DataFrame, quality: str, fit: dict[str, Any], rank_key: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    ax.plot(series["rank"], series[quality], "o", color="0.6", alpha=0.7, label="run (one seed)")
    means = series.groupby("rank")[quality].agg(["mean", "std"]).reset_index()
    ax.errorbar(
        means["rank"],
        means["mean"],
        yerr=means["std"].fillna(0),
        fmt="s",
        color="tab:blue",
        capsize=3,
        label="mean ± std",
    )
    grid = np.geomspace(series["rank"].min(), series["rank"].max(), 100)
    ax.plot(grid, law_curve(fit, grid), "-", color="tab:red", label=f"fit: {_law_text(fit)}")
    ax.set_xscale("log", base=2)
    title = f"{metric_title(quality)} vs rank"
    _finish_plot(fig, ax, f"rank ({rank_key})", metric_title(quality), path, title=title)


def _law_text(fit: dict[str, Any]) -> str:
    p = fit["params"]
    if "c" in p:
        return f"q = {p['a']:.3g} - {p['b']:.3g}·r^-{p['c']:.3g} (R²={fit['r2']:.2f})"
    return f"q = {p['a']:.3g} + {p['b']:.3g}·ln r (R²={fit['r2']:.2f})"


def _finish_plot(fig: Any, ax: Any, xlabel: str, ylabel: str, path: Path, title: str | None = None) -> None:
    """Labels, grid and legend of a comparison plot; saved to ``path`` and closed."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{ylabel} vs {xlabel}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

"""Plots: quality against cost with the Pareto front highlighted, quality against rank with its law
and bootstrap band, and the trainable parameters each configuration's adapter put in each tower."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")  # files only; no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402

from trainer.experiments.compare_laws import law_curve  # noqa: E402
from trainer.experiments.compare_runs import (  # noqa: E402
    BUDGET,
    LORA_PARAMS_PREFIX,
    MEMORY_TITLES,
    STEP_TIME,
    TRAINABLE,
)
from trainer.experiments.compare_tables import metric_title  # noqa: E402


def pareto_front(cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Boolean mask of the points no other point beats: cost <= and quality >= with one strict.

    cost, quality: float [P]. Lower cost and higher quality are better.
    """
    cost, quality = np.asarray(cost, float), np.asarray(quality, float)
    no_worse = (cost[None, :] <= cost[:, None]) & (quality[None, :] >= quality[:, None])
    better = (cost[None, :] < cost[:, None]) | (quality[None, :] > quality[:, None])
    return ~(no_worse & better).any(axis=1)


def plot_pareto(
    table: pd.DataFrame,
    quality: str,
    cost: str,
    path: Path,
    subset: str = "",
    quality_ci: pd.DataFrame | None = None,
    chance: float | None = None,
) -> list[str]:
    """Scatter of the configurations with error bars, front highlighted; returns the front's labels.

    Quality's bars are the 95% CI of the seed × clip bootstrap where ``quality_ci`` (indexed by
    label, columns ci_low / ci_high) has every plotted configuration, else ± std over seeds; cost
    gets ± std over seeds only where it varies (an analytic memory count does not).
    ``subset`` names the part of the experiment plotted (e.g. one task), for the title; ``chance``
    draws the metric's chance level."""
    data = table.dropna(subset=[f"{quality}_mean", f"{cost}_mean"])
    x, y = data[f"{cost}_mean"].to_numpy(), data[f"{quality}_mean"].to_numpy()
    front = pareto_front(x, y)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    yerr, bars = data[f"{quality}_std"].to_numpy(), "± std over seeds"
    if quality_ci is not None and data["label"].isin(quality_ci.index).all():
        ci = quality_ci.loc[data["label"]]
        # The CI is of the per-clip mean; clipped at the point in case the run means differ from it
        # (clips without an outcome in some run).
        yerr = np.clip(np.stack([y - ci["ci_low"].to_numpy(), ci["ci_high"].to_numpy() - y]), 0, None)
        bars = "95% CI, seed × clip bootstrap"
    cost_std = data[f"{cost}_std"].to_numpy()
    xerr = cost_std if (cost_std > 0).any() else None
    ax.errorbar(
        x,
        y,
        xerr=xerr,
        yerr=yerr,
        fmt="o",
        color="0.5",
        ecolor="0.55",
        elinewidth=1,
        capsize=3,
        label=f"configuration (mean; quality {bars}" + (", cost ± std)" if xerr is not None else ")"),
    )
    if chance is not None and np.isfinite(chance):
        ax.axhline(chance, ls="--", color="0.3", lw=1, label=f"chance ({chance:.3g})")
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


def plot_rank_law(
    series: pd.DataFrame,
    quality: str,
    fit: dict[str, Any],
    rank_key: str,
    path: Path,
    band: dict[str, Any] | None = None,
) -> None:
    """Runs, per-rank mean ± std, the fitted law and, given `compare_laws.rank_law_band`'s result,
    the 2.5–97.5% band of the laws refitted on resampled seeds."""
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
    if band is not None and band.get("low") is not None:
        low, high = band["percentiles"]
        ax.fill_between(
            band["grid"],
            band["low"],
            band["high"],
            color="tab:red",
            alpha=0.15,
            label=f"{low:g}–{high:g}% of {band['used']} refits on resampled seeds",
        )
    ax.plot(grid, law_curve(fit, grid), "-", color="tab:red", label=f"fit: {_law_text(fit)}")
    ax.set_xscale("log", base=2)
    title = f"{metric_title(quality)} vs rank"
    _finish_plot(fig, ax, f"rank ({rank_key})", metric_title(quality), path, title=title)


def _law_text(fit: dict[str, Any]) -> str:
    p = fit["params"]
    if "c" in p:
        return f"q = {p['a']:.3g} - {p['b']:.3g}·r^-{p['c']:.3g} (R²={fit['r2']:.2f})"
    return f"q = {p['a']:.3g} + {p['b']:.3g}·ln r (R²={fit['r2']:.2f})"


def allocation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration that logged its adapter's allocation: mean over seeds of the LoRA parameters
    of each tower, of everything else that trains (saved modules, gates; AdaLoRA's masked
    components) and of the budget. Index: label; columns: "lora <tower>" (towers sorted by name, the
    metric names being all a comparison knows of them), "other", "budget"."""
    towers = sorted(c.removeprefix(LORA_PARAMS_PREFIX) for c in runs if c.startswith(LORA_PARAMS_PREFIX))
    if not towers:
        return pd.DataFrame()
    cols = [f"{LORA_PARAMS_PREFIX}{t}" for t in towers]
    data = runs[runs[cols].notna().any(axis=1)]
    lora = data[cols].fillna(0.0).set_axis([f"lora {t}" for t in towers], axis=1)
    table = lora.assign(label=data["label"].to_numpy())
    rest = (data[TRAINABLE] - data[cols].fillna(0.0).sum(axis=1)).clip(lower=0) if TRAINABLE in data else 0.0
    table["other"] = rest
    table["budget"] = data[BUDGET] if BUDGET in data else np.nan
    return table.groupby("label", sort=True).mean()


def plot_allocations(runs: pd.DataFrame, path: Path) -> str | None:
    """Stacked bars, one per configuration: the trainable parameters its adapter put in each tower
    (LoRA A + B; AdaLoRA its kept components) and the rest that trains, with its budget ticked where
    one was set, so that a budget-matched comparison is seen to be one. Returns a caption, or None
    (nothing written) when no run logged an allocation."""
    table = allocation_table(runs)
    if table.empty:
        return None
    parts = [c for c in table.columns if c != "budget"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(table) + 2), 4.8), dpi=110)
    x = np.arange(len(table))
    bottom = np.zeros(len(table))
    for part in parts:
        values = table[part].to_numpy()
        ax.bar(x, values, bottom=bottom, label=part, color=None if part != "other" else "0.8")
        bottom += values
    budget = table["budget"].to_numpy()
    if np.isfinite(budget).any():
        ax.plot(x, budget, "_", color="k", markersize=22, markeredgewidth=2, label="budget")
    ax.set_xticks(x, table.index, rotation=60, ha="right", fontsize=7)
    _finish_plot(
        fig, ax, "configuration", "trainable parameters", path, title="Trainable parameters per tower"
    )
    return "trainable parameters each configuration's adapter put in each tower (stacked), budget ticked"


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

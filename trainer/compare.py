"""Compare the runs of one MLflow experiment: table, Pareto fronts, rank-quality law.

::

    python -m trainer.compare --experiment synthvid [--tracking-uri URI] --out results/synthvid

Reads the experiment's FINISHED runs back from MLflow, groups them by configuration (the sweep's
``sweep.config_id`` tag; for runs not made by ``trainer.sweep``, their params minus seed and paths)
and writes to ``--out``:

- ``table.md`` / ``table.csv``: per configuration, mean ± std over seeds of quality (``eval/*``:
  CIDEr, R@1, …), peak memory, step time, FLOPs per step and trainable parameters;
- ``runs.csv``: one row per run, the figures the table is computed from;
- ``pareto_<quality>_vs_<cost>.png``: quality against peak memory and against step time, the
  configurations on the Pareto front (no other one is both cheaper and better) highlighted;
- ``rank_law.png`` / ``rank_law.json``: quality against LoRA rank for the configurations that differ
  only in their rank, with the fitted law ``q(r) = a - b * r**(-c)`` (scipy.optimize.curve_fit; a
  log-linear least-squares fit ``q = a + b ln r`` when there are fewer than 3 ranks or the power
  law does not converge; the JSON says which);
- ``comparison.json``: all of the above in one file (what ``trainer.results_readme`` reads).

Everything is also logged as artifacts of a run named ``comparison`` (tag ``sweep.kind=comparison``)
in the same experiment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")  # files only; no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402

# Quality metrics shown in the table when present, in this order (higher is better); every other
# eval/* metric still goes into the CSV files.
PREFERRED_QUALITY = (
    "eval/cider",
    "eval/t2v_r1_pct",
    "eval/v2t_r1_pct",
    "eval/bleu4",
    "eval/meteor",
    "eval/rougeL",
)
# Lower-is-better retrieval ranks: in the CSV files, never treated as quality.
RANK_SUFFIXES = ("_medr", "_mnr")
# Peak memory: the accelerator's allocator peak when there is one, else the process's peak RSS.
MEMORY_METRICS = ("memory/peak_allocated_gib", "memory/peak_rss_gib")
STEP_TIME = "time/step_s"
FLOPS = "flops/per_step_tflop"
TRAINABLE = "model.trainable_params"
# Params that differ between the runs of one configuration, or follow from the config.
RUN_SPECIFIC_PARAMS = {
    "seed",
    "output_dir",
    "assets_dir",
    "tracking.run_name",
    "tracking.uri",
    "tracking.experiment",
    "model.trainable_params",
    "model.total_params",
    "world_size",
    "sys.num_threads",
    "sys.num_threads_source",
}
COMPARISON_TAG = "sweep.kind"


@dataclass
class Comparison:
    runs: pd.DataFrame  # one row per run
    table: pd.DataFrame  # one row per configuration: <col>_mean, <col>_std, n
    quality: list[str]  # quality columns present, most important first
    memory: str | None  # the memory column used
    files: dict[str, str]  # what was written, name → path relative to the output folder
    rank_law: dict[str, Any] | None


# ---------------------------------------------------------------------------------------------- reading
def load_runs(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """FINISHED runs of ``experiment`` (comparison runs excluded), one row each, with the figures compared.

    Columns: run_id, run_name, config_id, label, groups, seed, method, every ``eval/*`` metric,
    the memory metrics, ``time/step_s`` (the median over logged steps after the first, which holds
    the warm-up), ``flops/per_step_tflop``, ``model.trainable_params`` and ``param.<key>`` for each
    ``sweep.param.<key>`` tag.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no MLflow experiment {experiment!r} at {tracking_uri}")
    mlflow.set_tracking_uri(tracking_uri)
    found = mlflow.search_runs(
        experiment_ids=[exp.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        output_format="list",
    )
    rows = []
    for run in found:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        if tags.get(COMPARISON_TAG) == "comparison":
            continue
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "config_id": tags.get("sweep.config_id") or _params_id(params),
            "label": tags.get("sweep.label") or run.info.run_name,
            "groups": tags.get("sweep.groups", ""),
            "seed": _number(params.get("seed", tags.get("sweep.seed"))),
            "method": params.get("adapter.method", tags.get("adapter.method", "")),
        }
        row.update(
            {k: v for k, v in metrics.items() if k.startswith("eval/") or k in MEMORY_METRICS or k == FLOPS}
        )
        row[STEP_TIME] = _steady_step_time(client, run.info.run_id) if STEP_TIME in metrics else np.nan
        row[TRAINABLE] = _number(params.get(TRAINABLE))
        row.update(
            {f"param.{k[len('sweep.param.') :]}": v for k, v in tags.items() if k.startswith("sweep.param.")}
        )
        row.update({f"cfg.{k}": v for k, v in params.items() if k not in RUN_SPECIFIC_PARAMS})
        rows.append(row)
    if not rows:
        raise SystemExit(f"experiment {experiment!r} at {tracking_uri} has no FINISHED runs to compare")
    return pd.DataFrame(rows).sort_values(["label", "seed"], kind="stable").reset_index(drop=True)


def _steady_step_time(client: Any, run_id: str) -> float:
    values = [m.value for m in sorted(client.get_metric_history(run_id, STEP_TIME), key=lambda m: m.step)]
    steady = values[1:] or values
    return float(np.median(steady)) if steady else float("nan")


def _params_id(params: dict[str, str]) -> str:
    kept = {k: v for k, v in params.items() if k not in RUN_SPECIFIC_PARAMS}
    return hashlib.sha1(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


# ---------------------------------------------------------------------------------------------- table
def quality_columns(runs: pd.DataFrame) -> list[str]:
    present = [c for c in PREFERRED_QUALITY if c in runs and runs[c].notna().any()]
    others = sorted(
        c
        for c in runs
        if c.startswith("eval/")
        and c not in present
        and not c.endswith(RANK_SUFFIXES)
        and runs[c].notna().any()
    )
    return present + others


def memory_column(runs: pd.DataFrame) -> str | None:
    return next((c for c in MEMORY_METRICS if c in runs and runs[c].notna().any()), None)


def aggregate(runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Mean and sample std (ddof=1; 0 for one seed) of ``columns`` per configuration, with n seeds.

    A configuration is named by its first run's label (the sweep's label; else the run name).
    """
    grouped = runs.groupby("config_id", sort=False)
    table = grouped[["label", "method", "groups"]].first()
    table["n"] = grouped.size()
    for col in columns:
        table[f"{col}_mean"] = grouped[col].mean()
        table[f"{col}_std"] = grouped[col].std(ddof=1).fillna(0.0)
    params = [c for c in runs if c.startswith("param.")]
    if params:
        table = table.join(grouped[params].first())
    return table.reset_index()


def markdown_table(table: pd.DataFrame, quality: list[str], memory: str | None) -> str:
    """The comparison as a GitHub markdown table (mean ± std over the n seeds)."""
    shown = quality[:3]
    header = ["configuration", "method", "seeds"] + [_title(c) for c in shown]
    header += ["peak memory (GiB)", "step time (s)", "TFLOP/step", "trainable params"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [f"`{row['label']}`", str(row["method"]), str(int(row["n"]))]
        cells += [_pm(row, c, 3) for c in shown]
        cells += [
            _pm(row, memory, 3) if memory else "–",
            _pm(row, STEP_TIME, 3),
            _pm(row, FLOPS, 4, std=False),
        ]
        trainable = row.get(f"{TRAINABLE}_mean", float("nan"))
        cells.append(f"{int(trainable):,}" if not math.isnan(trainable) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pm(row: pd.Series, col: str, digits: int, std: bool = True) -> str:
    mean = row.get(f"{col}_mean", float("nan"))
    if mean is None or math.isnan(mean):
        return "–"
    if not std or row["n"] < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {row[f'{col}_std']:.{digits}f}"


def _title(col: str) -> str:
    names = {
        "eval/cider": "CIDEr",
        "eval/t2v_r1_pct": "text→video R@1 (%)",
        "eval/v2t_r1_pct": "video→text R@1 (%)",
    }
    return names.get(col, col.removeprefix("eval/"))


# ---------------------------------------------------------------------------------------------- Pareto
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
    title = f"{_title(quality)} vs {_axis_name(cost)}" + (f" ({subset})" if subset else "")
    _finish_plot(fig, ax, _axis_name(cost), _title(quality), path, title=title)
    return data["label"][front].tolist()


def _axis_name(col: str) -> str:
    return {
        "memory/peak_allocated_gib": "peak allocated memory (GiB)",
        "memory/peak_rss_gib": "peak process RSS (GiB)",
        STEP_TIME: "step time (s)",
    }.get(col, col)


# ---------------------------------------------------------------------------------------------- rank law
def power_law(r: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """q(r) = a - b * r**(-c): quality that saturates at ``a`` as the rank grows."""
    return a - b * np.power(r, -c)


def fit_rank_law(ranks: np.ndarray, quality: np.ndarray) -> dict[str, Any]:
    """Fit ``q(r) = a - b r^-c`` (scipy curve_fit) or, with < 3 distinct ranks or no convergence,
    ``q = a + b ln r`` (least squares). ranks, quality: float [P] (one point per run)."""
    from scipy.optimize import curve_fit

    ranks, quality = np.asarray(ranks, float), np.asarray(quality, float)
    result: dict[str, Any] = {"points": len(ranks), "distinct_ranks": sorted({float(r) for r in ranks})}
    if len(result["distinct_ranks"]) >= 3:
        spread = float(quality.max() - quality.min()) or 1e-3
        try:
            (a, b, c), cov = curve_fit(
                power_law,
                ranks,
                quality,
                p0=(quality.max() + spread, spread, 0.5),
                bounds=([-np.inf, -np.inf, 1e-3], [np.inf, np.inf, 10.0]),
                maxfev=20000,
            )
            predicted = power_law(ranks, a, b, c)
            stderr = np.sqrt(np.clip(np.diag(cov), 0, None)).tolist() if np.all(np.isfinite(cov)) else None
            return {
                **result,
                "law": "a - b * r**(-c)",
                "method": "scipy.optimize.curve_fit",
                "params": {"a": float(a), "b": float(b), "c": float(c)},
                "stderr": stderr,
                "r2": _r2(quality, predicted),
            }
        except (RuntimeError, ValueError) as err:
            result["power_law_error"] = str(err)
    b, a = np.polyfit(np.log(ranks), quality, 1)
    return {
        **result,
        "law": "a + b * ln(r)",
        "method": "numpy.polyfit (least squares on ln r)",
        "params": {"a": float(a), "b": float(b)},
        "r2": _r2(quality, a + b * np.log(ranks)),
    }


def _r2(y: np.ndarray, predicted: np.ndarray) -> float:
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - predicted) ** 2).sum()) / total if total > 0 else float("nan")


def law_curve(fit: dict[str, Any], r: np.ndarray) -> np.ndarray:
    p = fit["params"]
    return power_law(r, p["a"], p["b"], p["c"]) if "c" in p else p["a"] + p["b"] * np.log(r)


def rank_series(runs: pd.DataFrame, rank_key: str, quality: str) -> pd.DataFrame | None:
    """The runs of the largest set of configurations that differ only in ``rank_key`` (>= 2 ranks).

    Configurations are compared through their full logged config (``cfg.*`` columns) with the rank
    key left out, and any param holding it (``adapter.ranks`` for ``adapter.ranks.llm``).
    """
    data = runs.dropna(subset=[quality]).copy()
    data["rank"] = [_config_value(row, rank_key) for _, row in data.iterrows()]
    data = data.dropna(subset=["rank"])
    if data.empty:
        return None
    rest = [
        c for c in data if c.startswith("cfg.") and c[4:] != rank_key and not rank_key.startswith(c[4:] + ".")
    ]
    data["_rest"] = data[rest].map(str).agg("|".join, axis=1) if rest else ""
    best = max(data.groupby("_rest"), key=lambda kv: (kv[1]["rank"].nunique(), len(kv[1])))[1]
    return best.drop(columns="_rest") if best["rank"].nunique() >= 2 else None


def _config_value(row: pd.Series, key: str) -> float:
    """A run's numeric config value: its own param, or a member of a dict-valued param (JSON)."""
    value = row.get(f"cfg.{key}")
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            break
        holder = row.get(f"cfg.{'.'.join(parts[:cut])}")
        if isinstance(holder, str) and holder.startswith("{"):
            node: Any = json.loads(holder)
            for part in parts[cut:]:
                node = node.get(part) if isinstance(node, dict) else None
            value = node
    return _number(value)


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
    _finish_plot(fig, ax, f"rank ({rank_key})", _title(quality), path, title=f"{_title(quality)} vs rank")


def _law_text(fit: dict[str, Any]) -> str:
    p = fit["params"]
    if "c" in p:
        return f"q = {p['a']:.3g} - {p['b']:.3g}·r^-{p['c']:.3g} (R²={fit['r2']:.2f})"
    return f"q = {p['a']:.3g} + {p['b']:.3g}·ln r (R²={fit['r2']:.2f})"


# ---------------------------------------------------------------------------------------------- main
def compare(
    tracking_uri: str,
    experiment: str,
    out: str | Path,
    rank_key: str = "adapter.r",
    log_to_mlflow: bool = True,
    split_by: str | None = None,
) -> Comparison:
    """Read, aggregate, plot and write everything (see the module docstring); returns what it built.

    ``split_by``: a config key (e.g. ``data.synthvid.task``) whose values are separate problems; each
    value gets its own Pareto plots, as qualities of different tasks do not share an axis.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(tracking_uri, experiment)
    quality = quality_columns(runs)
    memory = memory_column(runs)
    figures = quality + [c for c in (*MEMORY_METRICS, STEP_TIME, FLOPS, TRAINABLE) if c in runs]
    table = aggregate(runs, figures)
    files = {"runs.csv": "runs.csv", "table.csv": "table.csv", "table.md": "table.md"}
    runs.to_csv(out / "runs.csv", index=False)
    table.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(markdown_table(table, quality, memory))

    fronts = {}
    for subset, part in _split(runs, table, split_by).items():
        suffix = f"_{_file_part(subset)}" if subset else ""
        for q in quality[:2]:
            for cost in (memory, STEP_TIME):
                if cost is None or part[f"{q}_mean"].notna().sum() == 0:
                    continue
                name = f"pareto_{_file_part(q)}_vs_{'memory' if cost == memory else 'step_time'}{suffix}.png"
                fronts[name] = plot_pareto(part, q, cost, out / name, subset)
                files[name] = name

    rank_law = None
    for q in quality:
        series = rank_series(runs, rank_key, q)
        if series is not None:
            fit = fit_rank_law(series["rank"].to_numpy(), series[q].to_numpy())
            rank_law = {
                "rank_key": rank_key,
                "metric": q,
                "configurations": sorted(series["label"].unique()),
                **fit,
            }
            plot_rank_law(series, q, fit, rank_key, out / "rank_law.png")
            (out / "rank_law.json").write_text(json.dumps(rank_law, indent=2))
            files.update({"rank_law.png": "rank_law.png", "rank_law.json": "rank_law.json"})
            break

    summary = {
        "experiment": experiment,
        "tracking_uri": tracking_uri,
        "runs": len(runs),
        "configurations": len(table),
        "quality": quality,
        "memory": memory,
        "pareto_fronts": fronts,
        "rank_law": rank_law,
        "files": files,
    }
    (out / "comparison.json").write_text(json.dumps(summary, indent=2, default=str))
    files["comparison.json"] = "comparison.json"
    if log_to_mlflow:
        _log_comparison(tracking_uri, experiment, out, summary)
    return Comparison(runs, table, quality, memory, files, rank_law)


def _split(runs: pd.DataFrame, table: pd.DataFrame, split_by: str | None) -> dict[str, pd.DataFrame]:
    """The table's configurations per value of config key ``split_by`` ({"": table} if not split)."""
    column = f"cfg.{split_by}"
    if not split_by or column not in runs or runs[column].nunique() < 2:
        return {"": table}
    value_of = runs.groupby("config_id", sort=False)[column].first()
    values = table["config_id"].map(value_of)
    return {f"{split_by}={v}": table[values == v] for v in sorted(values.dropna().unique())}


def _file_part(col: str) -> str:
    return col.removeprefix("eval/").replace("/", "_").replace("=", "-").replace(".", "_")


def _log_comparison(tracking_uri: str, experiment: str, out: Path, summary: dict[str, Any]) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    run_id = client.create_run(exp_id, run_name="comparison", tags={COMPARISON_TAG: "comparison"}).info.run_id
    client.log_param(run_id, "compared_runs", summary["runs"])
    client.log_artifacts(run_id, str(out), "comparison")
    client.set_terminated(run_id)
    return run_id


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--tracking-uri", default="sqlite:///outputs/mlflow.db")
    parser.add_argument("--out", required=True, help="folder for the table, plots and JSON")
    parser.add_argument("--rank-key", default="adapter.r", help="swept key the rank-quality law is fitted on")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the comparison run")
    parser.add_argument(
        "--split-by", help="config key whose values get separate Pareto plots (e.g. data.synthvid.task)"
    )
    args = parser.parse_args(argv)
    result = compare(
        args.tracking_uri, args.experiment, args.out, args.rank_key, not args.no_mlflow, args.split_by
    )
    print((Path(args.out) / "table.md").read_text())
    print(
        f"{len(result.runs)} runs in {len(result.table)} configurations → {args.out}: {', '.join(result.files)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

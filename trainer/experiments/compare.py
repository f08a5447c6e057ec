"""Compare the runs of one MLflow experiment: table, Pareto fronts, rank-quality law.

::

    python -m trainer.experiments.compare --experiment synthvid [--tracking-uri URI] --out results/synthvid

Reads the experiment's FINISHED runs back from MLflow, groups them by configuration (the sweep's
``sweep.config_id`` tag; for runs not made by a sweep, the same id from their params:
``config_identity``) and writes to ``--out``:

- ``table.md`` / ``table.csv``: per configuration, mean ± std over seeds of quality (``eval/*``:
  CIDEr, R@1, …), peak memory, step time, FLOPs per step and trainable parameters;
- ``runs.csv``: one row per run, the figures the table is computed from;
- ``pareto_<quality>_vs_<cost>.png``: quality against peak memory and against step time, the
  configurations on the Pareto front (no other one is both cheaper and better) highlighted; error
  bars are the 95% seed × clip CI where the runs logged per-clip outcomes of the quality (else ± std
  over seeds) and ± std of the cost where it varies, the chance level dashed where one is logged;
- ``rank_law.png`` / ``rank_law.json``: quality against LoRA rank for the configurations that differ
  only in their rank, with the fitted law ``q(r) = a - b * r**(-c)`` (scipy.optimize.curve_fit; a
  log-linear least-squares fit ``q = a + b ln r`` when there are fewer than 3 ranks or the power
  law does not converge; the JSON says which), with the 2.5–97.5% band of the law refitted on the
  runs of each rank resampled with replacement (its parameters' percentiles in the JSON);
- ``allocations.png`` / ``allocations.csv``: per configuration whose runs logged their adapter's
  allocation (``allocation/*``: every LoRA-family run), the trainable parameters in each tower as
  stacked bars (LoRA A + B; AdaLoRA its kept components at the end), the rest that trains on top and
  the budget ticked: the ranks each allocator chose, side by side with uniform QLoRA's;
- with ``--sweep`` (the sweep file's ``metric``, ``baselines``, ``claims``; ``claims``):
  ``deltas.md`` / ``deltas.csv``, every configuration's paired Δ against its task's baseline with a
  95% CI over seeds and clips, and ``claims.md`` / ``claims.json``, each pre-registered claim's
  primary comparison, Holm-adjusted p, controls and verdict; ``contrasts.md`` / ``contrasts.csv``,
  the file's declared contrasts (ablations and controls: paired Δ, CI, raw p; `contrasts`);
- ``gates.md``: per frame-gated configuration, its gates' AUROC for event vs empty frames (chance
  0.5), the same without its sign (max(A, 1 − A): which side opens follows the initialisation)
  and their spread over a clip's frames, mean ± std over seeds;
- ``learning_curves.png``, ``accuracy_vs_k.png``, ``observability_vs_accuracy.png`` (with the
  observability report, ``--observability``; by default ``observability.json`` in ``--out``) and
  ``direction_confusion.png``, each when its data are there (``compare_figures``);
- ``comparison.json``: all of the above in one file (what ``results_readme`` reads).

Everything is also logged as artifacts of a run named ``comparison`` (tag ``sweep.kind=comparison``)
in the same experiment. The parts: ``compare_runs`` (reading the runs), ``compare_tables``,
``compare_plots``, ``compare_laws`` (the rank-quality law), ``compare_figures`` (the figures of a
SynthVid sweep), this module (the whole and its command).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trainer.config import DEFAULT_TRACKING_URI
from trainer.experiments.claims import (
    ComparisonSpec,
    decide,
    deltas_vs_baselines,
    load_comparison_spec,
    markdown_claims,
    markdown_deltas,
    per_clip_table,
    summary_of,
)
from trainer.experiments.compare_figures import accuracy_table, write_figures
from trainer.experiments.compare_laws import fit_rank_law, rank_law_band, rank_series
from trainer.experiments.compare_plots import allocation_table, plot_allocations, plot_pareto, plot_rank_law
from trainer.experiments.compare_runs import (
    COMPARISON_TAG,
    FLOPS,
    MEMORY_METRICS,
    STEP_TIME,
    TRAINABLE,
    load_runs,
)
from trainer.experiments.compare_tables import (
    aggregate,
    markdown_gates,
    markdown_table,
    memory_column,
    quality_columns,
    with_gate_separation,
)
from trainer.experiments.contrasts import contrast_table, markdown_contrasts


@dataclass
class Comparison:
    runs: pd.DataFrame  # one row per run
    table: pd.DataFrame  # one row per configuration: <col>_mean, <col>_std, n
    quality: list[str]  # quality columns present, most important first
    memory: str | None  # the memory column used
    files: dict[str, str]  # what was written, name → path relative to the output folder
    rank_law: dict[str, Any] | None


def compare(
    tracking_uri: str,
    experiment: str,
    out: str | Path,
    rank_key: str = "adapter.r",
    log_to_mlflow: bool = True,
    split_by: str | None = None,
    sweep_file: str | Path | None = None,
    observability: str | Path | None = None,
) -> Comparison:
    """Read, aggregate, plot and write everything (see the module docstring); returns what it built.

    ``split_by``: a config key (e.g. ``data.synthvid.task``) whose values are separate problems; each
    value gets its own Pareto plots, as qualities of different tasks do not share an axis.
    ``sweep_file``: the sweep's YAML; its ``metric`` / ``baselines`` / ``claims`` (``claims``) add
    the paired Δ table and the claims' verdicts. ``observability``: the observability report's JSON
    (default: ``observability.json`` in ``out``, where ``make experiments`` writes it).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = with_gate_separation(load_runs(tracking_uri, experiment))
    quality = quality_columns(runs)
    memory = memory_column(runs)
    figures = quality + [c for c in (*MEMORY_METRICS, STEP_TIME, FLOPS, TRAINABLE) if c in runs]
    table = aggregate(runs, figures)
    files = {"runs.csv": "runs.csv", "table.csv": "table.csv", "table.md": "table.md"}
    runs.to_csv(out / "runs.csv", index=False)
    table.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(markdown_table(table, quality, memory))

    # Read once: the Pareto plots' CIs, the figures and the claims all pair runs on these outcomes.
    per_clip = per_clip_table(tracking_uri, runs)
    fronts = {}
    for q in quality[:2]:
        ci = accuracy_table(per_clip, runs["label"].unique(), q.removeprefix("eval/"))
        chance_col = "eval/chance/" + q.removeprefix("eval/")
        chance = float(runs[chance_col].mean()) if chance_col in runs else None
        for subset, part in _split(runs, table, split_by).items():
            suffix = f"_{_file_part(subset)}" if subset else ""
            for cost in (memory, STEP_TIME):
                if cost is None or part[f"{q}_mean"].notna().sum() == 0:
                    continue
                name = f"pareto_{_file_part(q)}_vs_{'memory' if cost == memory else 'step_time'}{suffix}.png"
                fronts[name] = plot_pareto(
                    part, q, cost, out / name, subset, ci if not ci.empty else None, chance
                )
                files[name] = name

    rank_law = None
    for q in quality:
        series = rank_series(runs, rank_key, q)
        if series is not None:
            ranks, values = series["rank"].to_numpy(), series[q].to_numpy()
            fit = fit_rank_law(ranks, values)
            band = rank_law_band(ranks, values, fit, np.geomspace(ranks.min(), ranks.max(), 100))
            rank_law = {
                "rank_key": rank_key,
                "metric": q,
                "configurations": sorted(series["label"].unique()),
                **fit,
                "band": {k: band[k] for k in ("resamples", "used", "percentiles", "params")},
            }
            plot_rank_law(series, q, fit, rank_key, out / "rank_law.png", band)
            (out / "rank_law.json").write_text(json.dumps(rank_law, indent=2))
            files.update({"rank_law.png": "rank_law.png", "rank_law.json": "rank_law.json"})
            break

    allocations = plot_allocations(runs, out / "allocations.png")
    if allocations is not None:
        allocation_table(runs).to_csv(out / "allocations.csv")
        files.update({"allocations.png": "allocations.png", "allocations.csv": "allocations.csv"})

    claims = None
    if sweep_file is not None:
        spec = load_comparison_spec(sweep_file)
        claims = _paired_results(per_clip, runs, spec, split_by, out, files)
        if spec.contrasts and not per_clip.empty:
            rows = contrast_table(per_clip, spec.contrasts)
            rows.to_csv(out / "contrasts.csv", index=False)
            (out / "contrasts.md").write_text(markdown_contrasts(rows))
            files.update({"contrasts.csv": "contrasts.csv", "contrasts.md": "contrasts.md"})
    gates = markdown_gates(table)
    if gates:
        (out / "gates.md").write_text(gates)
        files["gates.md"] = "gates.md"

    report = Path(observability) if observability is not None else out / "observability.json"
    figures = write_figures(tracking_uri, runs, per_clip, out, report)
    if allocations is not None:  # among the figures, so that the README shows it with its caption
        figures["allocations.png"] = allocations
    files.update({name: name for name in figures})

    summary = {
        "claims": claims,
        "experiment": experiment,
        "tracking_uri": tracking_uri,
        "runs": len(runs),
        "configurations": len(table),
        "quality": quality,
        "memory": memory,
        "pareto_fronts": fronts,
        "rank_law": rank_law,
        "figures": figures,
        "files": files,
    }
    (out / "comparison.json").write_text(json.dumps(summary, indent=2, default=str))
    files["comparison.json"] = "comparison.json"
    if log_to_mlflow:
        _log_comparison(tracking_uri, experiment, out, summary)
    return Comparison(runs, table, quality, memory, files, rank_law)


def _paired_results(
    table: pd.DataFrame,
    runs: pd.DataFrame,
    spec: ComparisonSpec,
    split_by: str | None,
    out: Path,
    files: dict[str, str],
) -> list[dict[str, Any]] | None:
    """deltas.md / deltas.csv (every configuration vs its task's baseline) and claims.md /
    claims.json (the pre-registered claims' verdicts) from the runs' per-clip outcomes (``table``:
    `claims.per_clip_table`)."""
    if table.empty:
        return None
    if spec.metric and spec.baselines and split_by:
        deltas = deltas_vs_baselines(table, runs, spec.baselines, spec.metric, split_by)
        deltas.to_csv(out / "deltas.csv", index=False)
        (out / "deltas.md").write_text(markdown_deltas(deltas, spec.metric))
        files.update({"deltas.csv": "deltas.csv", "deltas.md": "deltas.md"})
    if not spec.claims:
        return None
    results = summary_of(decide(table, spec.claims))
    (out / "claims.json").write_text(json.dumps(results, indent=2))
    (out / "claims.md").write_text(markdown_claims(results))
    files.update({"claims.json": "claims.json", "claims.md": "claims.md"})
    return results


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
    from trainer.tracking import tracking_client

    client = tracking_client(tracking_uri)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    run_id = client.create_run(exp_id, run_name="comparison", tags={COMPARISON_TAG: "comparison"}).info.run_id
    client.log_param(run_id, "compared_runs", summary["runs"])
    client.log_artifacts(run_id, str(out), "comparison")
    client.set_terminated(run_id)
    return run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.experiments.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    parser.add_argument("--out", required=True, help="folder for the table, plots and JSON")
    parser.add_argument("--rank-key", default="adapter.r", help="swept key the rank-quality law is fitted on")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the comparison run")
    parser.add_argument(
        "--split-by", help="config key whose values get separate Pareto plots (e.g. data.synthvid.task)"
    )
    parser.add_argument(
        "--sweep",
        help="the sweep's YAML: its metric, baselines and claims give the paired Δ table and verdicts",
    )
    parser.add_argument(
        "--observability",
        help="the observability report's JSON (default: observability.json in --out, if there)",
    )
    args = parser.parse_args(argv)
    result = compare(
        args.tracking_uri,
        args.experiment,
        args.out,
        args.rank_key,
        not args.no_mlflow,
        args.split_by,
        args.sweep,
        args.observability,
    )
    print((Path(args.out) / "table.md").read_text())
    print(
        f"{len(result.runs)} runs in {len(result.table)} configurations → {args.out}: {', '.join(result.files)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tables: the runs aggregated per configuration (mean and std over seeds), as CSV and markdown."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from trainer.experiments.compare_runs import FLOPS, MEMORY_METRICS, MEMORY_TITLES, STEP_TIME, TRAINABLE

# Quality metrics shown in the table when present, in this order (higher is better); every other
# eval/* metric still goes into the CSV files.
PREFERRED_QUALITY = (
    "eval/choice_acc_pct",
    "eval/caption_sequence_exact_pct",
    "eval/cider",
    "eval/t2v_r1_pct",
    "eval/v2t_r1_pct",
    "eval/bleu4",
    "eval/meteor",
    "eval/rougeL",
)
# Lower-is-better retrieval ranks: in the CSV files, never treated as quality.
RANK_SUFFIXES = ("_medr", "_mnr")
# Chance levels (eval/chance/<metric>) are logged next to the figures: references, not quality.
CHANCE_PREFIX = "eval/chance/"


def quality_columns(runs: pd.DataFrame) -> list[str]:
    present = [c for c in PREFERRED_QUALITY if c in runs and runs[c].notna().any()]
    others = sorted(
        c
        for c in runs
        if c.startswith("eval/")
        and not c.startswith(CHANCE_PREFIX)
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
    # One join of all the figures' columns: a column at a time fragments the frame (pandas warns).
    figures = {}
    for col in columns:
        figures[f"{col}_mean"] = grouped[col].mean()
        figures[f"{col}_std"] = grouped[col].std(ddof=1).fillna(0.0)
    table = table.join(pd.DataFrame(figures, index=table.index))
    params = [c for c in runs if c.startswith("param.")]
    if params:
        table = table.join(grouped[params].first())
    return table.reset_index()


def markdown_table(table: pd.DataFrame, quality: list[str], memory: str | None) -> str:
    """The comparison as a GitHub markdown table (mean ± std over the n seeds)."""
    shown = quality[:3]
    header = ["configuration", "method", "seeds"] + [metric_title(c) for c in shown]
    header += [MEMORY_TITLES.get(memory, "memory (GiB)"), "step time (s)", "TFLOP/step", "trainable params"]
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


GATE_AUROC, GATE_SPREAD = "eval/gate_auroc", "eval/gate_spread"
# max(AUROC, 1 - AUROC) per run: how well the gates tell event from empty frames whichever way round.
# The signed AUROC's side follows the gate's random initialisation (a gate that closes on events
# separates them as well as one that opens), so its mean over seeds mixes the two.
GATE_SEPARATION = "eval/gate_separation"
GATE_COLUMNS = (GATE_AUROC, GATE_SEPARATION, GATE_SPREAD)


def with_gate_separation(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with the `GATE_SEPARATION` column next to a logged gate AUROC (NaN where none was)."""
    if GATE_AUROC not in runs:
        return runs
    return runs.assign(**{GATE_SEPARATION: np.maximum(runs[GATE_AUROC], 1.0 - runs[GATE_AUROC])})


def markdown_gates(table: pd.DataFrame) -> str:
    """Per configuration whose runs logged gate figures (`trainer.evaluation.gate_metrics`): gate
    AUROC for event vs empty kept frames (chance 0.5), its sign-free separation and the gate
    spread; "" when none did."""
    if not any(f"{c}_mean" in table for c in GATE_COLUMNS):
        return ""
    lines = [
        "| configuration | method | seeds | gate AUROC, event vs empty frames (chance 0.5) "
        "| sign-free: max(AUROC, 1 − AUROC) (≥ 0.5) | gate spread |",
        "|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        cells = [_pm(row, c, 3) for c in GATE_COLUMNS]
        if all(c == "–" for c in cells):
            continue
        lines.append(f"| `{row['label']}` | {row['method']} | {int(row['n'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pm(row: pd.Series, col: str, digits: int, std: bool = True) -> str:
    mean = row.get(f"{col}_mean", float("nan"))
    if mean is None or math.isnan(mean):
        return "–"
    if not std or row["n"] < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {row[f'{col}_std']:.{digits}f}"


def metric_title(col: str) -> str:
    """A quality column's name in tables and plots (``eval/cider`` → ``CIDEr``)."""
    names = {
        "eval/choice_acc_pct": "forced choice (%)",
        "eval/caption_sequence_exact_pct": "direction sequence exact (%)",
        "eval/cider": "CIDEr",
        "eval/t2v_r1_pct": "text→video R@1 (%)",
        "eval/v2t_r1_pct": "video→text R@1 (%)",
    }
    return names.get(col, col.removeprefix("eval/"))

"""Declared contrasts: paired differences a sweep file names besides its claims (ablations, controls).

A claim decides something and its p-values are Holm-adjusted together; a contrast only reports. The
sweep file lists them before the runs, each a comparison as the claims write them (parsed with the
rest of the file by `claims.load_comparison_spec`)::

    contrasts:
      gates_vs_constant:
        statement: the gates learn more than one scale per layer (order)
        treatment: methods-order-temporal_qlora
        baseline: temporal_controls-order-temporal_qlora_constant
        metric: caption_sequence_exact_pct        optional: the file's metric otherwise

Each one is paired over the seeds and clips both configurations scored (`claims.paired_difference`:
Δ in percentage points, 95% CI by the crossed seed × clip bootstrap, raw p). A contrast whose
configuration has not run (its stage of the sweep was not launched) is listed as not run, so that
one sweep file serves a partial comparison as well as the whole one.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from trainer.experiments.claims import Contrast, paired_difference


def contrast_table(table: pd.DataFrame, contrasts: list[Contrast]) -> pd.DataFrame:
    """One row per contrast: its paired Δ, CI, raw p and seeds × clips, or ``not_run`` naming what is
    missing. ``table``: the per-clip outcomes (`claims.per_clip_table`)."""
    rows: list[dict[str, Any]] = []
    for contrast in contrasts:
        row: dict[str, Any] = {
            "contrast": contrast.name,
            "statement": contrast.statement,
            "comparison": contrast.comparison.describe(),
        }
        try:
            row.update(paired_difference(table, contrast.comparison).to_dict())
        except ValueError as err:
            row["not_run"] = str(err)
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_contrasts(rows: pd.DataFrame) -> str:
    """The contrasts as GitHub markdown (percentage points, 95% CI, raw two-sided p)."""
    lines = [
        "| contrast | comparison | Δ (points) | 95% CI | p | seeds × clips |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows.to_dict("records"):
        head = f"| {row['statement']} | {row['comparison']} |"
        if isinstance(row.get("not_run"), str):
            lines.append(f"{head} not run | – | – | – |")
            continue
        lines.append(
            f"{head} {row['delta']:+.2f} | [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}] | "
            f"{row['p_value']:.3g} | {int(row['num_seeds'])} × {int(row['num_clips'])} |"
        )
    return "\n".join(lines) + "\n"

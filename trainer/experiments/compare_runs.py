"""Loading runs: an experiment's FINISHED runs read back from MLflow, one row each.

A run's configuration is its ``sweep.config_id`` tag, or for a run not made by a sweep the same
id computed from its params (`trainer.experiments.config_identity`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from trainer.experiments.config_identity import config_id, configuration

# The memory axis, the first one present: the method's training state at the 1b preset counted from
# its tensors (models.train_state); else the accelerator's allocator peak; else the process's peak
# RSS (on a tiny CPU model mostly the interpreter's).
MEMORY_METRICS = ("memory/analytic_1b_train_state_gib", "memory/peak_allocated_gib", "memory/peak_rss_gib")
MEMORY_TITLES = {
    "memory/analytic_1b_train_state_gib": "training state at 1b (GiB)",
    "memory/peak_allocated_gib": "peak allocated memory (GiB)",
    "memory/peak_rss_gib": "peak process RSS (GiB)",
}
STEP_TIME = "time/step_s"
FLOPS = "flops/per_step_tflop"
TRAINABLE = "model.trainable_params"
# What a LoRA-family run logs of its adapter (models.rank_allocation.allocation_metrics): LoRA
# parameters per tower, ranks per group, the budget; the latest value is the final allocation.
ALLOCATION_PREFIX = "allocation/"
LORA_PARAMS_PREFIX = ALLOCATION_PREFIX + "lora_params_"
BUDGET = ALLOCATION_PREFIX + "budget_params"
COMPARISON_TAG = "sweep.kind"


def load_runs(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """FINISHED runs of ``experiment`` (comparison runs excluded), one row each, with the figures compared.

    Columns: run_id, run_name, config_id, label, groups, seed, method, every ``eval/*`` metric,
    the memory metrics, ``time/step_s`` (the median over logged steps after the first, which holds
    the warm-up), ``flops/per_step_tflop``, ``model.trainable_params``, the ``allocation/*`` metrics
    and ``param.<key>`` for each ``sweep.param.<key>`` tag.
    """
    import mlflow

    from trainer.tracking import tracking_client

    client = tracking_client(tracking_uri)
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
            "config_id": tags.get("sweep.config_id") or config_id(params),
            "label": tags.get("sweep.label") or run.info.run_name,
            "groups": tags.get("sweep.groups", ""),
            "seed": as_number(params.get("seed", tags.get("sweep.seed"))),
            "method": params.get("adapter.method", tags.get("adapter.method", "")),
        }
        row.update(
            {
                k: v
                for k, v in metrics.items()
                if k.startswith(("eval/", ALLOCATION_PREFIX)) or k in MEMORY_METRICS or k == FLOPS
            }
        )
        row[STEP_TIME] = _steady_step_time(client, run.info.run_id) if STEP_TIME in metrics else np.nan
        row[TRAINABLE] = as_number(params.get(TRAINABLE))
        row.update(
            {f"param.{k[len('sweep.param.') :]}": v for k, v in tags.items() if k.startswith("sweep.param.")}
        )
        row.update({f"cfg.{k}": v for k, v in configuration(params).items()})
        rows.append(row)
    if not rows:
        raise SystemExit(f"experiment {experiment!r} at {tracking_uri} has no FINISHED runs to compare")
    return pd.DataFrame(rows).sort_values(["label", "seed"], kind="stable").reset_index(drop=True)


def _steady_step_time(client: Any, run_id: str) -> float:
    values = [m.value for m in sorted(client.get_metric_history(run_id, STEP_TIME), key=lambda m: m.step)]
    steady = values[1:] or values
    return float(np.median(steady)) if steady else float("nan")


def as_number(value: Any) -> float:
    """``value`` as a float; NaN for a missing or non-numeric one."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")

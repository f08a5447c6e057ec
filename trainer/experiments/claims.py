"""Pre-registered claims and paired differences: what a comparison decides, not only what it lists.

The sweep file declares, before any run (configs/synthvid/experiments.yaml)::

    metric: choice_acc_pct                  the per-clip figure differences are computed on
    baselines: {order: methods-order-qlora, ...}   per task (data.synthvid.task), the configuration
                                            every other one of that task is compared with
    claims:
      temporal:
        statement: temporal-aware QLoRA helps where time matters
        primary: {baseline: methods-order-qlora, treatment: methods-order-temporal_qlora}
        controls:                           must hold as well (each its own 95% CI)
          - {treatment: methods-order-temporal_qlora, metric: choice_acc_pct,
             baseline_metric: shuffled/choice_acc_pct}
        positive_control:                   can the benchmark show such an effect at all?
          {baseline: methods-order-frozen, treatment: methods-order-full}
    contrasts:                              reported, not decided (`contrasts`: ablations, controls)
      gates_vs_constant:
        statement: the gates learn more than one scale per layer (order)
        treatment: methods-order-temporal_qlora
        baseline: temporal_controls-order-temporal_qlora_constant

A comparison pairs two configurations (or two figures of one configuration) over the seeds both
ran and the clips both scored: per-clip outcomes come from each run's ``eval/per_clip_step<N>.json``
(`trainer.evaluation.set_scores`). The difference treatment − baseline gets a 95% CI and p-value by
the crossed seed × clip bootstrap (`statistics.paired_bootstrap`); the claims' primary p-values are
Holm-adjusted together; a claim is "supported" when its primary comparison is significant in the
declared direction (adjusted p < 0.05) and every control's CI excludes 0 on that side, "refuted"
when the primary is significant the other way, else "not supported".

A positive control is a difference the benchmark must show whatever the method under test does
(the most capable method against the zero-shot base on the claim's task; every event visible
against none). It does not change a verdict; a "not supported" whose positive control does not hold
says so in its reason, since then the benchmark could not have shown the claim either way.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from trainer.config import ConfigError
from trainer.experiments.statistics import PairedDifference, holm, paired_bootstrap, paired_table, verdict

ALPHA = 0.05


@dataclass(frozen=True)
class Comparison:
    """treatment − baseline on ``metric`` (the baseline on ``baseline_metric`` when given: two
    figures of one configuration, e.g. ordered vs shuffled frames)."""

    treatment: str
    baseline: str
    metric: str
    baseline_metric: str | None = None
    direction: str = "greater"

    def describe(self) -> str:
        if self.baseline_metric:
            return f"`{self.treatment}`: {self.metric} − {self.baseline_metric}"
        return f"`{self.treatment}` − `{self.baseline}` ({self.metric})"


@dataclass(frozen=True)
class Claim:
    name: str
    statement: str
    primary: Comparison
    controls: tuple[Comparison, ...] = ()
    positive_control: Comparison | None = None


@dataclass(frozen=True)
class Contrast:
    """A declared difference that is reported with its CI and raw p but decides nothing."""

    name: str
    statement: str
    comparison: Comparison


@dataclass
class ComparisonSpec:
    metric: str | None = None
    baselines: dict[str, str] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    contrasts: list[Contrast] = field(default_factory=list)


def load_comparison_spec(path: str | Path) -> ComparisonSpec:
    """The ``metric`` / ``baselines`` / ``claims`` / ``contrasts`` sections of a sweep file (all
    optional)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    metric = raw.get("metric")
    baselines = raw.get("baselines") or {}
    if not isinstance(baselines, dict):
        raise ConfigError(f"{path}: baselines must map a task to a configuration label")
    claims = []
    for name, body in (raw.get("claims") or {}).items():
        where = f"{path}: claims.{name}"
        if not isinstance(body, dict) or "primary" not in body:
            raise ConfigError(f"{where} needs a primary comparison")
        unknown = sorted(set(body) - {"statement", "primary", "controls", "positive_control"})
        if unknown:
            raise ConfigError(
                f"{where}: unknown keys {unknown}; valid: ['controls', 'positive_control', 'primary', 'statement']"
            )
        claims.append(
            Claim(
                name=str(name),
                statement=str(body.get("statement", name)),
                primary=comparison_from_yaml(body["primary"], metric, where + ".primary"),
                controls=tuple(
                    comparison_from_yaml(c, metric, f"{where}.controls[{i}]")
                    for i, c in enumerate(body.get("controls") or [])
                ),
                positive_control=(
                    comparison_from_yaml(body["positive_control"], metric, where + ".positive_control")
                    if body.get("positive_control") is not None
                    else None
                ),
            )
        )
    return ComparisonSpec(
        metric, {str(k): str(v) for k, v in baselines.items()}, claims, _contrasts(raw, metric, str(path))
    )


def _contrasts(raw: dict[str, Any], metric: str | None, path: str) -> list[Contrast]:
    section = raw.get("contrasts") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: contrasts must map a name to a comparison")
    contrasts = []
    for name, body in section.items():
        where = f"{path}: contrasts.{name}"
        if not isinstance(body, dict):
            raise ConfigError(f"{where} must be a mapping with a treatment")
        fields = {k: v for k, v in body.items() if k != "statement"}
        contrasts.append(
            Contrast(str(name), str(body.get("statement", name)), comparison_from_yaml(fields, metric, where))
        )
    return contrasts


def comparison_from_yaml(raw: Any, metric: str | None, where: str) -> Comparison:
    """One comparison of the sweep file (treatment, baseline and/or baseline_metric, metric, direction);
    ``where`` names it in errors."""
    known = {"treatment", "baseline", "metric", "baseline_metric", "direction"}
    if not isinstance(raw, dict) or "treatment" not in raw:
        raise ConfigError(f"{where} must be a mapping with a treatment")
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid: {sorted(known)}")
    if "baseline" not in raw and "baseline_metric" not in raw:
        raise ConfigError(f"{where} needs a baseline configuration or a baseline_metric")
    chosen = raw.get("metric", metric)
    if chosen is None:
        raise ConfigError(f"{where} names no metric and the sweep file has no default metric")
    direction = raw.get("direction", "greater")
    if direction not in ("greater", "less"):
        raise ConfigError(f"{where}: direction must be greater or less, got {direction!r}")
    return Comparison(
        treatment=str(raw["treatment"]),
        baseline=str(raw.get("baseline", raw["treatment"])),
        metric=str(chosen),
        baseline_metric=raw.get("baseline_metric"),
        direction=direction,
    )


def per_clip_table(tracking_uri: str, runs: pd.DataFrame) -> pd.DataFrame:
    """Long table [config (label), seed, clip, metric, value] of every run's final per-clip outcomes
    (runs without a per-clip file, made before it existed, are left out)."""
    from trainer.tracking import tracking_client

    client = tracking_client(tracking_uri)
    frames = []
    for run in runs.itertuples():
        files = [a.path for a in client.list_artifacts(run.run_id, "eval") if "per_clip_step" in a.path]
        if not files:
            continue
        final = max(files, key=lambda p: int(Path(p).stem.removeprefix("per_clip_step")))
        with tempfile.TemporaryDirectory() as tmp:
            outcomes = json.loads(Path(client.download_artifacts(run.run_id, final, tmp)).read_text())
        for metric, by_clip in outcomes.items():
            frames.append(
                pd.DataFrame(
                    {
                        "config": run.label,
                        "seed": run.seed,
                        "clip": list(by_clip),
                        "metric": metric,
                        "value": list(by_clip.values()),
                    }
                )
            )
    columns = ["config", "seed", "clip", "metric", "value"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def paired_difference(table: pd.DataFrame, comparison: Comparison, seed: int = 0) -> PairedDifference:
    """treatment − baseline of ``comparison`` over the seeds and clips both have (in percentage
    points: per-clip outcomes are fractions, scaled by 100 like the figures they average to)."""
    a = _values(table, comparison.baseline, comparison.baseline_metric or comparison.metric)
    b = _values(table, comparison.treatment, comparison.metric)
    both = pd.concat([a.assign(config="a"), b.assign(config="b")], ignore_index=True).dropna(subset=["value"])
    values_a, values_b = paired_table(both, "a", "b")
    return paired_bootstrap(100.0 * values_a, 100.0 * values_b, seed=seed)


def _values(table: pd.DataFrame, config: str, metric: str) -> pd.DataFrame:
    rows = table[(table["config"] == config) & (table["metric"] == metric)]
    if rows.empty:
        known = sorted(table.loc[table["metric"] == metric, "config"].unique())
        shown = ", ".join(known[:6]) + (f" and {len(known) - 6} more" if len(known) > 6 else "")
        raise ValueError(
            f"no per-clip {metric!r} for configuration {config!r} (configurations that have it: {shown or 'none'})"
        )
    return rows[["seed", "clip", "value"]]


def decide(table: pd.DataFrame, claims: list[Claim]) -> list[dict[str, Any]]:
    """Each claim's primary difference (Holm-adjusted over the claims), its controls and verdict.

    A comparison that cannot be made (a configuration did not run or logged no per-clip outcomes)
    leaves its claim "not decided" with the reason, rather than stopping the comparison.
    """
    results, p_values = [], {}
    for claim in claims:
        entry: dict[str, Any] = {"claim": claim.name, "statement": claim.statement}
        try:
            primary = paired_difference(table, claim.primary)
            controls = [paired_difference(table, c) for c in claim.controls]
            positive = claim.positive_control and paired_difference(table, claim.positive_control)
        except ValueError as err:
            results.append({**entry, "verdict": "not decided", "reason": str(err)})
            continue
        entry["primary"] = {"comparison": claim.primary.describe(), **primary.to_dict()}
        entry["controls"] = [
            {"comparison": c.describe(), **d.to_dict(), "holds": _excludes_zero(d, c.direction)}
            for c, d in zip(claim.controls, controls, strict=True)
        ]
        if positive:
            entry["positive_control"] = {
                "comparison": claim.positive_control.describe(),
                **positive.to_dict(),
                "holds": _excludes_zero(positive, claim.positive_control.direction),
            }
        entry["direction"] = claim.primary.direction
        p_values[claim.name] = primary.p_value
        results.append(entry)
    adjusted = holm(p_values) if p_values else {}
    for entry in results:
        if entry["claim"] not in adjusted:
            continue
        p = adjusted[entry["claim"]]
        entry["primary"]["p_adjusted"] = p
        outcome = verdict(entry["primary"]["delta"], p, alpha=ALPHA, direction=entry["direction"])
        if outcome == "supported" and not all(c["holds"] for c in entry["controls"]):
            outcome = "not supported"
            entry["reason"] = "a control does not hold: " + ", ".join(
                c["comparison"] for c in entry["controls"] if not c["holds"]
            )
        positive = entry.get("positive_control")
        if outcome == "not supported" and positive and not positive["holds"]:
            why = f"the positive control does not hold ({positive['comparison']}): the benchmark could not have shown it"
            entry["reason"] = "; ".join(filter(None, [entry.get("reason"), why]))
        entry["verdict"] = outcome
    return results


def _excludes_zero(d: PairedDifference, direction: str) -> bool:
    return d.ci_low > 0 if direction == "greater" else d.ci_high < 0


def deltas_vs_baselines(
    table: pd.DataFrame, runs: pd.DataFrame, baselines: dict[str, str], metric: str, split_key: str
) -> pd.DataFrame:
    """Every configuration's paired Δ of ``metric`` against its task's baseline (``split_key``'s value
    → baseline label), with CI and raw p; one row per configuration that has per-clip outcomes."""
    column = f"cfg.{split_key}"
    task_of = runs.groupby("label")[column].first() if column in runs else pd.Series(dtype=str)
    rows = []
    for label, task in task_of.items():
        baseline = baselines.get(str(task))
        if baseline is None or baseline == label:
            continue
        try:
            d = paired_difference(table, Comparison(treatment=label, baseline=baseline, metric=metric))
        except ValueError:
            continue
        rows.append({"configuration": label, "task": task, "baseline": baseline, **d.to_dict()})
    return pd.DataFrame(rows)


def markdown_deltas(deltas: pd.DataFrame, metric: str) -> str:
    """The Δ table as GitHub markdown (percentage points, 95% CI, raw two-sided p)."""
    lines = [
        f"| configuration | task | baseline | Δ {metric} (points) | 95% CI | p | seeds × clips |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in deltas.itertuples():
        lines.append(
            f"| `{row.configuration}` | {row.task} | `{row.baseline}` | {row.delta:+.2f} | "
            f"[{row.ci_low:+.2f}, {row.ci_high:+.2f}] | {row.p_value:.3g} | {row.num_seeds} × {row.num_clips} |"
        )
    return "\n".join(lines) + "\n"


def markdown_claims(results: list[dict[str, Any]]) -> str:
    """Each claim: primary comparison, Δ with CI, Holm-adjusted p, controls, positive control and verdict."""
    lines = [
        "| claim | primary comparison | Δ (points) | 95% CI | p (Holm) | controls | positive control | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "primary" not in r:
            lines.append(f"| {r['statement']} | – | – | – | – | – | – | **{r['verdict']}**: {r['reason']} |")
            continue
        p = r["primary"]
        controls = "; ".join(_control_text(c) for c in r["controls"])
        positive = _control_text(r["positive_control"]) if "positive_control" in r else "–"
        lines.append(
            f"| {r['statement']} | {p['comparison']} | {p['delta']:+.2f} | [{p['ci_low']:+.2f}, {p['ci_high']:+.2f}] | "
            f"{p['p_adjusted']:.3g} | {controls or '–'} | {positive} | **{r['verdict']}** |"
        )
    return "\n".join(lines) + "\n"


def _control_text(c: dict[str, Any]) -> str:
    held = "" if c["holds"] else " (does not hold)"
    return f"{c['comparison']}: {c['delta']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]{held}"


def summary_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """JSON-able copy (numpy scalars → floats)."""
    return json.loads(
        json.dumps(results, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
    )

"""Laws: quality against LoRA rank, fitted as ``q(r) = a - b * r**(-c)`` or ``q = a + b ln r``, with a
bootstrap band over the seeds of each rank (`rank_law_band`)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from trainer.experiments.compare_runs import as_number

# The exponent c of the power law is searched in this range.
C_BOUNDS = (1e-3, 10.0)


def power_law(r: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """q(r) = a - b * r**(-c): quality that saturates at ``a`` as the rank grows."""
    return a - b * np.power(r, -c)


def fit_rank_law(ranks: np.ndarray, quality: np.ndarray) -> dict[str, Any]:
    """Fit ``q(r) = a - b r^-c`` (scipy curve_fit) or, with < 3 distinct ranks, no convergence or
    c at a bound of its range, ``q = a + b ln r`` (least squares). ranks, quality: float [P] (one point per run)."""
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
                bounds=([-np.inf, -np.inf, C_BOUNDS[0]], [np.inf, np.inf, C_BOUNDS[1]]),
                maxfev=20000,
            )
            if not C_BOUNDS[0] * 1.01 < c < C_BOUNDS[1] * 0.99:
                # At a bound the exponent is not identified (flat or non-monotone quality): a = 24.8,
                # b = -5.9e8, c = 10 on SynthVid's flat rank series. The log-linear law says it plainly.
                raise ValueError(f"c = {c:.3g} at its bound {C_BOUNDS}: the power law is not identified")
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


def rank_law_band(
    ranks: np.ndarray,
    quality: np.ndarray,
    fit: dict[str, Any],
    grid: np.ndarray,
    num_resamples: int = 200,
    seed: int = 0,
    percentiles: tuple[float, float] = (2.5, 97.5),
) -> dict[str, Any]:
    """The spread of the fitted law over the seeds: resample each rank's runs with replacement, refit.

    Every resample keeps each rank's number of runs (so the design, hence which law is fitted,
    stays that of ``fit``) and draws them from that rank's runs: the band is what another draw of
    training seeds would have given. Resamples that
    fit another law (the power law not converging) are left out and counted.

    Args:
        ranks, quality: float [P], one point per run (as given to `fit_rank_law`).
        fit: `fit_rank_law`'s result on all the points.
        grid: float [G] ranks at which the curves are evaluated.
    Returns:
        {"resamples", "used", "percentiles", "params": {name: [low, high]}, "grid": [G] list,
        "low": [G] list, "high": [G] list}: the percentiles of the refitted parameters and of the
        refitted curves at each grid rank.
    """
    ranks, quality, grid = np.asarray(ranks, float), np.asarray(quality, float), np.asarray(grid, float)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(ranks == r) for r in np.unique(ranks)]
    curves, params = [], []
    for _ in range(num_resamples):
        pick = np.concatenate([rng.choice(idx, size=len(idx), replace=True) for idx in members])
        refit = fit_rank_law(ranks[pick], quality[pick])
        if refit["law"] != fit["law"]:
            continue
        curves.append(law_curve(refit, grid))
        params.append(refit["params"])
    band: dict[str, Any] = {
        "resamples": num_resamples,
        "used": len(curves),
        "percentiles": list(percentiles),
        "grid": grid.tolist(),
    }
    if not curves:
        return {**band, "params": {}, "low": None, "high": None}
    low, high = np.percentile(np.stack(curves), percentiles, axis=0)  # [G] each
    band["params"] = {
        name: np.percentile([p[name] for p in params], percentiles).tolist() for name in fit["params"]
    }
    return {**band, "low": low.tolist(), "high": high.tolist()}


def rank_series(runs: pd.DataFrame, rank_key: str, quality: str) -> pd.DataFrame | None:
    """The runs of the largest set of configurations that differ only in ``rank_key`` (>= 2 ranks).

    Configurations are compared through their full logged config (``cfg.*`` columns) with the rank
    key left out, and any param holding it (``adapter.ranks`` for ``adapter.ranks.llm``), and any
    column that differs between the runs of one configuration (``label``): a value derived from the
    seed, such as the path of the SynthVid shards a data seed wrote, would otherwise put every seed
    in a series of its own.
    """
    data = runs.dropna(subset=[quality]).copy()
    data["rank"] = [_config_value(row, rank_key) for _, row in data.iterrows()]
    data = data.dropna(subset=["rank"])
    if data.empty:
        return None
    per_seed = {
        c for c in data if c.startswith("cfg.") and data.groupby("label")[c].nunique(dropna=False).max() > 1
    }
    rest = [
        c
        for c in data
        if c.startswith("cfg.")
        and c not in per_seed
        and c[4:] != rank_key
        and not rank_key.startswith(c[4:] + ".")
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
    return as_number(value)

"""Statistics that can decide: is configuration B better than A, given seeds and clips?

Two configurations are evaluated on the same evaluation clips with the same training seeds, which
gives two float tables [S, C] (seed × clip) paired cell by cell. Their mean difference varies for
two reasons: another seed trains another model (seed variance), and other clips would have given
other scores (data variance). ``paired_bootstrap`` resamples both, ``holm`` adjusts the p-values of
several such claims for multiplicity, and ``verdict`` turns one claim into a word.

Bootstrap scheme (crossed, "pigeonhole" — Owen 2007, *The pigeonhole bootstrap*): each resample
draws S seeds with replacement and, independently, C clips with replacement, ONCE per resample and
shared by all drawn seeds, and averages the paired differences over the resampled grid. Seeds and
clips are crossed, not nested: clip c is the same clip under every seed, so a hard clip is hard
for every seed's model and its effect is common to the whole row set. Drawing clips anew for each
seed would treat that effect as independent across seeds and shrink its variance by a factor S,
giving a CI that is too narrow on the data side. With one draw per resample the bootstrap variance
is about var_seed / S + var_clip / C + (a conservative multiple of) var_noise / (S C).

Limits: the seed term is a bootstrap over only S values, so its variance is underestimated by
(S − 1) / S and its distribution is coarse (3 seeds give 10 distinct seed multisets); the CI is
meaningful on the data side with 3 seeds, on the seed side more so with 5 or more.

p-value (sign proportion): two-sided p = 2 · min(P*(δ* ≤ 0), P*(δ* ≥ 0)) over the bootstrap
distribution δ*, floored at 1 / (num_resamples + 1) because a finite bootstrap cannot show a
smaller one, and capped at 1. It is the p-value that agrees with the percentile CI: p < 1 − confidence
when, and (up to the quantile's interpolation between resamples) only when, the CI of the same
resamples excludes 0, so the verdict and the interval do not contradict each other. Resample differences exactly 0 count on both sides, which keeps a tie conservative.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

# Bootstrap resamples are evaluated in chunks of this many (resample × clip) cells at a time, so
# 10 000 resamples of 10 000 clips need ~200 MB of work arrays, not 800 MB.
_CHUNK_CELLS = 2**22

VERDICTS = ("supported", "refuted", "not supported")


@dataclass(frozen=True)
class PairedDifference:
    """The mean paired difference b − a with its bootstrap CI and two-sided p-value."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    confidence: float
    num_resamples: int
    num_seeds: int
    num_clips: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def paired_bootstrap(
    values_a: np.ndarray,
    values_b: np.ndarray,
    *,
    num_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedDifference:
    """Crossed seed × clip bootstrap of the mean difference ``values_b − values_a``.

    Args:
        values_a, values_b: float [S, C], one row per training seed and one column per evaluation
            clip, in the same order in both (row s of A and of B trained with the same seed,
            column c scored on the same clip). No NaN.
        num_resamples: bootstrap resamples B.
        seed: seed of the resampling generator (the result is a function of the inputs and it).
        confidence: two-sided coverage of the percentile CI, in (0, 1).
    Returns:
        ``PairedDifference`` with delta = mean over the [S, C] differences, the percentile CI of the
        resampled means and the sign-proportion p-value (module docstring).
    """
    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"values_a and values_b must both be [seeds, clips]; got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError(f"need at least one seed and one clip; got {a.shape}")
    for name, arr in (("values_a", a), ("values_b", b)):
        if np.isnan(arr).any():
            seeds, clips = np.nonzero(np.isnan(arr))
            raise ValueError(
                f"{name} holds NaN at (seed row, clip column) {list(zip(seeds.tolist(), clips.tolist(), strict=True))[:10]}; "
                "pair only cells both configurations have (paired_table)"
            )
    if not np.isfinite(a).all() or not np.isfinite(b).all():
        raise ValueError("values hold inf")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1; got {num_resamples}")

    diff = b - a  # [S, C]
    num_seeds, num_clips = diff.shape
    rng = np.random.default_rng(seed)
    # A draw of S seeds with replacement is, for the mean, its multiplicity vector: a multinomial
    # count per seed. The resampled mean is then n_seed @ diff @ n_clip / (S C), one matrix product
    # per chunk instead of gathering a [B, S, C] grid.
    chunk = max(1, _CHUNK_CELLS // max(num_seeds, num_clips))
    means = np.empty(num_resamples)
    for start in range(0, num_resamples, chunk):
        n = min(chunk, num_resamples - start)
        seed_counts = rng.multinomial(num_seeds, np.full(num_seeds, 1.0 / num_seeds), size=n)  # [n, S]
        clip_counts = rng.multinomial(num_clips, np.full(num_clips, 1.0 / num_clips), size=n)  # [n, C]
        means[start : start + n] = np.einsum("ns,sc,nc->n", seed_counts, diff, clip_counts, optimize=True)
    means /= num_seeds * num_clips

    tail = (1.0 - confidence) / 2.0
    ci_low, ci_high = np.quantile(means, [tail, 1.0 - tail])
    below, above = int((means <= 0).sum()), int((means >= 0).sum())
    p_value = min(1.0, max(2.0 * min(below, above) / num_resamples, 1.0 / (num_resamples + 1)))
    return PairedDifference(
        delta=float(diff.mean()),
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        p_value=float(p_value),
        confidence=float(confidence),
        num_resamples=int(num_resamples),
        num_seeds=int(num_seeds),
        num_clips=int(num_clips),
    )


def paired_table(
    runs: pd.DataFrame, config_a: str, config_b: str, value: str = "value"
) -> tuple[np.ndarray, np.ndarray]:
    """The two configurations' [S, C] tables from a long table, on the seeds and clips they share.

    Args:
        runs: one row per (config, seed, clip) with columns ``config``, ``seed``, ``clip`` and
            ``value`` (e.g. a per-clip CIDEr or a forced-choice 0/1).
        config_a, config_b: the two values of ``config`` to pair.
    Returns:
        (a, b), float [S, C] each: rows = the seeds both have (sorted), columns = the clips that
        both have under every kept seed (sorted), so that every cell is paired and no NaN remains.
    """
    missing_cols = [c for c in ("config", "seed", "clip", value) if c not in runs]
    if missing_cols:
        raise ValueError(f"runs lacks columns {missing_cols}; has {list(runs.columns)}")
    tables = {}
    for name in (config_a, config_b):
        rows = runs[runs["config"] == name]
        if rows.empty:
            raise ValueError(
                f"no rows for config {name!r}; configs present: {sorted(runs['config'].unique())}"
            )
        duplicated = rows.duplicated(["seed", "clip"])
        if duplicated.any():
            first = rows.loc[duplicated, ["seed", "clip"]].head(5).to_records(index=False).tolist()
            raise ValueError(f"config {name!r} has several values for (seed, clip) {first}")
        tables[name] = rows.pivot(index="seed", columns="clip", values=value)
    ta, tb = tables[config_a], tables[config_b]

    seeds = ta.index.intersection(tb.index).sort_values()
    if seeds.empty:
        raise ValueError(
            f"configs {config_a!r} and {config_b!r} share no seed: {config_a!r} has seeds "
            f"{ta.index.tolist()}, {config_b!r} has {tb.index.tolist()}"
        )
    clips = ta.columns.intersection(tb.columns).sort_values()
    # A clip is kept only if both configurations scored it under every shared seed: a hole in one
    # row would otherwise leave a NaN cell, i.e. an unpaired comparison.
    complete = ta.loc[seeds, clips].notna().all(axis=0) & tb.loc[seeds, clips].notna().all(axis=0)
    clips = clips[complete.to_numpy()]
    if clips.empty:
        only_a = ta.columns.difference(tb.columns).tolist()
        only_b = tb.columns.difference(ta.columns).tolist()
        raise ValueError(
            f"configs {config_a!r} and {config_b!r} share no clip scored under every shared seed "
            f"{seeds.tolist()}: clips only {config_a!r} has {only_a[:10]}, only {config_b!r} has {only_b[:10]}"
        )
    a = ta.loc[seeds, clips].to_numpy(dtype=np.float64)
    b = tb.loc[seeds, clips].to_numpy(dtype=np.float64)
    return a, b


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm–Bonferroni adjusted p-values (family-wise error), same keys as ``p_values``.

    The i-th smallest of m p-values is multiplied by (m − i + 1); a running maximum keeps the
    adjusted values in the raw order (a smaller raw p never gets a larger adjusted one), and they
    are capped at 1. Rejecting the claims with adjusted p < alpha controls the probability of any
    false rejection at alpha.
    """
    names = list(p_values)
    raw = np.array([float(p_values[n]) for n in names], dtype=np.float64)
    if np.isnan(raw).any() or (raw < 0).any() or (raw > 1).any():
        raise ValueError(f"p-values must be in [0, 1]; got {dict(zip(names, raw.tolist(), strict=True))}")
    m = raw.size
    order = np.argsort(raw, kind="stable")
    scaled = raw[order] * (m - np.arange(m))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return dict(zip(names, adjusted.tolist(), strict=True))


def verdict(
    difference: PairedDifference | float,
    alpha_adjusted_p: float,
    *,
    alpha: float = 0.05,
    direction: str = "greater",
) -> str:
    """The word for the claim "b is ``direction`` than a": supported, refuted or not supported.

    Args:
        difference: the ``PairedDifference`` (its delta is used) or the observed delta b − a.
        alpha_adjusted_p: the claim's p-value after multiplicity adjustment (``holm``).
        direction: "greater" (claim: b − a > 0) or "less" (claim: b − a < 0).
    Returns:
        "supported" when the difference lies on the claimed side and the adjusted p < alpha,
        "refuted" when it is significant on the other side, "not supported" otherwise (no
        significant difference, or delta exactly 0).
    """
    if direction not in ("greater", "less"):
        raise ValueError(f"direction must be 'greater' or 'less'; got {direction!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    delta = difference.delta if isinstance(difference, PairedDifference) else float(difference)
    if np.isnan(delta) or np.isnan(alpha_adjusted_p):
        raise ValueError(f"delta and p must be numbers; got {delta}, {alpha_adjusted_p}")
    if alpha_adjusted_p >= alpha or delta == 0:
        return "not supported"
    claimed_side = np.sign(delta) == (1 if direction == "greater" else -1)
    return "supported" if claimed_side else "refuted"

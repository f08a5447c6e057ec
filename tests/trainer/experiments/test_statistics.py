"""The paired bootstrap on simulated seed × clip tables with a known difference; Holm; verdicts."""

import numpy as np
import pandas as pd
import pytest

from trainer.experiments.statistics import PairedDifference, holm, paired_bootstrap, paired_table, verdict


def simulate(rng, num_seeds, num_clips, delta, *, seed_sd=0.2, clip_sd=1.0, noise_sd=1.0):
    """Two configurations on the same clips and seeds: shared seed and clip effects (which cancel
    in the difference), plus B's own seed and clip interaction effects and per-cell noise (which do
    not). The population mean of b − a is ``delta``."""
    shared = rng.normal(0, 1, (num_seeds, 1)) + rng.normal(0, 2, (1, num_clips))
    a = shared + rng.normal(0, noise_sd, (num_seeds, num_clips))
    b = (
        shared
        + delta
        + rng.normal(0, seed_sd, (num_seeds, 1))
        + rng.normal(0, clip_sd, (1, num_clips))
        + rng.normal(0, noise_sd, (num_seeds, num_clips))
    )
    return a, b


def test_ci_covers_the_true_difference_and_narrows_with_more_clips():
    rng = np.random.default_rng(0)
    widths = {}
    for num_clips in (25, 400):
        covered, width = 0, []
        for i in range(100):
            a, b = simulate(rng, 3, num_clips, 0.5)
            r = paired_bootstrap(a, b, num_resamples=2000, seed=i)
            covered += r.ci_low <= 0.5 <= r.ci_high
            width.append(r.ci_high - r.ci_low)
        assert covered >= 85, (num_clips, covered)
        widths[num_clips] = float(np.mean(width))
    # 16x the clips: the clip and noise terms shrink 4x in sd; the seed term stays.
    assert widths[400] < 0.6 * widths[25]


def test_no_true_difference_gives_spread_out_p_values():
    rng = np.random.default_rng(1)
    p = []
    for i in range(100):
        a, b = simulate(rng, 3, 60, 0.0)
        p.append(paired_bootstrap(a, b, num_resamples=1000, seed=i).p_value)
    p = np.array(p)
    assert (p < 0.05).mean() < 0.2
    assert np.median(p) > 0.25  # uniform-ish, not piled up near 0


def test_large_difference_is_at_the_floor_and_excludes_zero():
    a, b = simulate(np.random.default_rng(2), 3, 100, 5.0)
    r = paired_bootstrap(a, b, num_resamples=999, seed=0)
    assert r.p_value == pytest.approx(1 / 1000)
    assert 0 < r.ci_low < r.delta < r.ci_high
    assert r.delta == pytest.approx((b - a).mean())
    assert (r.num_seeds, r.num_clips, r.num_resamples) == (3, 100, 999)
    # Swapping the configurations mirrors the result.
    mirrored = paired_bootstrap(b, a, num_resamples=999, seed=0)
    assert mirrored.delta == pytest.approx(-r.delta)
    assert mirrored.ci_high == pytest.approx(-r.ci_low) and mirrored.ci_low == pytest.approx(-r.ci_high)


def test_identical_configurations_give_p_one_and_a_zero_interval():
    a = np.random.default_rng(3).normal(size=(3, 20))
    r = paired_bootstrap(a, a.copy(), num_resamples=200)
    assert r.delta == 0 and r.ci_low == 0 and r.ci_high == 0 and r.p_value == 1.0


def test_bootstrap_is_reproducible_and_depends_on_the_seed():
    a, b = simulate(np.random.default_rng(4), 3, 30, 0.2)
    first, again = paired_bootstrap(a, b, seed=7), paired_bootstrap(a, b, seed=7)
    assert first == again
    assert paired_bootstrap(a, b, seed=8).ci_low != first.ci_low


def test_seed_and_clip_variance_are_both_in_the_interval():
    # Every clip agrees exactly within a seed, so all the spread is between seeds: a bootstrap over
    # clips alone would give a zero-width interval.
    diff = np.array([[1.0] * 50, [2.0] * 50, [3.0] * 50])
    r = paired_bootstrap(np.zeros_like(diff), diff, num_resamples=4000)
    assert r.ci_low < 1.7 and r.ci_high > 2.3
    # All spread between clips, the same under every seed: one clip draw shared by the seeds keeps
    # its full variance.
    per_clip = np.tile(np.linspace(0, 4, 50), (3, 1))
    r = paired_bootstrap(np.zeros_like(per_clip), per_clip, num_resamples=4000)
    assert r.ci_low < 1.75 and r.ci_high > 2.25  # clips drawn per seed would give about [1.81, 2.19]


def test_to_dict_has_every_field():
    r = paired_bootstrap(np.zeros((2, 3)), np.ones((2, 3)), num_resamples=10)
    d = r.to_dict()
    assert d["delta"] == 1.0 and d["num_seeds"] == 2 and d["num_clips"] == 3
    assert set(d) == {
        "delta",
        "ci_low",
        "ci_high",
        "p_value",
        "confidence",
        "num_resamples",
        "num_seeds",
        "num_clips",
    }


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="must both be"):
        paired_bootstrap(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="must both be"):
        paired_bootstrap(np.zeros(4), np.zeros(4))
    b = np.zeros((3, 4))
    b[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"values_b holds NaN at .*\(1, 2\)"):
        paired_bootstrap(np.zeros((3, 4)), b)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(np.zeros((3, 4)), np.zeros((3, 4)), confidence=95)


def long_table(config, seeds, clips, fn):
    return pd.DataFrame(
        [{"config": config, "seed": s, "clip": c, "value": fn(s, c)} for s in seeds for c in clips]
    )


def test_paired_table_keeps_the_shared_seeds_and_clips():
    runs = pd.concat(
        [
            long_table("a", [0, 1, 2], ["x", "y", "z"], lambda s, c: s),
            long_table("b", [2, 1, 3], ["z", "y", "w"], lambda s, c: 10 * s + ord(c)),
        ]
    )
    runs = runs[~((runs["config"] == "a") & (runs["seed"] == 2) & (runs["clip"] == "y"))]  # a hole
    a, b = paired_table(runs, "a", "b")
    # Seeds 1, 2 shared; clips y, z shared, but a lacks (seed 2, clip y), so only z is paired.
    np.testing.assert_array_equal(a, [[1.0], [2.0]])
    np.testing.assert_array_equal(b, [[10 + ord("z")], [20 + ord("z")]])


def test_paired_table_names_what_is_missing():
    runs = pd.concat(
        [long_table("a", [0, 1], ["x"], lambda s, c: 0.0), long_table("b", [5], ["x"], lambda s, c: 1.0)]
    )
    with pytest.raises(ValueError, match=r"share no seed: 'a' has seeds \[0, 1\], 'b' has \[5\]"):
        paired_table(runs, "a", "b")
    runs = pd.concat(
        [long_table("a", [0], ["x"], lambda s, c: 0.0), long_table("b", [0], ["y"], lambda s, c: 1.0)]
    )
    with pytest.raises(ValueError, match=r"clips only 'a' has \['x'\], only 'b' has \['y'\]"):
        paired_table(runs, "a", "b")
    with pytest.raises(ValueError, match="no rows for config 'c'"):
        paired_table(runs, "a", "c")
    with pytest.raises(ValueError, match="lacks columns"):
        paired_table(runs.rename(columns={"clip": "video"}), "a", "b")
    with pytest.raises(ValueError, match="several values"):
        paired_table(pd.concat([runs, runs]), "a", "b")


def test_paired_table_feeds_the_bootstrap():
    runs = pd.concat(
        [
            long_table("base", range(3), range(40), lambda s, c: 0.1 * c),
            long_table("new", range(3), range(40), lambda s, c: 0.1 * c + 1.0),
        ]
    )
    r = paired_bootstrap(*paired_table(runs, "base", "new"), num_resamples=500)
    assert r.delta == pytest.approx(1.0) and r.p_value == pytest.approx(1 / 501)


def test_holm_by_hand():
    # Sorted: 0.01 × 3 = 0.03, 0.03 × 2 = 0.06, 0.04 × 1 = 0.04 → running max 0.06.
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    assert list(adjusted) == ["a", "b", "c"]
    assert holm({"x": 0.4, "y": 0.5}) == pytest.approx({"x": 0.8, "y": 0.8})
    assert holm({}) == {}


def test_holm_is_monotone_capped_and_never_below_raw():
    raw = dict(zip("abcdefghij", np.random.default_rng(5).uniform(0, 0.3, 10), strict=True))
    adjusted = holm(raw)
    order = sorted(raw, key=raw.get)
    assert all(adjusted[x] <= adjusted[y] for x, y in zip(order[:-1], order[1:], strict=True))
    assert all(raw[k] <= adjusted[k] <= 1.0 for k in raw)
    assert holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm({"a": 1.5})


def test_verdicts():
    better = PairedDifference(1.2, 0.4, 2.0, 0.001, 0.95, 1000, 3, 50)
    assert verdict(better, 0.01) == "supported"
    assert verdict(better, 0.01, direction="less") == "refuted"
    assert verdict(better, 0.2) == "not supported"  # significant before adjustment only
    assert verdict(better, 0.05) == "not supported"  # p must be strictly below alpha
    assert verdict(better, 0.05, alpha=0.1) == "supported"
    assert verdict(-0.3, 0.001) == "refuted"
    assert verdict(-0.3, 0.001, direction="less") == "supported"
    assert verdict(0.0, 0.001) == "not supported"
    with pytest.raises(ValueError, match="direction"):
        verdict(better, 0.01, direction="two-sided")

"""The least-squares fit behind scaling's per-frame and per-sample slopes."""

from __future__ import annotations

import pytest

from benchmarks.scaling import fit_line


def test_fit_recovers_a_line_and_scores_the_noise() -> None:
    exact = fit_line([2, 4, 8, 16], [0.5 + 0.25 * k for k in (2, 4, 8, 16)])
    assert exact["slope"] == pytest.approx(0.25)
    assert exact["intercept"] == pytest.approx(0.5)
    assert exact["r2"] == pytest.approx(1.0)
    noisy = fit_line([1, 2, 4, 8], [1.0, 3.0, 2.0, 9.0])
    assert 0.0 < noisy["r2"] < 0.95
    assert fit_line([1, 2, 3], [5.0, 5.0, 5.0]) == pytest.approx({"slope": 0.0, "intercept": 5.0, "r2": 1.0})

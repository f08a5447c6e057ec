"""What benchmarks.threads makes of its runs: the order they take turns in, steady step times, ratios."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from benchmarks.report import GOALS, render_goals
from benchmarks.threads import DROPPED_ENV, child_env, run_order, steady_step_s, summarize


def test_rounds_rotate_so_every_variant_runs_in_every_position():
    order = run_order(["a", "b", "c"], 3)
    assert [v for _, v in order] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert [r for r, _ in order] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    positions = {v: {i % 3 for i, (_, w) in enumerate(order) if w == v} for v in "abc"}
    assert positions == {"a": {0, 1, 2}, "b": {0, 1, 2}, "c": {0, 1, 2}}
    assert Counter(v for _, v in run_order(["a", "b", "c"], 4)) == {"a": 4, "b": 4, "c": 4}


def test_steady_step_time_leaves_out_warm_up_and_a_stall():
    times = {1: 9.0, 2: 3.0, 3: 0.10, 4: 0.11, 5: 2.5, 6: 0.09, 7: 0.10}
    assert steady_step_s(times, skip=2) == pytest.approx(0.10)
    assert steady_step_s(times, skip=0) == pytest.approx(0.11)
    with pytest.raises(ValueError, match="no steps after the first 7"):
        steady_step_s(times, skip=7)


def _run(variant: str, round_: int, step_s: float, threads: int | None = None) -> dict:
    # Step 1 is slow (FLOP counting) in every run; it must not reach the figures.
    return {
        "variant": variant,
        "round": round_,
        "step_times": {1: 5.0, **{s: step_s for s in range(2, 12)}},
        "wall_s": 30.0,
        "threads": threads,
        "source": None if threads is None else "auto" if variant == "default" else "env",
    }


def test_summarize_takes_medians_over_rounds_and_the_best_pinned_count():
    runs = [
        _run("threads_2", 1, 0.110, 2),
        _run("threads_1", 0, 0.080, 1),
        _run("threads_2", 0, 0.100, 2),
        _run("default", 0, 0.082, 1),
        _run("threads_1", 1, 0.076, 1),
        _run("default", 1, 0.079, 1),
        _run("threads_1", 2, 0.300, 1),  # a disturbed round: the median keeps it out
        _run("threads_2", 2, 0.105, 2),
        _run("default", 2, 0.081, 1),
    ]
    figures, ratios = summarize(runs, skip=1)
    assert figures["threads_1_step_s"] == pytest.approx(0.080)
    assert figures["threads_2_step_s"] == pytest.approx(0.105)
    assert figures["default_step_s"] == pytest.approx(0.081)
    assert figures["threads_1_run_step_s"] == pytest.approx([0.080, 0.076, 0.300])  # round order
    assert figures["threads_2_logged_threads"] == [2, 2, 2]
    assert figures["default_logged_source"] == ["auto", "auto", "auto"]
    assert figures["threads_1_logged_source"] == ["env", "env", "env"]
    assert figures["best_pinned"] == "threads_1"
    assert ratios == pytest.approx(
        {"default_over_best": 0.081 / 0.080, "threads_2_over_threads_1": 0.105 / 0.080}
    )


def test_the_best_pinned_count_can_be_two():
    runs = [_run("threads_1", 0, 0.2), _run("threads_2", 0, 0.1), _run("default", 0, 0.2)]
    figures, ratios = summarize(runs, skip=1)
    assert figures["best_pinned"] == "threads_2"
    assert ratios["default_over_best"] == pytest.approx(2.0)
    assert figures["default_logged_threads"] == [None]  # a trainer that logs no thread count
    assert figures["default_logged_source"] == [None]


def test_summarize_needs_every_variant():
    with pytest.raises(ValueError, match="no runs of default"):
        summarize([_run("threads_1", 0, 0.1), _run("threads_2", 0, 0.1)], skip=1)


def test_child_env_pins_only_what_it_is_asked_and_drops_inherited_counts(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("RANK", "3")
    default = child_env("cpu", None, "env")
    assert not set(DROPPED_ENV) & set(default)
    assert default["DS_ACCELERATOR"] == "cpu" and default["PATH"] == os.environ["PATH"]
    assert child_env("cpu", 2, "env")["OMP_NUM_THREADS"] == "2"
    assert "OMP_NUM_THREADS" not in child_env("cpu", 2, "config")  # pinned by train.num_threads instead
    assert child_env("cuda:0", None, "env")["DS_ACCELERATOR"] == "cuda"


def test_the_goal_is_listed_in_the_readme_table():
    goal = next(g for g in GOALS if g.benchmark == "threads")
    assert (goal.ratio, goal.at_most) == ("default_over_best", 1.05)
    result = {"benchmark": "threads", "machine": {"device": "cpu"}, "ratios": {"default_over_best": 1.02}}
    table = render_goals([result])
    assert "`threads` `default_over_best` | ≤ 1.05 | 1.02 ✓" in table
    result["ratios"]["default_over_best"] = 1.3
    assert "1.3 ✗" in render_goals([result])

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from data.frame_selector import POLICIES
from data.observability import (
    FRAME_SIZE,
    PATCH_PX,
    default_tasks,
    event_counts,
    kept_displacement,
    main,
    observability,
    recoverable,
)
from data.synthvid import TASKS, generate_clip
from data.video_io import uniform_indices
from trainer.config import SynthVidConfig

ROOT = Path(__file__).resolve().parents[2]

# Two events in a 14-frame clip: frames 2..5 (shape hidden in frame 5) and 9..10.
EVENTS = [{"start": 2, "end": 5, "direction": "up"}, {"start": 9, "end": 10, "direction": "left"}]
VISIBLE = [False, False, True, True, True, False, False, False, False, True, True, False, False, False]


def test_two_distinct_frames_inside_the_window_recover_the_direction():
    assert recoverable([3, 4], EVENTS, VISIBLE).tolist() == [True, False]
    assert recoverable([0, 9, 10, 13], EVENTS, VISIBLE).tolist() == [False, True]
    kept, distinct = event_counts([2, 3, 4, 9], EVENTS, VISIBLE)
    assert kept.tolist() == [3, 1] and distinct.tolist() == [3, 1]


def test_one_frame_inside_the_window_does_not():
    assert recoverable([3], EVENTS, VISIBLE).tolist() == [False, False]
    assert recoverable([1, 3, 6, 8, 11], EVENTS, VISIBLE).tolist() == [False, False]  # neighbours outside


def test_two_candidates_showing_the_same_source_frame_do_not():
    kept, distinct = event_counts([3, 3, 10, 10], EVENTS, VISIBLE)
    assert kept.tolist() == [2, 2] and distinct.tolist() == [1, 1]
    assert not recoverable([3, 3, 10, 10], EVENTS, VISIBLE).any()


def test_frames_where_the_shape_is_hidden_do_not_count():
    # 4 and 5 are both inside the first window, but the shape is not visible in 5
    assert recoverable([4, 5], EVENTS, VISIBLE).tolist() == [False, False]
    assert event_counts([4, 5], EVENTS, VISIBLE)[0].tolist() == [1, 0]


def _events_with_two_candidates(task: str, n: int, num_clips: int) -> float:
    """Reference: share of events whose window holds >= 2 distinct visible candidate source frames."""
    hits = []
    for index in range(num_clips):
        _, _, truth = generate_clip(index, seed=0, task=task, size=FRAME_SIZE)
        sources = uniform_indices(len(truth["visible"]), n)
        for event in truth["events"]:
            inside = {int(s) for s in sources if event["start"] <= s <= event["end"] and truth["visible"][s]}
            hits.append(len(inside) >= 2)
    return float(np.mean(hits))


def test_uniform_with_k_equal_n_recovers_every_event_whose_window_holds_two_candidates():
    task = default_tasks()[0]
    report = observability([task], (8, 16), (8, 16), ("uniform",), num_clips=6, progress=False)
    for n in (8, 16):
        expected = _events_with_two_candidates(task, n, 6)
        (row,) = [r for r in report["rows"] if r["n"] == n and r["k"] == n]
        (ceiling,) = [c for c in report["ceilings"] if c["n"] == n]
        assert row["events_recoverable"] == pytest.approx(expected)
        assert ceiling["events_recoverable"] == pytest.approx(expected)
    # Fewer candidates than source frames skip frames, so at N = 8 some short windows hold only one.
    assert _events_with_two_candidates(task, 8, 6) < 1.0


def test_report_has_every_row_with_k_at_most_n_and_fractions_in_range():
    tasks = default_tasks()[:2]
    report = observability(tasks, (4, 8), (2, 4, 8, 16), num_clips=3, progress=False)
    keys = [(r["task"], r["n"], r["policy"], r["k"]) for r in report["rows"]]
    expected = [
        (t, n, p, k) for t in tasks for n in (4, 8) for p in POLICIES for k in (2, 4, 8, 16) if k <= n
    ]
    assert sorted(keys) == sorted(expected) and len(keys) == len(set(keys))
    for row in report["rows"]:
        assert 0.0 <= row["events_recoverable"] <= 1.0 and 0.0 <= row["clips_all_recoverable"] <= 1.0
        assert row["clips_all_recoverable"] <= row["events_recoverable"] + 1e-9  # all events ⇒ each event
        assert 0.0 <= row["mean_kept_in_event"] <= row["k"]
        assert row["median_displacement_px"] >= 0.0 and 0.0 <= row["events_displaced_a_patch"] <= 1.0
    assert json.loads(json.dumps(report)) == report  # JSON-able as is


def test_random_policies_are_deterministic():
    first, second = (
        observability(default_tasks()[:1], (16,), (4, 8), ("random", "headtail"), num_clips=3, progress=False)
        for _ in range(2)
    )
    assert first["rows"] == second["rows"]


def test_kept_displacement_is_how_far_the_shape_moves_between_the_outermost_kept_frames():
    positions = [None] * 14
    positions[2:5] = [(10.0, 40.0), (10.0, 30.0), (10.0, 20.0)]  # moving up, hidden in frame 5
    positions[9:11] = [(50.0, 20.0), (44.0, 28.0)]
    # event 1 seen in frames 2 and 4 (3 in between is not needed), event 2 in one frame only
    assert kept_displacement([4, 2, 9, 0], EVENTS, VISIBLE, positions).tolist() == [20.0, 0.0]
    # the hidden frame 5 inside the window does not count; frames 9 and 10: a 6-8-10 triangle
    assert kept_displacement([3, 5, 9, 10], EVENTS, VISIBLE, positions).tolist() == [0.0, 10.0]


def test_patch_is_the_tiny_presets():
    from models.presets import PRESETS

    assert PRESETS["tiny"]["vision_config"]["patch_size"] == PATCH_PX


def test_default_tasks_are_the_ones_with_events_shorter_than_the_clip():
    tasks = default_tasks()
    assert tasks and set(tasks) <= set(TASKS) and "pretrain" not in tasks
    for task in tasks:
        _, _, truth = generate_clip(1, seed=0, task=task, size=FRAME_SIZE)
        assert any(e["end"] - e["start"] + 1 < len(truth["visible"]) for e in truth["events"])


@pytest.mark.parametrize("name", ["pretrain", "finetune"])
def test_frame_size_is_the_synthvid_configs(name):
    data = yaml.safe_load((ROOT / "configs" / "synthvid" / f"{name}.yaml").read_text())["data"]
    assert data["frame_size"] == FRAME_SIZE
    assert (data.get("synthvid") or {}).get("size", SynthVidConfig.size) == FRAME_SIZE


def test_cli_writes_json_and_png(tmp_path, capsys):
    out = tmp_path / "nested" / "observability"
    main(["--out", str(out), "--num", "3", "--n", "16", "--k", "2", "4"])
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["settings"]["candidate_counts"] == [16] and report["settings"]["ks"] == [2, 4]
    assert len(report["rows"]) == len(report["settings"]["tasks"]) * len(POLICIES) * 2
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "uniform" in capsys.readouterr().out


def test_a_task_without_events_is_refused():
    eventless = [
        task for task in TASKS if not generate_clip(0, seed=0, task=task, size=FRAME_SIZE)[2]["events"]
    ]
    if not eventless:
        pytest.skip(f"every task of {TASKS} has events")
    with pytest.raises(ValueError, match="no events"):
        observability(eventless[:1], (8,), (2,), num_clips=1, progress=False)

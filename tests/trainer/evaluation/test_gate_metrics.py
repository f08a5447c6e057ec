"""Gate AUROC and spread over evaluation clips, from SynthVid's event ground truth."""

import math

import numpy as np
import pytest

from data.synthvid import generate_clip
from data.video_io import uniform_indices
from trainer.evaluation.clip_results import ClipResult
from trainer.evaluation.gate_metrics import auroc, event_frame_labels, gate_set_scores

# 16 source frames, one event on frames 4-7 whose shape is visible on 5-7 only.
META = {
    "events": [{"start": 4, "end": 7, "direction": "up"}],
    "visible": [False] * 5 + [True] * 3 + [False] * 8,
}


def test_event_frames_are_kept_candidates_inside_a_visible_event():
    # 8 candidates of 16 source frames show frames 1, 3, 5, ..., 15.
    assert uniform_indices(16, 8).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    labels = event_frame_labels(META, [0, 2, 3, 4], num_candidates=8)  # sources 1, 5, 7, 9
    assert labels.tolist() == [False, True, True, False]
    assert event_frame_labels({"events": [], "visible": [True] * 16}, [0, 1], 8) is None  # dense
    assert event_frame_labels({}, [0, 1], 8) is None  # no ground truth


def test_event_labels_follow_the_generators_truth():
    _, _, truth = generate_clip(0, seed=0, task="sparse", size=32, num_frames=32)
    labels = event_frame_labels(truth, list(range(32)), num_candidates=32)  # every source frame
    event = truth["events"][0]
    expected = [event["start"] <= t <= event["end"] and truth["visible"][t] for t in range(32)]
    assert labels.tolist() == expected and 0 < sum(expected) < 32


def test_auroc_ranks_event_frames_against_empty_ones():
    labels = np.array([True, True, False, False, False])
    assert auroc(np.array([0.9, 0.8, 0.1, 0.2, 0.3]), labels) == 1.0
    assert auroc(np.array([0.1, 0.2, 0.9, 0.8, 0.7]), labels) == 0.0
    assert auroc(np.full(5, 0.5), labels) == 0.5  # ties count half
    assert auroc(np.array([0.9, 0.2, 0.5, 0.1, 0.3]), labels) == pytest.approx(4 / 6)
    assert math.isnan(auroc(np.ones(3), np.ones(3, dtype=bool)))


def _clip(gates, selected, meta):
    return ClipResult(prediction="", references=[], selected=selected, gates=gates, meta=meta)


def test_gate_set_scores_pool_the_clips_with_events():
    clips = {
        # A gate that opens on event frames and one that does the opposite.
        "a": _clip({"l0": [0.1, 0.9, 0.8, 0.2], "l1": [0.6, 0.4, 0.4, 0.6]}, [0, 2, 3, 4], META),
        "b": _clip({"l0": [0.3, 0.7, 0.2, 0.2], "l1": [0.5, 0.5, 0.5, 0.5]}, [1, 2, 5, 6], META),
        # No events (dense): counted in the spread only.
        "c": _clip({"l0": [0.0, 1.0, 0.0, 1.0], "l1": [0.5, 0.5, 0.5, 0.5]}, [0, 1, 2, 3], {"events": []}),
    }
    out = gate_set_scores(clips, num_candidates=8)
    assert out.scores["gate_auroc/l0"] == 1.0 and out.scores["gate_auroc/l1"] == pytest.approx(1.5 / 15)
    assert 0.5 < out.scores["gate_auroc"] <= 1.0 and out.chance == {"gate_auroc": 0.5}
    spreads = [np.std(c.gates[name]) for c in clips.values() for name in ("l0", "l1")]
    assert out.scores["gate_spread"] == pytest.approx(np.mean(spreads))
    # Without gates (not a temporal adapter) there is nothing to score; without events no AUROC.
    assert gate_set_scores({"x": _clip({}, [0, 1], META)}, 8).scores == {}
    assert set(gate_set_scores({"c": clips["c"]}, 8).scores) == {"gate_spread"}

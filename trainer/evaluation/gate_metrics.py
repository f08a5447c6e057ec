"""Do the temporal gates find the events? Gate AUROC and spread over the evaluation set.

SynthVid's ground truth (`data.synthvid`: "events" with inclusive start / end source frames, and
"visible" per source frame) says which kept frame shows an event: its source frame lies inside an
event's window and the event's shape is visible there. Evaluation decodes N candidates uniformly
over the clip (`data.video_io.uniform_indices`, what `decode_frames` does without a sample rate),
so kept candidate j shows source frame uniform_indices(T, N)[j].

    gate_auroc                AUROC of the layer-mean gate for event vs empty kept frames, pooled
                              over the clips that have events (chance 0.5: the gate says nothing);
                              the probability that a random event frame gets a higher gate than a
                              random empty one (ties count half), Mann-Whitney U / (n_event n_empty)
    gate_auroc/<layer>        the same for one gated layer
    gate_spread               std of a layer's gates over a clip's frames, mean over clips and layers
                              (0: a gate constant within every clip)

Pooled over the clips with events (sparse, order, retrieval), because what the claim needs is
that a gate value marks event frames; clips without events (pretrain, dense, shift) have no
ground truth for it and are left out of the AUROC, not of the spread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu

from data.video_io import uniform_indices
from trainer.evaluation.clip_results import ClipResult
from trainer.evaluation.set_scores import SetScores


def event_frame_labels(
    meta: Mapping[str, Any], selected: Sequence[int], num_candidates: int
) -> np.ndarray | None:
    """bool [K]: whether each kept candidate shows an event (see the module docstring); None when the
    sample has no event ground truth (no "events" / "visible", or no events at all)."""
    events, visible = meta.get("events"), meta.get("visible")
    if not events or visible is None:
        return None
    sources = uniform_indices(len(visible), num_candidates)[np.asarray(selected, dtype=np.int64)]  # [K]
    starts = np.array([e["start"] for e in events])[:, None]  # [E, 1]
    ends = np.array([e["end"] for e in events])[:, None]
    inside = ((sources[None] >= starts) & (sources[None] <= ends)).any(axis=0)  # [K]
    return inside & np.asarray(visible, dtype=bool)[sources]


def auroc(values: np.ndarray, labels: np.ndarray) -> float:
    """AUROC of `values` float [n] for bool `labels` [n] (ties count half); NaN without both classes."""
    positive, negative = values[labels], values[~labels]
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    u = mannwhitneyu(positive, negative, alternative="two-sided").statistic
    return float(u / (positive.size * negative.size))


def gate_set_scores(clips: Mapping[str, ClipResult], num_candidates: int) -> SetScores:
    """gate_auroc (overall and per layer, chance 0.5) and gate_spread over the clips that hold gates;
    empty without gates, and no AUROC without event ground truth.

    Args:
        clips: evaluation clips; each with `gates` (layer → K gates), `selected` and `meta`.
        num_candidates: N, the candidates the selector chose from (`data.num_candidate_frames`).
    """
    gated = [c for c in clips.values() if c.gates]
    out = SetScores()
    if not gated:
        return out
    layers = list(gated[0].gates)
    per_layer = {
        name: np.array([c.gates[name] for c in gated], dtype=np.float64) for name in layers
    }  # [C, K]
    out.scores["gate_spread"] = float(np.mean([g.std(axis=1).mean() for g in per_layer.values()]))
    labelled = [(i, event_frame_labels(c.meta, c.selected, num_candidates)) for i, c in enumerate(gated)]
    labelled = [(i, labels) for i, labels in labelled if labels is not None]
    if not labelled:
        return out
    rows = [i for i, _ in labelled]
    labels = np.concatenate([labels for _, labels in labelled])
    mean_gate = np.mean([per_layer[name][rows] for name in layers], axis=0).reshape(-1)
    value = auroc(mean_gate, labels)
    if np.isnan(value):
        return out
    out.scores["gate_auroc"], out.chance["gate_auroc"] = value, 0.5
    for name in layers:
        out.scores[f"gate_auroc/{name}"] = auroc(per_layer[name][rows].reshape(-1), labels)
    return out

"""SynthVid captions scored by what they state, not by their n-grams.

A SynthVid caption follows a grammar (`data.synthvid_grammar`): count, colour, shape and, for the
temporal tasks, a sequence of directions. CIDEr weighs the appearance words that every caption
shares as heavily as the directions that only a temporal model gets right, so each generated
caption is parsed back into those facts and compared with the clip's ground truth:

    caption_parse_pct            the generation is inside the grammar at all
    caption_count/color/shape_acc_pct, caption_attributes_acc_pct (all three right)
    caption_direction_acc_pct    per event: the direction stated at the event's place in the
                                 sequence is the event's (a missing one is wrong); temporal tasks only
    caption_sequence_exact_pct   the whole direction sequence, in order; temporal tasks only
    caption_exact_pct            every fact right

A generation outside the grammar is wrong on every fact (never skipped: skipping would raise the
score). Each figure comes with its chance level under uniform guessing over the grammar's values
(`chance`): 1/3 counts, 1/6 colours, 1/3 shapes, 1/4 directions; a sequence of E events 1/(4·3^(E-1))
(no direction twice in a row). Per-clip values (1, 0, or NaN where a figure does not apply) pair runs
clip by clip (`trainer.experiments.statistics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from data.synthvid_grammar import (
    COLOR_WORDS,
    COUNT_WORDS,
    DIRECTION_PHRASES,
    SHAPES,
    CaptionFacts,
    facts_of,
    parse_caption,
)

FIGURES = (
    "caption_parse_pct",
    "caption_count_acc_pct",
    "caption_color_acc_pct",
    "caption_shape_acc_pct",
    "caption_attributes_acc_pct",
    "caption_direction_acc_pct",
    "caption_sequence_exact_pct",
    "caption_exact_pct",
)


def has_ground_truth(meta: Mapping[str, Any]) -> bool:
    """Whether a sample's json holds SynthVid ground truth (what these metrics need)."""
    return all(key in meta for key in ("task", "shape", "color", "count", "directions"))


def clip_scores(prediction: str, truth: CaptionFacts) -> dict[str, float]:
    """One clip's figures (1.0 right, 0.0 wrong, NaN not applicable), keyed like `FIGURES`."""
    said = parse_caption(prediction)
    temporal = bool(truth.directions)
    scores = dict.fromkeys(FIGURES, 0.0)
    scores["caption_direction_acc_pct"] = scores["caption_sequence_exact_pct"] = 0.0 if temporal else np.nan
    if said is None:
        return scores
    scores["caption_parse_pct"] = 1.0
    scores["caption_count_acc_pct"] = float(said.count == truth.count)
    scores["caption_color_acc_pct"] = float(said.color == truth.color)
    scores["caption_shape_acc_pct"] = float(said.shape == truth.shape)
    scores["caption_attributes_acc_pct"] = float(
        (said.count, said.color, said.shape) == (truth.count, truth.color, truth.shape)
    )
    if temporal:
        placed = zip(said.directions, truth.directions, strict=False)
        scores["caption_direction_acc_pct"] = sum(a == b for a, b in placed) / len(truth.directions)
        scores["caption_sequence_exact_pct"] = float(said.directions == truth.directions)
    scores["caption_exact_pct"] = float(said == truth)
    return scores


def chance(truth: CaptionFacts) -> dict[str, float]:
    """Each figure's probability of being right by guessing uniformly over the grammar (NaN where
    the figure does not apply; parse 1: a guess from the grammar always parses)."""
    attributes = 1 / (len(COUNT_WORDS) * len(COLOR_WORDS) * len(SHAPES))
    directions = len(DIRECTION_PHRASES)
    events = len(truth.directions)
    sequence = 1 / (directions * (directions - 1) ** (events - 1)) if events else np.nan
    return {
        "caption_parse_pct": 1.0,
        "caption_count_acc_pct": 1 / len(COUNT_WORDS),
        "caption_color_acc_pct": 1 / len(COLOR_WORDS),
        "caption_shape_acc_pct": 1 / len(SHAPES),
        "caption_attributes_acc_pct": attributes,
        "caption_direction_acc_pct": 1 / directions if events else np.nan,
        "caption_sequence_exact_pct": sequence,
        "caption_exact_pct": attributes * (sequence if events else 1.0),
    }


def structured_scores(
    predictions: Mapping[str, str], metas: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, float], dict[str, float], dict[str, dict[str, float]]]:
    """The figures over the clips that have ground truth.

    Args:
        predictions: clip key → generated caption.
        metas: clip key → the sample's json (clips without SynthVid ground truth are left out).
    Returns:
        (scores: figure → percentage over the clips it applies to, chance: figure → chance
        percentage, per_clip: figure → {key: 1.0 / 0.0 / NaN}); all empty without ground truth.
    """
    keys = [k for k in predictions if has_ground_truth(metas.get(k, {}))]
    if not keys:
        return {}, {}, {}
    truths = {k: facts_of(metas[k]) for k in keys}
    rows = {k: clip_scores(predictions[k], truths[k]) for k in keys}
    guesses = [chance(truths[k]) for k in keys]
    scores, levels, per_clip = {}, {}, {}
    for name in FIGURES:
        values = np.array([rows[k][name] for k in keys])
        if np.isnan(values).all():
            continue  # a figure of temporal tasks on appearance-only clips
        scores[name] = 100.0 * float(np.nanmean(values))
        levels[name] = 100.0 * float(np.nanmean([g[name] for g in guesses]))
        per_clip[name] = {k: rows[k][name] for k in keys}
    return scores, levels, per_clip

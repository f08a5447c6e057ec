"""The forced-choice sets of SynthVid: the true caption of a clip and CHOICE_SET_SIZE - 1 distractors.

A forced choice is only worth its chance level if a scorer that ignores the clip's tested content
earns exactly that chance. That holds when the choice sets are *exchangeable*: given the set, each
member was equally likely to be the truth. So the distractors are drawn the way the generator
draws the truth (`data.synthvid`): uniformly from the captions it could have written for this clip
with everything the task does not test held fixed, without replacement.

    task        what varies among the candidates       drawn from
    pretrain    the direction                          the 4 directions (the set is all of them)
    motion      the direction                          the 4 directions
    sparse      the direction                          the 4 directions
    order       the direction sequence                 order_sequences(number of events)
    retrieval   the direction pair                     retrieval_sequences(the clip's variant)
    dense       count, colour and shape                every count x colour x shape
    shift       count and the (shape, colour) pair     the split's pairs (HELD_OUT at eval / test)

Hand-picked "hard" distractors (the order reversed, one direction flipped) are not exchangeable:
on 3000 generated `order` clips, fixed preferences that never look at a clip scored 15-27% against
them (tests/data/test_synthvid_choices.py holds such scorers to 25 +- 4%). Retrieval groups keep those hard negatives for the within-group test
(trainer/evaluation/set_scores.py); forced choice asks the closed-set question with a known
chance. Whether a shift model falls back to a training combination is read from its generations
(attribute and pair accuracy): its eval clips only show held-out pairs, so only those are drawn.

The draw is seeded by the clip's ground truth, so the same clip always gets the same set, in every
process and after a round trip through the shard's json.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

import numpy as np

from data.synthvid import HELD_OUT, TRAIN_PAIRS, order_sequences, retrieval_sequences
from data.synthvid_grammar import (
    CHOICE_SET_SIZE,
    COLOR_WORDS,
    COUNT_WORDS,
    DIRECTION_PHRASES,
    SHAPES,
    CaptionFacts,
    caption,
    event_sequences,
    facts_of,
)

# The fields of a ground truth that name one clip: its seed for the draw.
_CLIP_FIELDS = ("task", "split", "variant", "group", "count", "color", "shape", "directions", "radius", "positions")


def _clip_rng(truth: dict[str, Any]) -> np.random.Generator:
    """A generator seeded by the clip's ground truth (stable across processes and json round trips)."""
    canonical = json.dumps({k: truth.get(k) for k in _CLIP_FIELDS}, sort_keys=True, default=list)
    digest = hashlib.sha256(canonical.encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _sequences(truth: dict[str, Any], length: int) -> list[tuple[str, ...]]:
    """The direction sequences the generator could have drawn for an event clip of `length` events."""
    if truth.get("task") == "retrieval" and length == 2:
        return retrieval_sequences(str(truth.get("variant", "anchor")))
    if truth.get("task") == "order":
        return order_sequences(length)
    return [seq for seq in event_sequences() if len(seq) == length]


def candidate_facts(truth: dict[str, Any]) -> list[CaptionFacts]:
    """Every caption's facts the generator could have drawn for this clip, the task's untested facts
    held fixed (the truth among them unless it is off the generator's support, as hand-built
    palindromes are)."""
    facts = facts_of(truth)
    if len(facts.directions) == 1:
        return [CaptionFacts(facts.count, facts.color, facts.shape, (d,)) for d in DIRECTION_PHRASES]
    if facts.directions:
        return [
            CaptionFacts(facts.count, facts.color, facts.shape, seq)
            for seq in _sequences(truth, len(facts.directions))
        ]
    if truth.get("task") == "shift":
        pairs = TRAIN_PAIRS if truth.get("split") == "train" else HELD_OUT
    else:
        pairs = tuple(itertools.product(SHAPES, COLOR_WORDS))
    return [CaptionFacts(count, color, shape) for count in COUNT_WORDS for shape, color in pairs]


def choice_set(truth: dict[str, Any]) -> list[str]:
    """The closed set of CHOICE_SET_SIZE distinct captions for a forced choice on one clip: the true
    caption first, then CHOICE_SET_SIZE - 1 distractors drawn without replacement from
    `candidate_facts(truth)` (in a seeded random order).

    Raises:
        ValueError: the truth's facts are outside the grammar.
    """
    true_caption = caption(facts_of(truth))  # raises ValueError for facts outside the grammar
    others = [c for c in map(caption, candidate_facts(truth)) if c != true_caption]  # distinct facts
    need = CHOICE_SET_SIZE - 1
    if len(others) < need:
        raise ValueError(f"only {len(others)} other captions for {true_caption!r}; a choice set needs {need}")
    picks = _clip_rng(truth).choice(len(others), size=need, replace=False)
    return [true_caption, *(others[int(i)] for i in picks)]

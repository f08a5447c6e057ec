"""The SynthVid caption grammar: its words, the facts a caption states, and the way back from text.

A caption states a count, a colour, a shape and 0-3 motion directions, in exactly one wording::

    appearance   "<count> <colour> <noun>"                          "two red circles"
    motion       "<count> <colour> <noun> <verb> <phrase>"          "a red circle moves up"
    events       "a <colour> <shape> moves <phrase> and then ..."   "a blue square moves up and then
                                                                     from right to left"

<count> is "a", "two" or "three"; the noun is plural and the verb "move" above one object. Several
events (2 or 3 phrases joined by "and then") are said of one object only, and never the same
direction twice in a row: the grammar is exactly `caption_corpus()`, the captions the tasks of
`data.synthvid` produce (and the tiny tokenizer is trained on).

`parse_caption` reads a caption back into `CaptionFacts` (None for any text outside the grammar)
and `facts_of` reads them from a sample's ground truth. The forced-choice sets of CHOICE_SET_SIZE
captions (chance CHOICE_CHANCE) are built from these by `data.synthvid_choices`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
# The colour words; data.synthvid.COLORS gives each its RGB value, in this order.
COLOR_WORDS = ("red", "green", "blue", "yellow", "purple", "white")
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
# Direction names (image coordinates: "up" is towards row 0) and how captions say them.
DIRECTION_PHRASES = {"right": "from left to right", "left": "from right to left", "up": "up", "down": "down"}
OPPOSITE = {"right": "left", "left": "right", "up": "down", "down": "up"}
MAX_EVENTS = 3
CHOICE_SET_SIZE = 4
CHOICE_CHANCE = 1 / CHOICE_SET_SIZE

_JOIN = ("and", "then")
_COUNT_OF = {word: count for count, word in COUNT_WORDS.items()}
_SINGULAR_OF = {plural: shape for shape, plural in PLURALS.items()}
# Phrase tokens → direction, longest first so that "from left to right" is never read as a prefix.
_PHRASES = sorted(
    ((tuple(phrase.split()), name) for name, phrase in DIRECTION_PHRASES.items()), key=lambda p: -len(p[0])
)


@dataclass(frozen=True)
class CaptionFacts:
    """What one caption states. `directions` is in time order; empty for an appearance caption."""

    count: int
    color: str
    shape: str
    directions: tuple[str, ...] = ()


def _grammar_error(facts: CaptionFacts) -> str | None:
    """Why `facts` has no caption in the grammar, or None when it has one."""
    if facts.count not in COUNT_WORDS:
        return f"count {facts.count!r} is not one of {sorted(COUNT_WORDS)}"
    if facts.color not in COLOR_WORDS:
        return f"colour {facts.color!r} is not one of {COLOR_WORDS}"
    if facts.shape not in SHAPES:
        return f"shape {facts.shape!r} is not one of {SHAPES}"
    if any(d not in DIRECTION_PHRASES for d in facts.directions):
        return f"directions {facts.directions!r} are not all in {tuple(DIRECTION_PHRASES)}"
    if len(facts.directions) > MAX_EVENTS:
        return f"{len(facts.directions)} directions: at most {MAX_EVENTS}"
    if len(facts.directions) > 1 and facts.count != 1:
        return "a sequence of events is said of one object only"
    if any(a == b for a, b in itertools.pairwise(facts.directions)):
        return f"directions {facts.directions!r} repeat one direction twice in a row"
    return None


def caption(facts: CaptionFacts) -> str:
    """The one caption of `facts`.

    Raises:
        ValueError: `facts` is outside the grammar (an unknown word, more than MAX_EVENTS
            directions, events of several objects, a direction twice in a row).
    """
    error = _grammar_error(facts)
    if error is not None:
        raise ValueError(f"no SynthVid caption for {facts}: {error}")
    noun = facts.shape if facts.count == 1 else PLURALS[facts.shape]
    text = f"{COUNT_WORDS[facts.count]} {facts.color} {noun}"
    if not facts.directions:
        return text
    verb = "moves" if facts.count == 1 else "move"
    return f"{text} {verb} " + " and then ".join(DIRECTION_PHRASES[d] for d in facts.directions)


def facts_of(truth: dict[str, Any]) -> CaptionFacts:
    """The facts the caption of a sample states, from its ground-truth json (data.synthvid)."""
    return CaptionFacts(
        count=int(truth["count"]),
        color=str(truth["color"]),
        shape=str(truth["shape"]),
        directions=tuple(truth["directions"]),
    )


def _parse_directions(tokens: list[str]) -> tuple[str, ...] | None:
    """Phrase tokens ("up and then from right to left") → directions, None if they are not that."""
    directions: list[str] = []
    i = 0
    while True:
        match = next((name for words, name in _PHRASES if tuple(tokens[i : i + len(words)]) == words), None)
        if match is None:
            return None
        directions.append(match)
        i += len(DIRECTION_PHRASES[match].split())
        if i == len(tokens):
            return tuple(directions)
        if tuple(tokens[i : i + 2]) != _JOIN:
            return None
        i += 2


def parse_caption(text: str) -> CaptionFacts | None:
    """The facts `text` states, or None when it is not a caption of the grammar.

    Case, surrounding whitespace, runs of spaces and one trailing period are tolerated; anything
    else outside the grammar (a wrong word or number agreement, a repeated direction, a missing or
    trailing word) gives None. Never raises, whatever the input.
    """
    if not isinstance(text, str):
        return None
    text = text.strip().lower()
    if text.endswith("."):
        text = text[:-1]
    tokens = text.split()
    if len(tokens) < 3 or tokens[0] not in _COUNT_OF or tokens[1] not in COLOR_WORDS:
        return None
    count, color, noun = _COUNT_OF[tokens[0]], tokens[1], tokens[2]
    shape = noun if count == 1 else _SINGULAR_OF.get(noun)
    if shape not in SHAPES:  # also a plural noun after "a", or a singular one after "two"
        return None
    directions: tuple[str, ...] = ()
    if len(tokens) > 3:
        if tokens[3] != ("moves" if count == 1 else "move"):
            return None
        parsed = _parse_directions(tokens[4:])
        if parsed is None:
            return None
        directions = parsed
    facts = CaptionFacts(count, color, shape, directions)
    return facts if _grammar_error(facts) is None else None


def event_sequences() -> list[tuple[str, ...]]:
    """Every sequence of 2..MAX_EVENTS directions without the same direction twice in a row."""
    return [
        seq
        for length in range(2, MAX_EVENTS + 1)
        for seq in itertools.product(DIRECTION_PHRASES, repeat=length)
        if all(a != b for a, b in itertools.pairwise(seq))
    ]


def caption_corpus() -> list[str]:
    """Every caption of the grammar, in a fixed order: the tiny tokenizer's corpus.

    One direction (pretrain, sparse) for any count, then sequences of events of one object
    (order, retrieval), then appearance (dense, shift) for any count.
    """
    single = [
        caption(CaptionFacts(count, color, shape, (d,)))
        for count, shape, color, d in itertools.product(COUNT_WORDS, SHAPES, COLOR_WORDS, DIRECTION_PHRASES)
    ]
    events = [
        caption(CaptionFacts(1, color, shape, seq))
        for shape, color, seq in itertools.product(SHAPES, COLOR_WORDS, event_sequences())
    ]
    appearance = [
        caption(CaptionFacts(count, color, shape))
        for count, shape, color in itertools.product(COUNT_WORDS, SHAPES, COLOR_WORDS)
    ]
    return single + events + appearance


VOCABULARY: list[str] = sorted({word for sentence in caption_corpus() for word in sentence.split()})

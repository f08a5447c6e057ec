"""The caption grammar: captions and facts round-trip, and text outside the grammar is None."""

import random

import pytest

from data.synthvid import TASKS, generate_clip
from data.synthvid_grammar import (
    VOCABULARY,
    CaptionFacts,
    caption,
    caption_corpus,
    facts_of,
    parse_caption,
)


def test_every_corpus_caption_parses_back_to_the_facts_it_was_built_from():
    corpus = caption_corpus()
    parsed = [parse_caption(c) for c in corpus]
    assert all(isinstance(f, CaptionFacts) for f in parsed)
    assert [caption(f) for f in parsed] == corpus
    assert len(set(parsed)) == len(corpus)  # distinct captions, distinct facts
    # The corpus holds every kind: appearance, one direction for every count, 2 and 3 events.
    kinds = {(f.count, len(f.directions)) for f in parsed}
    assert kinds == {(c, 0) for c in (1, 2, 3)} | {(c, 1) for c in (1, 2, 3)} | {(1, 2), (1, 3)}


def test_caption_wording():
    assert caption(CaptionFacts(2, "red", "circle")) == "two red circles"
    assert caption(CaptionFacts(1, "red", "circle")) == "a red circle"
    assert caption(CaptionFacts(1, "red", "circle", ("up",))) == "a red circle moves up"
    assert caption(CaptionFacts(3, "green", "triangle", ("down",))) == "three green triangles move down"
    assert (
        caption(CaptionFacts(1, "blue", "square", ("up", "left")))
        == "a blue square moves up and then from right to left"
    )


@pytest.mark.parametrize(
    "facts",
    [
        CaptionFacts(4, "red", "circle"),
        CaptionFacts(1, "pink", "circle"),
        CaptionFacts(1, "red", "star"),
        CaptionFacts(1, "red", "circle", ("sideways",)),
        CaptionFacts(1, "red", "circle", ("up", "up")),
        CaptionFacts(2, "red", "circle", ("up", "down")),
        CaptionFacts(1, "red", "circle", ("up", "down", "up", "down")),
    ],
)
def test_facts_outside_the_grammar_have_no_caption(facts):
    with pytest.raises(ValueError, match="no SynthVid caption"):
        caption(facts)


def test_parse_tolerates_case_whitespace_and_a_period():
    expected = CaptionFacts(1, "blue", "square", ("up", "left"))
    for text in (
        "a blue square moves up and then from right to left",
        "  A Blue SQUARE moves up and then from RIGHT to left.  ",
        "a blue square moves up  and then\tfrom right to left.",
    ):
        assert parse_caption(text) == expected, text
    assert parse_caption("Two red circles.") == CaptionFacts(2, "red", "circle")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        ".",
        "a",
        "a red",
        "two red circle",  # number agreement
        "a red circles",
        "a red circle move up",
        "two red circles moves up",
        "a crimson circle moves up",
        "a red circle moves",
        "a red circle moves up and then up",  # a repeated direction
        "a red circle moves up and then",
        "a red circle moves up and down",
        "a red circle moves up then down",
        "a red circle moves from left to up",
        "a red circle moves up extra",  # trailing garbage
        "a red circle moves up..",
        "two red circles move up and then down",  # events of several objects
        "a red circle moves up and then down and then up and then down",  # four events
        "red circle",
        "a red circle a red circle",
        "zero red circles",
    ],
)
def test_text_outside_the_grammar_is_none(text):
    assert parse_caption(text) is None


def test_parse_never_raises_on_fuzzed_word_sequences():
    rng = random.Random(0)
    words = [*VOCABULARY, ".", "moves.", "and", "then", "from", "x", "", "Red", "TWO"]
    corpus = set(caption_corpus())
    for _ in range(5000):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 14)))
        facts = parse_caption(text)
        if facts is not None:
            # Whatever it accepts is a corpus caption, spelled as the grammar spells it.
            assert caption(facts) in corpus and caption(facts) == " ".join(text.lower().rstrip(".").split())
    # Mutations of real captions: a word dropped, swapped or repeated is rejected or still valid.
    for text in rng.sample(sorted(corpus), 300):
        tokens = text.split()
        i = rng.randrange(len(tokens))
        for mutated in (
            tokens[:i] + tokens[i + 1 :],
            tokens + [tokens[i]],
            tokens[:i] + ["circle"] + tokens[i:],
        ):
            facts = parse_caption(" ".join(mutated))
            assert facts is None or caption(facts) == " ".join(mutated)
    for odd in ("\x00", "a red\x00circle", "🙂", "a red circle moves up" * 50, None, 3, b"a red circle"):
        assert parse_caption(odd) is None  # type: ignore[arg-type]


def test_parse_reads_randomly_decorated_corpus_captions():
    rng = random.Random(1)
    for text in rng.sample(caption_corpus(), 300):
        words = [w.upper() if rng.random() < 0.3 else w for w in text.split()]
        gaps = [rng.choice([" ", "  ", "\t"]) for _ in words[1:]]
        decorated = words[0] + "".join(g + w for g, w in zip(gaps, words[1:], strict=True))
        decorated = rng.choice(["", " ", "\n"]) + decorated + rng.choice(["", ".", " .", " "])
        facts = parse_caption(decorated)
        assert facts is not None and caption(facts) == text, decorated


@pytest.mark.parametrize("task", TASKS)
def test_every_generated_caption_parses_to_its_ground_truth(task):
    for i in range(30):
        _, text, truth = generate_clip(i, seed=5, task=task, size=16, num_frames=32)
        assert parse_caption(text) == facts_of(truth)
        assert caption(facts_of(truth)) == text


def test_facts_of_reads_the_ground_truth():
    truth = {"task": "order", "count": 1, "color": "blue", "shape": "square", "directions": ["up", "left"]}
    assert facts_of(truth) == CaptionFacts(1, "blue", "square", ("up", "left"))
    assert facts_of({**truth, "directions": []}).directions == ()

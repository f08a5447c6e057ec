"""Forced-choice sets: four distinct grammar captions, truth first, distractors that vary only what
the task tests, drawn from the generator's own support, so that a scorer blind to the tested facts
earns exactly chance (exchangeable sets)."""

import collections
import json
import random

import pytest
from scipy.stats import chisquare

from data.synthvid import HELD_OUT, TASKS, TRAIN_PAIRS, generate_clip
from data.synthvid_choices import candidate_facts, choice_set
from data.synthvid_grammar import (
    CHOICE_CHANCE,
    CHOICE_SET_SIZE,
    caption,
    caption_corpus,
    facts_of,
    parse_caption,
)

# (task, split): shift's eval clips show only held-out pairs, its training clips never do.
STREAMS = [(task, "eval") for task in TASKS] + [("shift", "train")]
TESTED = {
    "pretrain": {"directions"},
    "motion": {"directions"},
    "sparse": {"directions"},
    "order": {"directions"},
    "retrieval": {"directions"},
    "dense": {"count", "color", "shape"},
    "shift": {"count", "color", "shape"},
}


def _truths(task: str, split: str, n: int) -> list[dict]:
    return [generate_clip(i, seed=11, task=task, size=16, num_frames=32, split=split)[2] for i in range(n)]


@pytest.fixture(scope="module")
def many_truths() -> dict[tuple[str, str], list[dict]]:
    """3000 clips' ground truths per stream: enough for a chance level to within about 1 point."""
    return {stream: _truths(*stream, n=3000) for stream in STREAMS}


def _differences(a, b) -> set[str]:
    return {name for name in ("count", "color", "shape", "directions") if getattr(a, name) != getattr(b, name)}


@pytest.mark.parametrize(("task", "split"), STREAMS)
def test_choice_sets_are_four_distinct_grammar_captions_truth_first(task, split):
    assert CHOICE_SET_SIZE == 4 and CHOICE_CHANCE == 0.25
    corpus = set(caption_corpus())
    for truth in _truths(task, split, 60):
        choices = choice_set(truth)
        assert choices == choice_set(json.loads(json.dumps(truth)))  # the same after the shard's json
        assert len(choices) == CHOICE_SET_SIZE == len(set(choices))
        assert choices[0] == caption(facts_of(truth))
        assert all(parse_caption(c) is not None for c in choices) and set(choices) <= corpus


@pytest.mark.parametrize(("task", "split"), STREAMS)
def test_distractors_vary_only_what_the_task_tests(task, split):
    for truth in _truths(task, split, 60):
        true, *others = [parse_caption(c) for c in choice_set(truth)]
        for other in others:
            assert _differences(true, other) <= TESTED[task]
            assert len(other.directions) == len(true.directions)
            if task == "shift":
                assert ((other.shape, other.color) in HELD_OUT) == (split != "train")
                assert ((other.shape, other.color) in TRAIN_PAIRS) == (split == "train")


def test_the_draw_differs_from_clip_to_clip():
    """Seeded per clip, not one fixed set per caption: two clips with the same caption differ."""
    by_caption = collections.defaultdict(set)
    for truth in _truths("order", "eval", 400):
        by_caption[caption(facts_of(truth))].add(tuple(choice_set(truth)))
    assert max(len(sets) for sets in by_caption.values()) > 1


@pytest.mark.parametrize(("task", "split"), STREAMS)
def test_candidates_are_the_generators_support_each_equally_likely(task, split, many_truths):
    """What the distractors are drawn from is what the generator draws the truth from, uniformly:
    the condition for exchangeable sets. Checked per stratum of the untested facts."""
    strata = collections.defaultdict(collections.Counter)
    for truth in many_truths[(task, split)]:
        facts = facts_of(truth)
        support = candidate_facts(truth)
        assert facts in support
        untested = {k: v for k, v in vars(facts).items() if k not in TESTED[task]}
        stratum = (json.dumps(untested, sort_keys=True), truth.get("variant"), len(facts.directions))
        tested = tuple(getattr(facts, k) for k in sorted(TESTED[task]))
        strata[stratum, len(support)][tested] += 1
    for (_, size), counts in strata.items():
        if sum(counts.values()) < 5 * size:  # too few clips in this stratum to test uniformity
            continue
        observed = list(counts.values()) + [0] * (size - len(counts))
        assert chisquare(observed).pvalue > 1e-4, (task, size, counts)


def _scorers(rng: random.Random) -> dict[str, dict[str, float]]:
    """Fixed preferences over the whole corpus that do not look at any clip: 40 random orders, and
    structured ones that hand-picked distractors reward or punish (the first direction "up", the
    alphabetical caption, the shortest caption)."""
    corpus = caption_corpus()
    scorers = {f"random-{i}": {c: rng.random() for c in corpus} for i in range(40)}
    scorers["up-first"] = {c: (parse_caption(c).directions[:1] == ("up",)) + rng.random() / 2 for c in corpus}
    scorers["alphabetical"] = {c: -i for i, c in enumerate(sorted(corpus))}
    scorers["shortest"] = {c: -len(c) + rng.random() / 2 for c in corpus}
    return scorers


@pytest.mark.parametrize(("task", "split"), STREAMS)
def test_a_scorer_blind_to_the_clip_earns_chance(task, split, many_truths):
    """Averaged over the generator's clips, every fixed preference picks the truth 1/4 of the time
    (hand-picked hard negatives on `order` gave 8% to 36% for such preferences)."""
    sets = [choice_set(truth) for truth in many_truths[(task, split)]]
    accuracies = {}
    for name, score in _scorers(random.Random(0)).items():
        hits = [max(choices, key=score.__getitem__) == choices[0] for choices in sets]
        accuracies[name] = 100 * sum(hits) / len(hits)
    far = {name: round(acc, 1) for name, acc in accuracies.items() if abs(acc - 100 * CHOICE_CHANCE) > 4}
    assert not far, far
    mean = sum(accuracies.values()) / len(accuracies)
    assert abs(mean - 100 * CHOICE_CHANCE) < 1.5, mean


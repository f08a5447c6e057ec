"""Caption scoring: equal to pycocoevalcap's scorers run by hand, empty generations, bad input."""

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from trainer.evaluation.caption_metrics import score_captions

REFS = {
    "v1": [
        "a red circle moves from left to right",
        "a red ball rolls to the right",
        "red circle moving right",
    ],
    "v2": ["a blue square moves up", "a blue box goes up."],
    "v3": ["two green triangles move down", "green triangles fall"],
    "v4": ["a white circle moves up and then from right to left"],
}
PREDS = {
    "v1": "a red circle moves to the right",
    "v2": "a blue square moves down",
    "v3": "two green triangles move down",
    "v4": "a white square moves up",
}


def reference_scores(preds, refs):
    """pycocoevalcap's own pipeline, step by step as its COCOEvalCap does it (SPICE left out)."""
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": preds[k]}] for k in refs})
    bleu, _ = Bleu(4).compute_score(gts, res)
    return {
        **{f"bleu{i + 1}": b for i, b in enumerate(bleu)},
        "meteor": Meteor().compute_score(gts, res)[0],
        "rouge_l": Rouge().compute_score(gts, res)[0],
        "cider": Cider().compute_score(gts, res)[0],
    }


@pytest.fixture(scope="module")
def full():
    return score_captions(PREDS, REFS)


def test_scores_equal_pycocoevalcap_with_several_references(full):
    ours = full
    assert ours == pytest.approx(reference_scores(PREDS, REFS), abs=1e-9)
    assert 0 < ours["bleu4"] < 1 and ours["cider"] > 0


def test_empty_generations_score_zero_without_a_crash(full):
    empty = score_captions({k: "" for k in REFS}, REFS)
    assert set(empty) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"}
    assert all(v == 0.0 for v in empty.values())
    # Mixed: "." tokenizes to nothing as well; the others still count, the empties pull the mean down.
    mixed_preds = {**PREDS, "v2": "", "v4": "."}
    mixed = score_captions(mixed_preds, REFS)
    assert mixed == pytest.approx(reference_scores(mixed_preds, REFS), abs=1e-9)
    assert 0 < mixed["cider"] < full["cider"] and 0 < mixed["rouge_l"] < full["rouge_l"]


def test_missing_and_extra_ids_are_named():
    with pytest.raises(
        ValueError, match=r"missing predictions for \['v2', 'v4'\].*without references \['x9'\]"
    ):
        score_captions({"v1": "a", "v3": "b", "x9": "c"}, REFS)
    with pytest.raises(ValueError, match=r"without any non-empty reference caption: \['v2'\]"):
        score_captions(PREDS, {**REFS, "v2": [" "]})


def test_java_missing_names_meteor_the_tokenizer_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no java on it
    with pytest.raises(RuntimeError) as err:
        score_captions(PREDS, REFS)
    message = str(err.value)
    assert "METEOR" in message and "PTB tokenizer" in message and "apt-get install" in message


def test_meteor_can_be_left_out(full):
    without = score_captions(PREDS, REFS, meteor=False)
    assert "meteor" not in without
    assert without == pytest.approx({k: v for k, v in full.items() if k != "meteor"})

import pytest

from trainer.evaluation.caption_metrics import score_captions

REFS = {
    "v1": ["a red circle moves left", "a red ball moves to the left"],
    "v2": ["a blue square moves up"],
    "v3": ["two green triangles move down"],
}


def test_perfect_and_wrong_captions():
    perfect = score_captions({k: v[0] for k, v in REFS.items()}, REFS)
    assert perfect["bleu4"] > 0.99 and perfect["rouge_l"] > 0.99 and perfect["meteor"] > 0.9
    wrong = score_captions(
        {"v1": "a yellow square moves up", "v2": "two red circles move down", "v3": "a blue circle"}, REFS
    )
    assert wrong["cider"] < perfect["cider"] / 3
    assert wrong["bleu4"] < 0.1


def test_missing_predictions_are_named():
    with pytest.raises(ValueError, match="missing predictions for \\['v3'\\]"):
        score_captions({"v1": "x", "v2": "y"}, REFS)

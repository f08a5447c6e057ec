import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from trainer.evaluation.caption_metrics import character_tokens, score_captions

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


ZH_REFS = {
    "v1": ["一个男人在骑自行车。", "有个人在路上骑车"],
    "v2": ["一只狗在草地上奔跑", "小狗在跑"],
}


def test_chinese_characters_are_tokens_and_punctuation_is_dropped():
    assert character_tokens("一个男人，骑着 BMX。") == "一 个 男 人 骑 着 bmx"
    assert character_tokens("。！") == ""


def test_chinese_is_scored_on_characters():
    """Unsegmented Chinese through the PTB tokenizer is one token per sentence: a near miss scores 0."""
    preds = {"v1": "一个男人在骑车", "v2": "一只狗在跑"}
    chars = score_captions(preds, ZH_REFS, meteor=False, language="zh")
    sentences = score_captions(preds, ZH_REFS, meteor=False)
    assert sentences["bleu1"] < 1e-6 and sentences["cider"] == 0
    assert chars["bleu1"] > 0.8 and chars["cider"] > 1
    # The same as pycocoevalcap's scorers on the references split into characters by hand.
    gts = {k: [" ".join(c for c in r if c != "。") for r in v] for k, v in ZH_REFS.items()}
    res = {k: [" ".join(v)] for k, v in preds.items()}
    assert chars["cider"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)
    assert chars["bleu4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3], abs=1e-12)
    perfect = score_captions({k: v[0] for k, v in ZH_REFS.items()}, ZH_REFS, meteor=False, language="zh")
    assert perfect["bleu4"] > 0.99

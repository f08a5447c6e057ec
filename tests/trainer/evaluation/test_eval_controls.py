"""The temporal controls (frame views), the structured caption metrics and the evaluation pass that
scores both, with forced choice and retrieval groups, on real SynthVid shards and a tiny model."""

import math

import numpy as np
import pytest
import torch

from data.synthvid import generate_clip, write_synthvid
from data.synthvid_grammar import CHOICE_SET_SIZE, caption, facts_of
from models.loading import load_model
from models.presets import create_pretrained
from models.processor import VideoLlamaProcessor
from trainer.config import load_config
from trainer.distributed import DistInfo
from trainer.evaluation.eval_pass import evaluate
from trainer.evaluation.frame_views import clip_permutation, frame_view
from trainer.evaluation.structured_metrics import chance, clip_scores, structured_scores
from trainer.run_setup import build_selector


def test_shuffle_is_fixed_by_the_key_and_never_the_identity():
    keys = [f"{i:09d}" for i in range(200)]
    for key in keys:
        order = clip_permutation(key, 4)
        assert sorted(order.tolist()) == [0, 1, 2, 3] and order.tolist() != [0, 1, 2, 3]
        assert torch.equal(order, clip_permutation(key, 4))
    assert len({tuple(clip_permutation(k, 4).tolist()) for k in keys}) > 10  # not one fixed order


def test_views_move_each_frame_with_its_scores():
    frames = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1, 1, 1).expand(2, 4, 3, 2, 2).clone()
    scores = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1).expand(2, 4, 3).clone()
    keys = ["a", "b"]
    ordered = frame_view("ordered", frames, scores, keys)
    assert ordered[0] is frames and ordered[1] is scores
    shuffled, shuffled_scores = frame_view("shuffled", frames, scores, keys)
    for b, key in enumerate(keys):
        expected = (b * 4 + clip_permutation(key, 4)).float()
        assert torch.equal(shuffled[b, :, 0, 0, 0], expected)
        assert torch.equal(shuffled_scores[b, :, 0], expected)
    repeated, repeated_scores = frame_view("repeated", frames, scores, keys)
    assert torch.equal(repeated[:, :, 0, 0, 0], torch.tensor([[2.0] * 4, [6.0] * 4]))
    assert torch.equal(repeated_scores[:, :, 0], repeated[:, :, 0, 0, 0])
    assert frame_view("repeated", frames, None, keys)[1] is None
    with pytest.raises(ValueError, match="unknown frame view"):
        frame_view("reversed", frames, scores, keys)


@pytest.mark.parametrize("task", ["sparse", "order", "dense", "shift", "retrieval"])
def test_the_true_caption_scores_every_fact_and_garbage_none(task):
    for index in range(6):
        _, text, truth = generate_clip(index, seed=3, task=task, size=32)
        facts = facts_of(truth)
        right = clip_scores(text, facts)
        wrong = clip_scores("the the circle moves sideways", facts)
        for name, value in right.items():
            if math.isnan(value):
                assert not facts.directions and "direction" in name or "sequence" in name
                assert math.isnan(wrong[name])
            else:
                assert value == 1.0 and wrong[name] == 0.0, name


def test_swapped_events_keep_the_attributes_and_lose_the_directions():
    _, text, truth = generate_clip(0, seed=0, task="order", size=32)
    facts = facts_of(truth)
    swapped = caption(type(facts)(facts.count, facts.color, facts.shape, facts.directions[::-1]))
    scores = clip_scores(swapped, facts)
    assert scores["caption_attributes_acc_pct"] == 1.0 and scores["caption_parse_pct"] == 1.0
    assert scores["caption_sequence_exact_pct"] == 0.0 and scores["caption_exact_pct"] == 0.0
    # every event sits at another place in the reversed sequence (no direction twice in a row)
    middle = len(facts.directions) % 2 == 1 and facts.directions[len(facts.directions) // 2]
    assert scores["caption_direction_acc_pct"] == pytest.approx((1 if middle else 0) / len(facts.directions))


def test_set_figures_are_means_of_the_clips_and_chance_is_the_grammars():
    clips = {f"{i}": generate_clip(i, seed=1, task="order", size=32) for i in range(4)}
    predictions = {k: text if int(k) % 2 == 0 else "" for k, (_, text, _) in clips.items()}
    scores, levels, per_clip = structured_scores(predictions, {k: t for k, (_, _, t) in clips.items()})
    assert scores["caption_exact_pct"] == 50.0 and set(per_clip["caption_exact_pct"].values()) == {0.0, 1.0}
    assert levels["caption_color_acc_pct"] == pytest.approx(100 / 6)
    two = chance(facts_of(next(t for _, _, t in clips.values())))
    assert two["caption_direction_acc_pct"] == 0.25
    assert structured_scores({"x": "a"}, {"x": {}}) == ({}, {}, {})  # no ground truth, no figures


@pytest.fixture(scope="module")
def synthvid_eval(tmp_path_factory):
    """A tiny random-init base with a retrieval head, and SynthVid retrieval shards (3 groups)."""
    from data.synthvid_grammar import caption_corpus

    root = tmp_path_factory.mktemp("controls")
    base = create_pretrained("tiny", root / "base", caption_corpus(), seed=0)
    shards = root / "shards"
    write_synthvid(str(shards), task="retrieval", num=9, seed=0, size=64, num_frames=32)
    cfg = load_config(
        None,
        [
            f"model.name_or_path={base}",
            f"data.eval_shards={shards}",
            "data.num_candidate_frames=16",
            "data.frame_size=64",
            "selector.k=4",
            "selector.policy=uniform",
            "eval.num_samples=9",
            "eval.batch_size=4",
            "eval.max_new_tokens=4",
        ],
    )
    model = load_model(base, quantization="none", compute_dtype=torch.float32, retrieval_dim=16)
    return model, VideoLlamaProcessor.from_pretrained(base), cfg


def test_evaluation_scores_every_view_with_chance_and_per_clip_outcomes(synthvid_eval):
    model, processor, cfg = synthvid_eval
    dist = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    result = evaluate(model, processor, build_selector(cfg), cfg, dist, torch.float32)
    keys = sorted(result.clips)
    assert len(keys) == 9
    for prefix in ("", "shuffled/", "repeated/"):
        assert 0 <= result.scores[f"{prefix}choice_acc_pct"] <= 100
        assert result.chance[f"{prefix}choice_acc_pct"] == pytest.approx(100 / CHOICE_SET_SIZE)
        assert result.chance[f"{prefix}t2v_group_acc_pct"] == pytest.approx(100 / 3)
        for name in ("choice_acc_pct", "choice_raw_acc_pct", "t2v_group_acc_pct"):
            outcomes = result.per_clip[prefix + name]
            assert sorted(outcomes) == keys
            assert result.scores[prefix + name] == pytest.approx(100 * np.mean(list(outcomes.values())))
        assert f"{prefix}t2v_map_pct" in result.scores
    for name in ("caption_parse_pct", "caption_sequence_exact_pct", "cider"):
        assert name in result.scores
    clip = result.clips[keys[0]]
    assert len(clip.choices) == CHOICE_SET_SIZE and clip.choices[0] == clip.references[0]
    # the views really differ: a shuffled clip is scored on other inputs than the ordered one
    assert not np.allclose(clip.choice_scores["ordered"], clip.choice_scores["repeated"])
    # the prior is the captions' likelihood under one blank video: the same caption, the same value
    pairs = [
        pair for k in keys for pair in zip(result.clips[k].choices, result.clips[k].choice_prior, strict=True)
    ]
    first = dict(reversed(pairs))
    assert all(p == pytest.approx(first[text], abs=1e-3) for text, p in pairs)
    assert not np.allclose(clip.choice_prior, clip.choice_scores["ordered"])
    assert not np.allclose(clip.video_embedding, clip.view_embeddings["repeated"])


def test_controls_can_be_turned_off(synthvid_eval):
    model, processor, cfg = synthvid_eval
    cfg.eval.controls = []
    cfg.eval.forced_choice = False
    dist = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    result = evaluate(model, processor, build_selector(cfg), cfg, dist, torch.float32, tasks=("retrieval",))
    assert not any("/" in name for name in result.scores)
    assert "choice_acc_pct" not in result.scores and "t2v_group_acc_pct" in result.scores

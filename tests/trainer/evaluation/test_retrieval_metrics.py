"""Retrieval metrics on constructed similarity matrices, against ranks worked out by hand."""

import itertools

import numpy as np
import pytest

from trainer.evaluation.retrieval_metrics import (
    chance_metrics,
    group_accuracy,
    mean_average_precision,
    retrieval_metrics,
)


def test_one_caption_per_video_hand_ranks():
    # Rows = captions (caption i describes video i), columns = videos.
    sim = np.array(
        [
            [0.9, 0.1, 0.2],  # own video best → rank 1
            [0.8, 0.5, 0.05],  # video 0 beats it → rank 2
            [0.7, 0.6, 0.1],  # both beat it → rank 3
        ]
    )
    m = retrieval_metrics(sim, [0, 1, 2])
    assert m["t2v_r1_pct"] == pytest.approx(100 / 3)
    assert m["t2v_r5_pct"] == m["t2v_r10_pct"] == 100.0
    assert m["t2v_medr"] == 2.0 and m["t2v_mnr"] == pytest.approx(2.0)
    # v2t, columns: video 0's caption 0.9 is the column max → 1; video 1: 0.5 < 0.6 → 2; video 2: 0.1 < 0.2 → 2.
    assert m["v2t_r1_pct"] == pytest.approx(100 / 3)
    assert m["v2t_medr"] == 2.0 and m["v2t_mnr"] == pytest.approx(5 / 3)


def test_ties_are_counted_as_the_expectation_of_a_random_break():
    # Caption 0 ties with 3 other videos on its own score: expected rank 1 + 3/2 = 2.5, P(rank<=1) = 1/4.
    # Caption 1: one wrong video is better, one ties → rank 1 + 1 + 1/2 = 2.5, P(<=1) = 0, P(<=5) = 1.
    sim = np.array(
        [
            [0.5, 0.5, 0.5, 0.5],
            [0.9, 0.3, 0.3, 0.1],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    m = retrieval_metrics(sim, [0, 1, 2, 3])
    assert m["t2v_r1_pct"] == pytest.approx(100 * (0.25 + 0 + 1 + 1) / 4)
    assert m["t2v_mnr"] == pytest.approx((2.5 + 2.5 + 1 + 1) / 4)
    assert m["t2v_medr"] == pytest.approx(1.75)


def test_several_captions_per_video_v2t_takes_the_best_caption():
    # 2 videos, 3 captions: captions 0, 1 describe video 0, caption 2 video 1.
    sim = np.array(
        [
            [0.2, 0.9],  # caption 0: own video 0 is 2nd
            [0.8, 0.1],  # caption 1: own video 0 is 1st
            [0.7, 0.3],  # caption 2: own video 1 is 2nd
        ]
    )
    m = retrieval_metrics(sim, [0, 0, 1])
    assert m["t2v_r1_pct"] == pytest.approx(100 / 3)
    assert m["t2v_mnr"] == pytest.approx((2 + 1 + 2) / 3)
    # v2t column 0: best own caption (1) scores 0.8, caption 2 (wrong) 0.7 → rank 1.
    # column 1: best own caption (2) scores 0.3, caption 0 (wrong) 0.9 → rank 2.
    assert m["v2t_r1_pct"] == pytest.approx(50.0)
    assert m["v2t_mnr"] == pytest.approx(1.5)


def test_v2t_ties_with_several_own_captions():
    # One video column: 2 own captions and 2 wrong captions all tie. The first own caption among the
    # 4 in random order lands at 1 + t/(c+1) = 1 + 2/3 on average; P(rank 1) = c/(t+c) = 1/2.
    sim = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    m = retrieval_metrics(sim, [0, 0, 1, 1, 1])
    # Column 0: own captions 0, 1 (score 1), wrong 2, 3 (score 1) tie, wrong 4 (score 0).
    # Column 1: own caption 4 scores 1, the rest 0 → rank 1.
    assert m["v2t_r1_pct"] == pytest.approx(100 * (0.5 + 1) / 2)
    assert m["v2t_mnr"] == pytest.approx((1 + 2 / 3 + 1) / 2)


def test_all_ties_give_chance():
    m = chance_metrics(np.repeat(np.arange(20), 2))
    assert m["t2v_r1_pct"] == pytest.approx(100 / 20)
    assert m["t2v_r5_pct"] == pytest.approx(100 * 5 / 20)
    assert m["t2v_mnr"] == pytest.approx(10.5)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"videos without any caption \(columns\): \[1\]"):
        retrieval_metrics(np.zeros((2, 2)), [0, 0])
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(np.zeros((2, 2)), [0, 2])


def test_map_by_hand_one_caption_per_video():
    sim = np.array([[0.9, 0.1, 0.2], [0.8, 0.5, 0.05], [0.7, 0.6, 0.1]])  # t2v ranks 1, 2, 3
    m = retrieval_metrics(sim, [0, 1, 2])
    assert m["t2v_map_pct"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 3) / 3)
    assert m["v2t_map_pct"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 2) / 3)  # v2t ranks 1, 2, 2
    assert mean_average_precision(sim, [0, 1, 2]) == {k: m[k] for k in ("t2v_map_pct", "v2t_map_pct")}


def test_v2t_map_uses_every_caption_of_the_video():
    # Video 0 has captions 0, 1, 2; video 1 has caption 3.
    sim = np.array([[0.9, 0.2], [0.1, 0.0], [0.5, 0.3], [0.7, 0.4]])
    m = mean_average_precision(sim, [0, 0, 0, 1])
    # Column 0 ranks caption 0 (own), 3 (other), 2 (own), 1 (own): AP = (1/1 + 2/3 + 3/4) / 3.
    # Column 1 ranks caption 3 (own) first: AP = 1. R@1 alone would call both perfect.
    assert m["v2t_map_pct"] == pytest.approx(100 * ((1 + 2 / 3 + 3 / 4) / 3 + 1) / 2)
    assert retrieval_metrics(sim, [0, 0, 0, 1])["v2t_r1_pct"] == 100.0
    # t2v: caption 0 → video 0 first (1), caption 1 → first (1), caption 2 → first (1), caption 3 → second.
    assert m["t2v_map_pct"] == pytest.approx(100 * (1 + 1 + 1 + 1 / 2) / 4)


def brute_force_expected_ap(scores, relevant):
    """AP averaged over every ordering that sorts ``scores`` descending (each equally likely)."""
    aps = []
    for order in itertools.permutations(range(len(scores))):
        if all(scores[a] >= scores[b] for a, b in zip(order[:-1], order[1:], strict=True)):
            hits = np.cumsum([relevant[i] for i in order])
            precisions = [hits[k] / (k + 1) for k, i in enumerate(order) if relevant[i]]
            aps.append(np.mean(precisions))
    return float(np.mean(aps))


def test_map_ties_are_the_exact_expectation_of_a_random_break():
    rng = np.random.default_rng(0)
    for _ in range(30):
        # 6 captions on 2 videos, few distinct scores so that ties are common.
        owner = np.array([0, 0, 0, 1, 1, 1])
        rng.shuffle(owner)
        sim = rng.integers(0, 3, size=(6, 2)).astype(float)
        m = mean_average_precision(sim, owner)
        v2t = np.mean([brute_force_expected_ap(sim[:, v], owner == v) for v in range(2)])
        t2v = np.mean([brute_force_expected_ap(sim[i], np.arange(2) == owner[i]) for i in range(6)])
        assert m["v2t_map_pct"] == pytest.approx(100 * v2t)
        assert m["t2v_map_pct"] == pytest.approx(100 * t2v)


def test_map_chance_is_the_mean_reciprocal_rank_of_a_uniform_rank():
    m = chance_metrics(np.arange(4))
    assert m["t2v_map_pct"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


# Retrieval groups: g0 = videos 0 (anchor), 1 (order), 2 (direction); g1 = 3, 4, 5 likewise;
# g2 = 6 (anchor), 7 (order), incomplete. Caption i describes video OWNER[i] (video 0 has two).
GROUPS = [0, 0, 0, 1, 1, 1, 2, 2]
VARIANTS = ["anchor", "order", "direction"] * 2 + ["anchor", "order"]
OWNER = [0, 0, 1, 2, 3, 4, 5, 6, 7]
IN_GROUP = {  # caption → its similarity to its own group's videos (in column order)
    0: [0.9, 0.5, 0.95],  # the direction negative wins: wrong; beats order, loses to direction
    1: [0.8, 0.8, 0.1],  # ties the order negative: 1/2; vs order 1/2, vs direction 1
    2: [0.3, 0.6, 0.2],  # order negative's caption: right
    3: [0.7, 0.1, 0.4],  # direction negative's caption: wrong
    4: [0.6, 0.2, 0.2],  # right; beats both negatives
    5: [0.5, 0.5, 0.5],  # three-way tie: 1/3
    6: [0.1, 0.2, 0.3],  # right
    7: [0.4, 0.9],  # anchor of g2 loses to its order negative
    8: [0.2, 0.3],  # right
}


def group_similarity():
    # Every out-of-group video is far more similar than any in-group one: group accuracy must
    # ignore them.
    sim = np.full((len(OWNER), len(GROUPS)), 5.0)
    for caption, values in IN_GROUP.items():
        members = [v for v in range(len(GROUPS)) if GROUPS[v] == GROUPS[OWNER[caption]]]
        sim[caption, members] = values
    return sim


def test_group_accuracy_by_hand():
    result = group_accuracy(group_similarity(), OWNER, GROUPS, VARIANTS)
    np.testing.assert_allclose(result.correct, [0, 1 / 2, 1, 0, 1, 1 / 3, 1, 0, 1])
    nan = np.nan
    np.testing.assert_allclose(result.vs_order, [1, 1 / 2, nan, nan, 1, nan, nan, 0, nan])
    np.testing.assert_allclose(result.vs_direction, [0, 1, nan, nan, 1, nan, nan, nan, nan])
    assert result.metrics == pytest.approx(
        {
            "t2v_group_acc_pct": 100 * (0 + 1 / 2 + 1 + 0 + 1 + 1 / 3 + 1 + 0 + 1) / 9,
            "t2v_group_acc_vs_order_pct": 100 * (1 + 1 / 2 + 1 + 0) / 4,
            "t2v_group_acc_vs_direction_pct": 100 * (0 + 1 + 1) / 3,
        }
    )
    # 7 captions in groups of 3, 2 in the group of 2.
    assert result.chance == pytest.approx(
        {
            "t2v_group_acc_pct": 100 * (7 / 3 + 2 / 2) / 9,
            "t2v_group_acc_vs_order_pct": 50.0,
            "t2v_group_acc_vs_direction_pct": 50.0,
        }
    )
    # Ordinary retrieval over all videos sees the out-of-group 5.0s: no caption finds its video.
    assert retrieval_metrics(group_similarity(), OWNER)["t2v_r1_pct"] == 0.0


def test_a_constant_scorer_gets_group_chance():
    result = group_accuracy(np.zeros((len(OWNER), len(GROUPS))), OWNER, GROUPS, VARIANTS)
    assert result.metrics == pytest.approx(result.chance)


def test_groups_without_negatives_have_no_pairwise_keys():
    result = group_accuracy(np.eye(2), [0, 1], [0, 1], ["anchor", "anchor"])
    assert result.metrics == {"t2v_group_acc_pct": 100.0}  # groups of one: trivially right
    assert result.chance == {"t2v_group_acc_pct": 100.0}
    assert np.isnan(result.vs_order).all() and np.isnan(result.vs_direction).all()


def test_bad_groups_are_named():
    sim = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"group 0 has two 'order' videos \(columns 1 and 2\)"):
        group_accuracy(sim, [0, 1, 2], [0, 0, 0], ["anchor", "order", "order"])
    with pytest.raises(ValueError, match=r"unknown variants \['negative'\]"):
        group_accuracy(sim, [0, 1, 2], [0, 0, 0], ["anchor", "order", "negative"])
    with pytest.raises(ValueError, match="one entry per video"):
        group_accuracy(sim, [0, 1, 2], [0, 0], ["anchor", "order"])

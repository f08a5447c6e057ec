"""Retrieval metrics on constructed similarity matrices, against ranks worked out by hand."""

import numpy as np
import pytest

from trainer.evaluation.retrieval_metrics import chance_metrics, retrieval_metrics


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

"""Forced choice on built log-likelihood tables: argmax, shared ties, the prior subtracted, normalisation."""

import numpy as np
import pytest

from trainer.evaluation.forced_choice import choice_log_likelihoods, forced_choice


def test_choice_is_the_argmax():
    table = np.array(
        [
            [-1.0, -3.0, -2.0],  # true (0) likeliest: right
            [-4.0, -1.0, -2.0],  # candidate 1 wins: wrong
            [-2.0, -3.0, -0.5],  # candidate 2 wins: wrong
            [-0.1, -0.2, -0.3],  # right
        ]
    )
    result = forced_choice(table)
    np.testing.assert_array_equal(result.credit, [1, 0, 0, 1])
    np.testing.assert_array_equal(result.predicted, [0, 1, 2, 0])
    assert result.accuracy == pytest.approx(0.5) and result.chance == pytest.approx(1 / 3)


def test_per_clip_correct_column():
    table = np.array([[-1.0, -3.0], [-1.0, -3.0], [-5.0, -2.0]])
    result = forced_choice(table, correct=np.array([0, 1, 1]))
    np.testing.assert_array_equal(result.credit, [1, 0, 1])
    np.testing.assert_array_equal(result.predicted, [0, 0, 1])


def test_ties_share_the_clip():
    table = np.array(
        [
            [-1.0, -1.0, -5.0],  # true ties one other at the top: half, predicts the other
            [-2.0, -2.0, -2.0],  # all tie: a third
            [-5.0, -1.0, -1.0],  # beaten by two tied candidates: 0, predicts the first of them
            [-1.0, -2.0, -2.0],  # a tie below the true one is irrelevant: right
            [-1.0, -1.0 + 5e-5, -3.0],  # within the tolerance: a tie
        ]
    )
    result = forced_choice(table, correct=np.array([1, 2, 0, 0, 0]))
    np.testing.assert_allclose(result.credit, [1 / 2, 1 / 3, 0, 1, 1 / 2])
    np.testing.assert_array_equal(result.predicted, [0, 0, 1, 0, 1])
    assert forced_choice(table[4:], tie_tolerance=0.0).credit[0] == 0  # strictly beaten without it


def test_a_model_that_ignores_the_video_earns_exactly_chance():
    rng = np.random.default_rng(0)
    prior = rng.normal(-20.0, 3.0, size=(200, 4))  # a language prior that favours some captions
    # A video-blind model: its likelihoods are the prior (to float32 rounding), whatever the clip.
    blind = prior.astype(np.float32).astype(np.float64)
    raw = forced_choice(blind)
    assert abs(raw.accuracy - 0.25) > 0.02  # the raw choice follows the prior, not chance
    calibrated = forced_choice(blind, prior=prior)
    assert calibrated.accuracy == pytest.approx(0.25)
    np.testing.assert_allclose(calibrated.credit, 0.25)
    # Impossible everywhere (-inf) is an all-way tie: chance too, the prediction another candidate.
    result = forced_choice(np.full((2, 2), -np.inf), correct=np.array([0, 1]))
    np.testing.assert_array_equal(result.credit, [0.5, 0.5])
    np.testing.assert_array_equal(result.predicted, [1, 0])


def test_the_prior_turns_the_choice_to_what_the_video_adds():
    # The true caption (0) is unlikely a priori (-30 vs -20) but the video raises it most.
    likelihood = np.array([[-21.0, -19.0, -20.5]])
    prior = np.array([[-30.0, -20.0, -21.0]])
    assert forced_choice(likelihood).predicted[0] == 1
    calibrated = forced_choice(likelihood, prior=prior)
    assert calibrated.credit[0] == 1 and calibrated.predicted[0] == 0


def test_length_normalisation_changes_the_choice():
    # The true caption (0) has 10 tokens at -0.5 each; the wrong one 2 tokens at -1.5 each.
    table = np.array([[-5.0, -3.0]])
    assert forced_choice(table).credit[0] == 0  # the sum prefers the short wrong caption
    normalised = forced_choice(table, lengths=np.array([[10, 2]]))
    assert normalised.credit[0] == 1 and normalised.predicted[0] == 0


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="candidates >= 2"):
        forced_choice(np.zeros((3, 1)))
    with pytest.raises(ValueError, match="candidates >= 2"):
        forced_choice(np.zeros(3))
    with pytest.raises(ValueError, match="NaN at clips \\[1\\]"):
        forced_choice(np.array([[0.0, -1.0], [np.nan, -1.0]]))
    with pytest.raises(ValueError, match="outside"):
        forced_choice(np.zeros((2, 2)), correct=2)
    with pytest.raises(ValueError, match="int \\[2\\]"):
        forced_choice(np.zeros((2, 2)), correct=np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="lengths must match"):
        forced_choice(np.zeros((2, 2)), lengths=np.ones((2, 3)))
    with pytest.raises(ValueError, match="positive"):
        forced_choice(np.zeros((2, 2)), lengths=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="prior must match"):
        forced_choice(np.zeros((2, 2)), prior=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="prior must be finite"):
        forced_choice(np.zeros((2, 2)), prior=np.array([[0.0, -np.inf], [0.0, 0.0]]))


def test_choice_log_likelihoods_batches_across_clips():
    candidates = [["a red circle", "a blue square"], ["up then down", "down then up"], ["x", "yy"]]
    calls = []

    def score_fn(pairs):
        calls.append(list(pairs))
        return np.array([-(10 * clip + len(caption)) for clip, caption in pairs], dtype=float)

    table = choice_log_likelihoods(score_fn, candidates, batch_size=4)
    assert [len(c) for c in calls] == [4, 2]  # 6 pairs, batches cross the clip boundary
    assert calls[0][:3] == [(0, "a red circle"), (0, "a blue square"), (1, "up then down")]
    np.testing.assert_array_equal(table, [[-12, -13], [-22, -22], [-21, -22]])
    assert table.dtype == np.float64
    np.testing.assert_array_equal(forced_choice(table).credit, [1, 0.5, 1])


def test_choice_log_likelihoods_checks_shapes():
    with pytest.raises(ValueError, match="same number of candidates"):
        choice_log_likelihoods(lambda pairs: np.zeros(len(pairs)), [["a", "b"], ["c"]])
    with pytest.raises(ValueError, match="returned 1 scores for 2 pairs"):
        choice_log_likelihoods(lambda pairs: np.zeros(1), [["a", "b"]])

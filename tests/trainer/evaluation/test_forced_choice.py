"""Forced choice on built log-likelihood tables: argmax, ties against the model, normalisation."""

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
    np.testing.assert_array_equal(result.correct, [True, False, False, True])
    np.testing.assert_array_equal(result.predicted, [0, 1, 2, 0])
    assert result.accuracy == pytest.approx(0.5) and result.chance == pytest.approx(1 / 3)
    assert result.correct.dtype == bool


def test_per_clip_correct_column():
    table = np.array([[-1.0, -3.0], [-1.0, -3.0], [-5.0, -2.0]])
    result = forced_choice(table, correct=np.array([0, 1, 1]))
    np.testing.assert_array_equal(result.correct, [True, False, True])
    np.testing.assert_array_equal(result.predicted, [0, 0, 1])


def test_ties_count_against_the_model():
    table = np.array(
        [
            [-1.0, -1.0, -5.0],  # true ties another at the top: wrong, predicts the other
            [-2.0, -2.0, -2.0],  # all tie: wrong
            [-5.0, -1.0, -1.0],  # beaten by two tied candidates: predicts the first of them
            [-1.0, -2.0, -2.0],  # a tie below the true one is irrelevant: right
        ]
    )
    result = forced_choice(table, correct=np.array([1, 2, 0, 0]))
    np.testing.assert_array_equal(result.correct, [False, False, False, True])
    np.testing.assert_array_equal(result.predicted, [0, 0, 1, 0])
    assert (result.predicted[~result.correct] != np.array([1, 2, 0, 0])[~result.correct]).all()


def test_a_constant_model_never_beats_chance():
    for correct in (0, 1, np.array([0, 1, 2, 0, 1, 2])):
        result = forced_choice(np.full((6, 3), -7.0), correct=correct)
        assert result.accuracy <= result.chance
        assert not result.correct.any()
    # Impossible everywhere (-inf) is a tie too; the prediction is still another candidate.
    result = forced_choice(np.full((2, 2), -np.inf), correct=np.array([0, 1]))
    assert not result.correct.any()
    np.testing.assert_array_equal(result.predicted, [1, 0])


def test_length_normalisation_changes_the_choice():
    # The true caption (0) has 10 tokens at -0.5 each; the wrong one 2 tokens at -1.5 each.
    table = np.array([[-5.0, -3.0]])
    assert not forced_choice(table).correct[0]  # the sum prefers the short wrong caption
    normalised = forced_choice(table, lengths=np.array([[10, 2]]))
    assert normalised.correct[0] and normalised.predicted[0] == 0


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
    np.testing.assert_array_equal(forced_choice(table).correct, [True, False, True])


def test_choice_log_likelihoods_checks_shapes():
    with pytest.raises(ValueError, match="same number of candidates"):
        choice_log_likelihoods(lambda pairs: np.zeros(len(pairs)), [["a", "b"], ["c"]])
    with pytest.raises(ValueError, match="returned 1 scores for 2 pairs"):
        choice_log_likelihoods(lambda pairs: np.zeros(1), [["a", "b"]])

"""Forced choice: which of M candidate captions does the model find likeliest for a clip?

Each clip comes with M captions, one true and M − 1 that differ from it in one controlled way
(SynthVid: the order of two events swapped, one direction reversed). The model chooses the
caption with the highest log p(caption | video); accuracy over clips against chance 1 / M says
whether the captioner tells the difference, independent of how well it generates.

Score: by default the summed log-likelihood, log p(caption | video) itself, which is the quantity
a choice between whole captions should compare. With ``lengths`` (token counts) it is the mean
per-token log-likelihood instead: a sum favours short candidates, which matters when the
candidates' lengths differ (SynthVid's swapped / reversed captions have about the same length
as the true one, so the default is unbiased there).

Ties are scored against the model: a clip counts as correct only if its correct candidate scores
strictly above every other. A tie for the top that includes the correct candidate (an all-way tie
included) is wrong, and the prediction is then the first tied candidate that is not the correct
one. So a model that scores every candidate alike gets 0, never more than chance, and a scorer
cannot gain from ties; each clip's outcome is a plain bool that pairs clip by clip
(``trainer.experiments.statistics.paired_bootstrap``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ForcedChoice:
    """The choices of the model among M candidates on C clips.

    accuracy: fraction of clips whose correct candidate was chosen, in [0, 1]; chance: 1 / M.
    correct: bool [C]; predicted: int [C], the chosen candidate's column.
    """

    accuracy: float
    chance: float
    correct: np.ndarray
    predicted: np.ndarray


def forced_choice(
    log_likelihoods: np.ndarray,
    correct: int | np.ndarray = 0,
    lengths: np.ndarray | None = None,
) -> ForcedChoice:
    """Each clip's choice = the candidate with the highest (optionally per-token) log-likelihood.

    Args:
        log_likelihoods: float [C, M], log p(candidate m | clip c) summed over its tokens; -inf is
            allowed (impossible), NaN is not.
        correct: the column of the true caption: one int for every clip, or int [C].
        lengths: positive token counts [C, M] to divide by (mean per-token log-likelihood), or None
            for the summed log-likelihood (module docstring).
    Returns:
        ``ForcedChoice``; ties count against the model (module docstring).
    """
    scores = np.asarray(log_likelihoods, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"log_likelihoods must be [clips, candidates >= 2]; got {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError(
            f"log_likelihoods holds NaN at clips {np.nonzero(np.isnan(scores).any(axis=1))[0][:10]}"
        )
    num_clips, num_candidates = scores.shape
    truth = np.asarray(correct, dtype=np.int64)
    if truth.ndim == 0:
        truth = np.full(num_clips, int(truth))
    if truth.shape != (num_clips,):
        raise ValueError(f"correct must be one int or int [{num_clips}]; got shape {truth.shape}")
    if truth.size and (truth.min() < 0 or truth.max() >= num_candidates):
        raise ValueError(f"correct holds columns outside [0, {num_candidates})")
    if lengths is not None:
        tokens = np.asarray(lengths, dtype=np.float64)
        if tokens.shape != scores.shape:
            raise ValueError(f"lengths must match log_likelihoods {scores.shape}; got {tokens.shape}")
        if not (tokens > 0).all():
            raise ValueError("lengths must be positive token counts")
        scores = scores / tokens

    rows = np.arange(num_clips)
    own = scores[rows, truth]  # [C]
    others = scores.copy()
    others[rows, truth] = -np.inf
    best_other = others.max(axis=1)
    is_correct = own > best_other
    # Wrong clips predict the first non-correct candidate at the top score: with the correct one
    # masked out, argmax finds it whether the correct one was beaten or only tied.
    predicted = np.where(is_correct, truth, np.argmax(others, axis=1))
    # Every candidate at -inf: argmax of the all -inf masked row is column 0, which is the correct
    # one when the truth is column 0; the first other candidate is then column 1.
    predicted[~is_correct & (predicted == truth)] = 1
    return ForcedChoice(
        accuracy=float(is_correct.mean()) if num_clips else float("nan"),
        chance=1.0 / num_candidates,
        correct=is_correct,
        predicted=predicted.astype(np.int64),
    )


def choice_log_likelihoods(
    score_fn: Callable[[list[tuple[int, str]]], np.ndarray],
    candidates: Sequence[Sequence[str]],
    *,
    batch_size: int = 64,
) -> np.ndarray:
    """The [C, M] log-likelihood table of every clip's candidates, scored in flat batches.

    Args:
        score_fn: takes [(clip index, caption), …] (at most ``batch_size`` pairs) and returns float
            [len(pairs)] log p(caption | clip), e.g. a wrapper of
            ``trainer.evaluation.rerank.caption_log_likelihood`` that loads each clip's frames.
        candidates: C lists of M captions each (the same M for every clip).
        batch_size: pairs per ``score_fn`` call; batches run across clips, so a forward is full
            even when M is small.
    Returns:
        float64 [C, M], row c = ``candidates[c]`` in order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    sizes = {len(row) for row in candidates}
    if len(sizes) > 1:
        raise ValueError(f"every clip needs the same number of candidates; got sizes {sorted(sizes)}")
    num_candidates = sizes.pop() if sizes else 0
    pairs = [(clip, caption) for clip, row in enumerate(candidates) for caption in row]
    scores = np.empty(len(pairs))
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        out = np.asarray(score_fn(batch), dtype=np.float64).reshape(-1)
        if out.shape != (len(batch),):
            raise ValueError(f"score_fn returned {out.shape[0]} scores for {len(batch)} pairs")
        scores[start : start + len(batch)] = out
    return scores.reshape(len(candidates), num_candidates)

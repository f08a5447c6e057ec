"""Forced choice: which of M candidate captions does the model find likeliest for a clip?

Each clip comes with M captions, one true and M − 1 that differ from it only in what the task tests
(SynthVid: `data.synthvid_choices`, drawn so that chance is exactly 1 / M). The model chooses the
caption with the highest score; accuracy over clips against chance 1 / M says whether the
captioner tells the difference, independent of how well it generates.

Score: the summed log-likelihood log p(caption | video), minus, with ``prior``, the caption's
log-likelihood under a video that shows nothing, log p(caption | blank): the pointwise mutual
information of caption and video. Without it, the language prior decides wherever the video does
not: a fine-tuned captioner prefers the distractors that read like its training captions, and a
model that ignores the video lands below chance (SynthVid v2's first run: QLoRA on `retrieval`
chose a distractor with one direction changed 71 times in 96, the true caption 9). With the prior
subtracted, a model that reads nothing from the video scores every candidate alike, so chance is
its floor as well as its expectation. With ``lengths`` (token counts) the score is per token.

Ties: candidates within ``tie_tolerance`` nats of the top share the clip. A clip's credit is 1 when
its true candidate is alone at the top, 1 / t when it is one of t tied at the top, 0 otherwise, so
a model that scores every candidate alike earns exactly chance, never more. Credits are the
per-clip outcomes that pair clip by clip (``trainer.experiments.statistics.paired_bootstrap``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ForcedChoice:
    """The choices of the model among M candidates on C clips.

    accuracy: mean credit over clips, in [0, 1]; chance: 1 / M.
    credit: float [C] in [0, 1], each clip's share of the choice (module docstring).
    predicted: int [C], the chosen candidate's column: the true one where it is alone at the top,
        else the first other candidate at the top.
    """

    accuracy: float
    chance: float
    credit: np.ndarray
    predicted: np.ndarray


def forced_choice(
    log_likelihoods: np.ndarray,
    correct: int | np.ndarray = 0,
    lengths: np.ndarray | None = None,
    prior: np.ndarray | None = None,
    tie_tolerance: float = 1e-4,
) -> ForcedChoice:
    """Each clip's choice = the candidate with the highest score (module docstring).

    Args:
        log_likelihoods: float [C, M], log p(candidate m | clip c) summed over its tokens; -inf is
            allowed (impossible), NaN is not.
        correct: the column of the true caption: one int for every clip, or int [C].
        lengths: positive token counts [C, M] to divide by (mean per-token log-likelihood), or None
            for the summed log-likelihood (module docstring).
        prior: float [C, M] log p(candidate | blank video), subtracted before the choice (pointwise
            mutual information), or None for the plain likelihood.
        tie_tolerance: scores this close (nats, after ``lengths``) to the top tie with it.
    Returns:
        ``ForcedChoice``; ties share the clip (module docstring).
    """
    scores = np.asarray(log_likelihoods, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"log_likelihoods must be [clips, candidates >= 2]; got {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError(
            f"log_likelihoods holds NaN at clips {np.nonzero(np.isnan(scores).any(axis=1))[0][:10]}"
        )
    if prior is not None:
        baseline = np.asarray(prior, dtype=np.float64)
        if baseline.shape != scores.shape:
            raise ValueError(f"prior must match log_likelihoods {scores.shape}; got {baseline.shape}")
        if not np.isfinite(baseline).all():
            raise ValueError("prior must be finite: a caption impossible without the video has no PMI")
        scores = scores - baseline
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
    top = scores.max(axis=1, keepdims=True)  # [C, 1]
    # All -inf (every candidate impossible) is an all-way tie, not a NaN from -inf - -inf.
    at_top = (scores >= top - tie_tolerance) | np.isneginf(top)  # [C, M]
    truth_at_top = at_top[rows, truth]
    credit = np.where(truth_at_top, 1.0 / at_top.sum(axis=1), 0.0)
    others_at_top = at_top.copy()
    others_at_top[rows, truth] = False
    # The first other candidate at the top (argmax of a bool row); where the truth is alone there,
    # the prediction is the truth.
    predicted = np.where(credit == 1.0, truth, np.argmax(others_at_top, axis=1))
    return ForcedChoice(
        accuracy=float(credit.mean()) if num_clips else float("nan"),
        chance=1.0 / num_candidates,
        credit=credit,
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

"""Text-video retrieval metrics with several captions per video (CLIP4Clip's conventions).

Text → video: every caption is a query; its rank is the position of its own video among all videos.
Video → text: every video is a query; its rank is the position of its *best-ranked* own caption
among all captions. R@K is the percentage of queries ranked in the top K, MdR / MnR the median /
mean rank (1 = best).

Ties are counted fairly: a tie is broken uniformly at random, and every figure is the expectation
over that draw. For a query whose best correct item has score s, with g wrong items scoring more
than s, t wrong items scoring exactly s and c correct items scoring exactly s (c = 1 for t2v):

    expected rank          = 1 + g + t / (c + 1)
    P(rank <= K)           = 1 - C(t, K - g) / C(t + c, K - g)   (0 if K <= g, 1 if K - g > t)

For t2v this is the familiar mid-rank 1 + g + t/2 and P(rank <= K) = (K - g) / (t + 1). A model that
gives every video the same score therefore gets chance figures (R@1 = 100 / num_videos), not a
perfect or a zero score as the optimistic / pessimistic rules would.
"""

from __future__ import annotations

import math

import numpy as np

KS = (1, 5, 10)


def _query_ranks(scores: np.ndarray, correct: np.ndarray) -> tuple[float, dict[int, float]]:
    """Expected rank and P(rank <= K) for one query.

    Args:
        scores: float [M] similarity of the query to every candidate.
        correct: bool [M], True on the query's own candidates (at least one).
    """
    best = scores[correct].max()
    wrong = scores[~correct]
    g = int((wrong > best).sum())
    t = int((wrong == best).sum())
    c = int((scores[correct] == best).sum())
    rank = 1 + g + t / (c + 1)
    hits = {}
    for k in KS:
        j = k - g  # places left in the top K once the strictly better wrong items are placed
        if j <= 0:
            hits[k] = 0.0
        elif j > t:
            hits[k] = 1.0
        else:
            hits[k] = 1.0 - math.comb(t, j) / math.comb(t + c, j)
    return rank, hits


def _summary(prefix: str, ranks: list[float], hits: list[dict[int, float]]) -> dict[str, float]:
    out = {f"{prefix}_r{k}_pct": 100.0 * float(np.mean([h[k] for h in hits])) for k in KS}
    out[f"{prefix}_medr"] = float(np.median(ranks))
    out[f"{prefix}_mnr"] = float(np.mean(ranks))
    return out


def retrieval_metrics(similarity: np.ndarray, caption_video: np.ndarray | list[int]) -> dict[str, float]:
    """t2v and v2t R@1/5/10 (percent), MdR and MnR from a caption × video similarity matrix.

    Args:
        similarity: float [num_captions, num_videos], higher = more similar.
        caption_video: int [num_captions], the column (video) each caption describes; every video
            needs at least one caption.
    Returns:
        ``{"t2v_r1_pct", "t2v_r5_pct", "t2v_r10_pct", "t2v_medr", "t2v_mnr", "v2t_…" (same)}``.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    owner = np.asarray(caption_video, dtype=np.int64)
    if sim.ndim != 2 or owner.shape != (sim.shape[0],):
        raise ValueError(
            f"similarity must be [num_captions, num_videos] and caption_video [num_captions]; got "
            f"{sim.shape} and {owner.shape}"
        )
    num_videos = sim.shape[1]
    if owner.size and (owner.min() < 0 or owner.max() >= num_videos):
        raise ValueError(f"caption_video holds indices outside [0, {num_videos})")
    uncaptioned = sorted(set(range(num_videos)) - set(owner.tolist()))
    if uncaptioned:
        raise ValueError(f"videos without any caption (columns): {uncaptioned[:10]}")
    if not np.isfinite(sim).all():
        raise ValueError("similarity holds NaN/inf")

    videos = np.arange(num_videos)
    t2v = [_query_ranks(sim[i], videos == owner[i]) for i in range(sim.shape[0])]
    v2t = [_query_ranks(sim[:, v], owner == v) for v in range(num_videos)]
    return {
        **_summary("t2v", [r for r, _ in t2v], [h for _, h in t2v]),
        **_summary("v2t", [r for r, _ in v2t], [h for _, h in v2t]),
    }


def chance_metrics(caption_video: np.ndarray | list[int]) -> dict[str, float]:
    """What a scorer that ties everything gets with the same captions: the baseline for R@K, MdR, MnR."""
    owner = np.asarray(caption_video, dtype=np.int64)
    return retrieval_metrics(np.zeros((owner.size, int(owner.max()) + 1)), owner)

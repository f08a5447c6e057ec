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

Mean average precision (``*_map_pct``) uses all of a query's relevant items: text → video has one
(AP = 1 / rank, i.e. the reciprocal rank), video → text has all the video's captions. Ties are the
same expectation, computed exactly (McSherry & Najork 2008): for a tie block of t items holding r
relevant ones, after i items of which R are relevant, the relevant items' precisions sum in
expectation to sum_{j=1..t} (r / t) (R + 1 + (j - 1)(r - 1)/(t - 1)) / (i + j).

Group accuracy (``group_accuracy``) asks the hard-negative question of SynthVid's retrieval split:
among the few videos of a caption's group (its anchor clip and the clips that differ from it only
in the order of two events or the direction of one), is its own video the most similar?
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KS = (1, 5, 10)
# A retrieval group's members besides its anchor, by how they differ from it (data.synthvid.VARIANTS).
ANCHOR = "anchor"
NEGATIVE_VARIANTS = ("order", "direction")


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
    """t2v and v2t R@1/5/10 (percent), MdR, MnR and mAP (percent) from a caption × video similarity matrix.

    Args:
        similarity: float [num_captions, num_videos], higher = more similar.
        caption_video: int [num_captions], the column (video) each caption describes; every video
            needs at least one caption.
    Returns:
        ``{"t2v_r1_pct", "t2v_r5_pct", "t2v_r10_pct", "t2v_medr", "t2v_mnr", "t2v_map_pct",
        "v2t_…" (same)}``.
    """
    sim, owner = _checked(similarity, caption_video)
    videos = np.arange(sim.shape[1])
    t2v = [_query_ranks(sim[i], videos == owner[i]) for i in range(sim.shape[0])]
    v2t = [_query_ranks(sim[:, v], owner == v) for v in videos]
    return {
        **_summary("t2v", [r for r, _ in t2v], [h for _, h in t2v]),
        **_summary("v2t", [r for r, _ in v2t], [h for _, h in v2t]),
        **mean_average_precision(sim, owner),
    }


def _checked(similarity: np.ndarray, caption_video: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
    """``similarity`` as float64 [C, V] and ``caption_video`` as int64 [C], or a ValueError naming the fault."""
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
    return sim, owner


def _expected_average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Average precision of one query, in expectation over a uniform break of every tie.

    Args:
        scores: float [M] similarity of the query to every candidate.
        relevant: bool [M], True on the query's relevant candidates (at least one).
    """
    # Tie blocks in descending score order: block b holds counts[b] items, relevant_in[b] relevant.
    _, block, counts = np.unique(-scores, return_inverse=True, return_counts=True)
    relevant_in = np.bincount(block, weights=relevant, minlength=counts.size)
    items_before = np.cumsum(counts) - counts  # i
    relevant_before = np.cumsum(relevant_in) - relevant_in  # R
    # Every position of every block, 1-based within its block (j).
    position_block = np.repeat(np.arange(counts.size), counts)
    j = np.arange(scores.size) - items_before[position_block] + 1
    t, r = counts[position_block], relevant_in[position_block]
    # Expected relevant items above position j in the block, given j is relevant: (j-1)(r-1)/(t-1);
    # a block of one item has none above (the max() only avoids 0/0 there).
    above = (j - 1) * (r - 1) / np.maximum(t - 1, 1)
    precision_sum = (
        (r / t) * (relevant_before[position_block] + 1 + above) / (items_before[position_block] + j)
    )
    return float(precision_sum.sum() / relevant.sum())


def mean_average_precision(similarity: np.ndarray, caption_video: np.ndarray | list[int]) -> dict[str, float]:
    """t2v and v2t mean average precision (percent), ties in expectation (module docstring).

    Args:
        similarity: float [num_captions, num_videos], higher = more similar.
        caption_video: int [num_captions], the video each caption describes (every video captioned).
    Returns:
        ``{"t2v_map_pct", "v2t_map_pct"}``: t2v is the mean over captions of 1 / rank of the
        caption's video (its only relevant one); v2t the mean over videos of the AP of all the
        video's captions among all captions.
    """
    sim, owner = _checked(similarity, caption_video)
    videos = np.arange(sim.shape[1])
    t2v = [_expected_average_precision(sim[i], videos == owner[i]) for i in range(sim.shape[0])]
    v2t = [_expected_average_precision(sim[:, v], owner == v) for v in videos]
    return {"t2v_map_pct": 100.0 * float(np.mean(t2v)), "v2t_map_pct": 100.0 * float(np.mean(v2t))}


def chance_metrics(caption_video: np.ndarray | list[int]) -> dict[str, float]:
    """What a scorer that ties everything gets with the same captions: the baseline for R@K, MdR, MnR."""
    owner = np.asarray(caption_video, dtype=np.int64)
    return retrieval_metrics(np.zeros((owner.size, int(owner.max()) + 1)), owner)


@dataclass(frozen=True)
class GroupAccuracy:
    """Within-group text → video accuracy, overall and against each kind of hard negative.

    ``metrics`` and ``chance`` share their keys: ``t2v_group_acc_pct`` (every caption: its video
    is the most similar of its group's videos; chance = the mean of 1 / group size) and, when at
    least one anchor has that negative, ``t2v_group_acc_vs_order_pct`` /
    ``t2v_group_acc_vs_direction_pct`` (the anchor's captions: own video more similar than that one
    negative; chance 50%). The per-caption arrays, float [num_captions], pair results clip by clip
    (e.g. for ``trainer.experiments.statistics.paired_bootstrap``); ``vs_order`` / ``vs_direction``
    are NaN on captions the comparison does not apply to. Ties count as the expectation of a
    uniform break, as everywhere in this module, so a value can be fractional (a 3-way tie: 1/3).
    """

    metrics: dict[str, float]
    chance: dict[str, float]
    correct: np.ndarray
    vs_order: np.ndarray
    vs_direction: np.ndarray


def group_accuracy(
    similarity: np.ndarray,
    caption_video: np.ndarray | list[int],
    groups: np.ndarray | list[int],
    variants: list[str],
) -> GroupAccuracy:
    """Is each caption's own video the most similar among its group's videos?

    Args:
        similarity: float [num_captions, num_videos], higher = more similar.
        caption_video: int [num_captions], the video each caption describes.
        groups: int [num_videos], the retrieval group of each video (SynthVid's ``group``).
        variants: [num_videos], each video's role in its group: "anchor", "order" or "direction"
            (SynthVid's ``variant``); at most one of each per group (a group may be incomplete).
    Returns:
        ``GroupAccuracy`` (its docstring has the keys).
    """
    sim, owner = _checked(similarity, caption_video)
    group = np.asarray(groups, dtype=np.int64)
    variant = np.asarray(variants, dtype=object)
    num_captions, num_videos = sim.shape
    if group.shape != (num_videos,) or variant.shape != (num_videos,):
        raise ValueError(
            f"groups and variants need one entry per video ({num_videos}); got {group.shape} and {variant.shape}"
        )
    unknown = sorted(set(variant.tolist()) - {ANCHOR, *NEGATIVE_VARIANTS})
    if unknown:
        raise ValueError(f"unknown variants {unknown}; expected {(ANCHOR, *NEGATIVE_VARIANTS)}")
    member: dict[tuple[int, str], int] = {}
    for v, key in enumerate(zip(group.tolist(), variant.tolist(), strict=True)):
        if key in member:
            raise ValueError(f"group {key[0]} has two {key[1]!r} videos (columns {member[key]} and {v})")
        member[key] = v

    rows = np.arange(num_captions)
    own = sim[rows, owner]  # [C]
    # The other videos of each caption's group: [C, V].
    rivals = (group[owner][:, None] == group[None, :]) & (np.arange(num_videos)[None, :] != owner[:, None])
    beaten_by = ((sim > own[:, None]) & rivals).sum(axis=1)
    tied_with = ((sim == own[:, None]) & rivals).sum(axis=1)
    correct = np.where(beaten_by > 0, 0.0, 1.0 / (tied_with + 1))
    group_size = rivals.sum(axis=1) + 1

    metrics = {"t2v_group_acc_pct": 100.0 * float(correct.mean())}
    chance = {"t2v_group_acc_pct": 100.0 * float(np.mean(1.0 / group_size))}
    pairwise = {}
    for negative in NEGATIVE_VARIANTS:
        # Column of the caption's negative of this kind, -1 where the caption is not an anchor's or
        # its group lacks that negative.
        rival = np.array(
            [
                member.get((int(group[v]), negative), -1) if variant[v] == ANCHOR else -1
                for v in owner.tolist()
            ],
            dtype=np.int64,
        )
        applies = rival >= 0
        versus = np.full(num_captions, np.nan)
        other = sim[rows[applies], rival[applies]]
        versus[applies] = np.where(own[applies] > other, 1.0, np.where(own[applies] == other, 0.5, 0.0))
        pairwise[negative] = versus
        if applies.any():
            key = f"t2v_group_acc_vs_{negative}_pct"
            metrics[key] = 100.0 * float(versus[applies].mean())
            chance[key] = 50.0
    return GroupAccuracy(
        metrics=metrics,
        chance=chance,
        correct=correct,
        vs_order=pairwise["order"],
        vs_direction=pairwise["direction"],
    )

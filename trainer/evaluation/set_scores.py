"""Scores of the gathered evaluation set: captions, structured facts, forced choice, retrieval.

Every figure that has a chance level returns it under the same name, and every figure that is a
mean of per-clip outcomes returns those outcomes too (``per_clip``: name → {key: value}, so that
``100 * mean(per_clip[name]) == scores[name]``): runs are compared clip by clip on them
(``trainer.experiments.statistics``). Control views (`frame_views`) are prefixed by their name:
``shuffled/choice_acc_pct``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trainer.evaluation.caption_metrics import score_captions
from trainer.evaluation.clip_results import ClipResult
from trainer.evaluation.forced_choice import forced_choice
from trainer.evaluation.frame_views import ORDERED
from trainer.evaluation.retrieval_metrics import group_accuracy, retrieval_metrics
from trainer.evaluation.structured_metrics import structured_scores


@dataclass
class SetScores:
    scores: dict[str, float] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)
    per_clip: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, other: SetScores, prefix: str = "") -> None:
        self.scores.update({prefix + k: v for k, v in other.scores.items()})
        self.chance.update({prefix + k: v for k, v in other.chance.items()})
        self.per_clip.update({prefix + k: v for k, v in other.per_clip.items()})


def view_prefix(view: str) -> str:
    return "" if view == ORDERED else f"{view}/"


def caption_set_scores(
    clips: dict[str, ClipResult], meteor: bool = True, language: str | None = None
) -> SetScores:
    """pycocoevalcap's figures over the set (tokenized as ``language`` needs, `score_captions`), and
    the structured ones where there is ground truth."""
    predictions = {k: c.prediction for k, c in clips.items()}
    references = {k: c.references for k, c in clips.items()}
    out = SetScores(scores=score_captions(predictions, references, meteor, language))
    scores, chance, per_clip = structured_scores(predictions, {k: c.meta for k, c in clips.items()})
    out.add(SetScores(scores, chance, per_clip))
    return out


def choice_set_scores(clips: dict[str, ClipResult], view: str) -> SetScores:
    """Forced-choice accuracy (%) of ``view`` over the clips that have a choice set.

    ``choice_acc_pct`` chooses by log p(caption | video) − log p(caption | blank video) (the
    captions' prior subtracted, `forced_choice`); ``choice_raw_acc_pct`` by log p(caption | video)
    alone, for reference. Both have chance 1 / M, and per-clip credits for pairing.
    """
    keys = [k for k, c in clips.items() if view in c.choice_scores]
    if not keys:
        return SetScores()
    table = np.stack([clips[k].choice_scores[view] for k in keys])  # [C, M]
    results = {"choice_raw_acc_pct": forced_choice(table)}
    if all(clips[k].choice_prior is not None for k in keys):
        results["choice_acc_pct"] = forced_choice(
            table, prior=np.stack([clips[k].choice_prior for k in keys])
        )
    return SetScores(
        scores={name: 100.0 * r.accuracy for name, r in results.items()},
        chance={name: 100.0 * r.chance for name, r in results.items()},
        per_clip={name: dict(zip(keys, r.credit.tolist(), strict=True)) for name, r in results.items()},
    )


def similarity_matrix(clips: dict[str, ClipResult], view: str = ORDERED) -> tuple[np.ndarray, list[int]]:
    """Caption × video cosine similarity float [C, V] (clips in key order) and each caption's video."""
    keys = list(clips)
    videos = np.stack([_embedding(clips[k], view) for k in keys])  # [V, E]
    texts = np.concatenate([clips[k].text_embeddings for k in keys])  # [C, E]
    owner = [v for v, k in enumerate(keys) for _ in range(len(clips[k].text_embeddings))]
    return texts @ videos.T, owner  # unit-norm embeddings


def retrieval_set_scores(clips: dict[str, ClipResult], view: str = ORDERED) -> SetScores:
    """R@K, MdR, MnR, mAP of ``view``; within-group accuracy where the clips carry retrieval groups."""
    similarity, owner = similarity_matrix(clips, view)
    out = SetScores(scores=retrieval_metrics(similarity, owner))
    metas = [c.meta for c in clips.values()]
    if metas and all("group" in m and "variant" in m for m in metas):
        groups = group_accuracy(similarity, owner, [m["group"] for m in metas], [m["variant"] for m in metas])
        keys = list(clips)
        correct = np.zeros(len(keys))
        np.add.at(correct, owner, groups.correct)
        counts = np.bincount(owner, minlength=len(keys))
        out.add(
            SetScores(
                scores=groups.metrics,
                chance=groups.chance,
                per_clip={"t2v_group_acc_pct": dict(zip(keys, (correct / counts).tolist(), strict=True))},
            )
        )
    return out


def _embedding(clip: ClipResult, view: str) -> np.ndarray:
    return clip.video_embedding if view == ORDERED else clip.view_embeddings[view]

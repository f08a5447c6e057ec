"""The evaluation pass: every rank runs its share of the eval shards through the model, rank 0 scores the set.

One pass over the data per rank gives, for each clip (`batch_outputs`): the generated caption,
the reference captions, the frames the selector kept, the temporal gates (temporal adapters), with
a retrieval head the video embedding of every frame view (ordered and the `eval.controls`,
`frame_views`) and one text embedding per reference, and where the sample carries SynthVid ground
truth the log-likelihood of each forced-choice candidate under every view (and, for temporal
adapters, how well the gates mark the event frames: `gate_metrics`). The clips are gathered
on rank 0 because both CIDEr's n-gram weights and retrieval ranks come from the whole set;
`set_scores` scores it. Generation is sharded by the pipeline's ``split_by_node``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from data.batch import VideoBatch
from data.frame_selector import FrameSelector
from data.loader import build_loader
from data.pipeline import build_dataset
from trainer.config import RunConfig
from trainer.distributed import DistInfo, gather_to_main
from trainer.evaluation.batch_outputs import base_model, batch_metas, batch_outputs
from trainer.evaluation.clip_results import ClipResult, EvalResult
from trainer.evaluation.frame_views import ORDERED
from trainer.evaluation.gate_metrics import gate_set_scores
from trainer.evaluation.rerank import caption_log_likelihood, rerank_top_k
from trainer.evaluation.retrieval_metrics import retrieval_metrics
from trainer.evaluation.set_scores import (
    SetScores,
    caption_set_scores,
    choice_set_scores,
    retrieval_set_scores,
    similarity_matrix,
    view_prefix,
)

TASKS = ("caption", "retrieval")


def has_retrieval_head(model: Any) -> bool:
    return getattr(base_model(model), "retrieval_head", None) is not None


@torch.no_grad()
def run_clips(
    model: Any,
    processor: Any,
    selector: FrameSelector,
    cfg: RunConfig,
    shards: str,
    limit: int,
    device: torch.device,
    dtype: torch.dtype,
    tasks: tuple[str, ...] = ("caption",),
    keep_frames: int = 0,
    show_progress: bool = True,
    synced_ranks: bool = False,
    keep_pixels: bool = False,
) -> dict[str, ClipResult]:
    """Run up to ``limit`` clips of this rank's part of ``shards`` through the model.

    ``tasks``: "caption" generates captions; "retrieval" embeds the video and its references (needs
    the model's retrieval head). ``keep_frames``: keep the candidate frames and the video Q-Former's
    attention maps of this many clips (the report's); the maps cost one more video encoding for
    the batches that hold those clips, nothing when ``keep_frames`` is 0.
    ``synced_ranks``: keep generating until every rank is done (needed when parameters are sharded
    across ranks, i.e. ZeRO-3; transformers' ``synced_gpus``). ``keep_pixels``: keep every clip's
    model-input frames (for re-ranking; K x 3 x H x W floats per clip).
    """
    data = build_dataset(
        shards,
        num_frames=cfg.data.num_candidate_frames,
        frame_size=(cfg.data.frame_size, cfg.data.frame_size),
        batch_size=cfg.eval.batch_size,
        text_fn=None,
        caption_language=cfg.data.caption_language,
        decoder=cfg.data.decoder,
        decode_timeout_s=cfg.data.decode_timeout_s,
    )
    was_training = model.training
    model.eval()
    selector.eval()  # deterministic frame choice: the same clips give the same captions
    loader = build_loader(data, 0)
    # Every rank runs the same number of forward calls (the exact-mode loader pads ranks to equal
    # batch counts): under ZeRO-3 each forward gathers parameters collectively.
    num_batches = min(len(loader), math.ceil(limit / cfg.eval.batch_size))
    clips: dict[str, ClipResult] = {}
    bar = tqdm(total=num_batches, desc="eval", unit="batch", disable=not show_progress)
    for index, batch in enumerate(itertools.islice(loader, num_batches)):
        batch = batch.to(device)
        selected = selector(batch.frames, dtype=dtype)
        # Decided by the batch's position, the same on every rank: each forward is collective under ZeRO-3.
        report_batch = index * cfg.eval.batch_size < keep_frames
        out = batch_outputs(
            model, processor, batch, selected, cfg, tasks, synced_ranks, device, attention=report_batch
        )
        metas = batch_metas(batch)
        for i, (key, is_padding) in enumerate(zip(batch.keys, batch.is_padding.tolist(), strict=True)):
            if is_padding:  # a repeat that keeps ranks in step, not another clip
                continue
            in_report = len(clips) < keep_frames
            clips[key] = ClipResult(
                prediction=out.predictions[i],
                references=batch.references[i],
                selected=selected.indices[i].tolist(),
                gates=out.gates[i],
                video_embedding=out.embeddings[ORDERED][i] if out.embeddings else None,
                text_embeddings=out.texts[i],
                meta=metas[i],
                view_embeddings={v: e[i] for v, e in out.embeddings.items() if v != ORDERED},
                choices=out.choices[i],
                choice_scores={v: c[i] for v, c in out.choice_scores.items() if c[i] is not None},
                choice_prior=out.choice_priors[i] if out.choice_priors else None,
                frames=_frames(batch, i) if in_report else None,
                attention=out.attention[i] if in_report else None,
                pixels=selected.frames[i].float().cpu().numpy() if keep_pixels else None,
                frame_scores=selected.scores[i].cpu().numpy() if keep_pixels else None,
            )
        bar.update(1)
    bar.close()
    model.train(was_training)
    selector.train(was_training)
    return dict(sorted(clips.items())[:limit])


def _frames(batch: VideoBatch, i: int) -> np.ndarray:
    return batch.frames[i].cpu().numpy()


def top_videos(
    clips: dict[str, ClipResult], similarity: np.ndarray, owner: list[int], k: int = 5
) -> dict[str, list[tuple[str, float]]]:
    """For each clip, the top-``k`` videos of its first reference caption: [(key, similarity), …]."""
    keys = list(clips)
    first = {v: c for c, v in reversed(list(enumerate(owner)))}  # video → its first caption's row
    out = {}
    for v, key in enumerate(keys):
        row = similarity[first[v]]
        order = np.argsort(-row, kind="stable")[:k]
        out[key] = [(keys[j], float(row[j])) for j in order]
    return out


def evaluate(
    model: Any,
    processor: Any,
    selector: FrameSelector,
    cfg: RunConfig,
    dist: DistInfo,
    dtype: torch.dtype,
    sharded_params: bool = False,
    shards: str | None = None,
    tasks: tuple[str, ...] | None = None,
    keep_frames: int = 0,
) -> EvalResult | None:
    """Sharded pass + scoring of ``cfg.eval.num_samples`` clips. Returns the result on rank 0, None elsewhere.

    ``tasks`` default: caption, plus retrieval when the model has a retrieval head.
    """
    if tasks is None:
        tasks = ("caption", "retrieval") if has_retrieval_head(model) else ("caption",)
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown evaluation task(s) {unknown}; choose from {TASKS}")
    if "retrieval" in tasks and not has_retrieval_head(model):
        raise ValueError(
            "retrieval evaluation needs a model trained with a retrieval head (train.contrastive_weight > 0)"
        )
    rerank = cfg.eval.rerank_top_k if "retrieval" in tasks else 0
    if rerank and sharded_params and dist.world_size > 1:
        raise ValueError(
            "eval.rerank_top_k scores pairs on rank 0 alone, which ZeRO-3's sharded parameters do not "
            "allow: evaluate with ZeRO-0/1/2 (e.g. python -m trainer.evaluation) or set eval.rerank_top_k=0"
        )
    per_rank = math.ceil(cfg.eval.num_samples / dist.world_size)
    local = run_clips(
        model,
        processor,
        selector,
        cfg,
        shards or cfg.data.eval_shards,
        per_rank,
        dist.device,
        dtype,
        tasks,
        keep_frames,
        dist.is_main,
        sharded_params and dist.world_size > 1,
        keep_pixels=rerank > 0,
    )
    gathered = gather_to_main(local)
    if gathered is None:
        return None
    merged = {key: clip for part in gathered for key, clip in part.items()}
    if not merged:
        raise RuntimeError(f"no evaluation clips could be read from {shards or cfg.data.eval_shards}")
    clips = {k: merged[k] for k in sorted(merged)[: cfg.eval.num_samples]}
    result = SetScores()
    if "caption" in tasks:
        result.add(caption_set_scores(clips, cfg.eval.meteor, cfg.data.caption_language))
    result.add(gate_set_scores(clips, cfg.data.num_candidate_frames))  # temporal adapters only
    for view in (ORDERED, *cfg.eval.controls):
        result.add(choice_set_scores(clips, view), view_prefix(view))
        if "retrieval" in tasks:
            result.add(retrieval_set_scores(clips, view), view_prefix(view))
    rankings: dict[str, list[tuple[str, float]]] = {}
    if "retrieval" in tasks:
        similarity, owner = similarity_matrix(clips)
        rankings = top_videos(clips, similarity, owner)
        if rerank:
            reranked = rerank_top_k(similarity, rerank, _pair_likelihood(model, processor, clips, cfg, dtype))
            t2v = {k: v for k, v in retrieval_metrics(reranked, owner).items() if k.startswith("t2v")}
            result.scores.update({f"rerank_{k}": v for k, v in t2v.items()})
    return EvalResult(result.scores, clips, tuple(tasks), rankings, result.chance, result.per_clip)


def _pair_likelihood(
    model: Any, processor: Any, clips: dict[str, ClipResult], cfg: RunConfig, dtype: torch.dtype
) -> Callable[[list[tuple[int, int]]], np.ndarray]:
    """log p(caption | video) for (caption row, video column) pairs of ``similarity_matrix``'s matrix."""
    keys = list(clips)
    captions = [ref for key in keys for ref in clips[key].references]  # the similarity's row order
    device = next(model.parameters()).device

    def score(pairs: list[tuple[int, int]]) -> np.ndarray:
        was_training = model.training
        model.eval()
        out = []
        for start in tqdm(range(0, len(pairs), cfg.eval.batch_size), desc="rerank", unit="batch"):
            chunk = [clips[keys[v]] for _, v in pairs[start : start + cfg.eval.batch_size]]
            pixels = torch.from_numpy(np.stack([c.pixels for c in chunk])).to(device, dtype)
            frame_scores = torch.from_numpy(np.stack([c.frame_scores for c in chunk])).to(device)
            texts = [captions[c] for c, _ in pairs[start : start + cfg.eval.batch_size]]
            out.append(caption_log_likelihood(model, processor, texts, pixels, frame_scores))
        model.train(was_training)
        return np.concatenate(out)

    return score


def log_eval_result(tracker: Any, result: EvalResult, step: int) -> dict[str, float]:
    """Log an in-training evaluation: ``eval/<metric>`` at ``step`` and every clip's caption as
    ``eval/captions_step<step>.json``. Returns the logged scores."""
    scores = {f"eval/{k}": v for k, v in result.scores.items()}
    tracker.log({**scores, **{f"eval/chance/{k}": v for k, v in result.chance.items()}}, step=step)
    captions = {k: {"prediction": c.prediction, "references": c.references} for k, c in result.clips.items()}
    tracker.log_dict(captions, f"eval/captions_step{step}.json")
    if result.per_clip:
        tracker.log_dict(result.per_clip, f"eval/per_clip_step{step}.json")
    return scores

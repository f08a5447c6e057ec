"""Captioning evaluation: every rank captions its share of the eval shards, rank 0 scores the set.

Generation is sharded by the pipeline's ``split_by_node``; the captions are gathered on rank 0
because CIDEr's n-gram weights come from the whole reference set (see caption_metrics).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from tqdm import tqdm

from data.frame_selector import FrameSelector
from data.pipeline import build_dataset, build_loader
from trainer.caption_metrics import score_captions
from trainer.config import RunConfig
from trainer.distributed import DistInfo, gather_to_main

Captions = dict[str, tuple[str, list[str]]]  # clip key → (prediction, references)


@torch.no_grad()
def generate_captions(
    model: Any,
    processor: Any,
    selector: FrameSelector,
    cfg: RunConfig,
    limit: int,
    device: torch.device,
    dtype: torch.dtype,
    show_progress: bool = True,
    synced_ranks: bool = False,
) -> Captions:
    """Caption up to ``limit`` clips of this rank's part of ``cfg.data.eval_shards``.

    ``synced_ranks``: keep generating until every rank is done (needed when parameters are
    sharded across ranks, i.e. ZeRO-3; transformers' ``synced_gpus``).
    """
    data = build_dataset(
        cfg.data.eval_shards,
        num_frames=cfg.data.num_candidate_frames,
        frame_size=(cfg.data.frame_size, cfg.data.frame_size),
        batch_size=cfg.eval.batch_size,
        text_fn=None,
    )
    was_training = model.training
    model.eval()
    selector.eval()  # deterministic frame choice: the same clips give the same captions
    loader = build_loader(data, 0)
    # Every rank runs the same number of generate calls (the exact-mode loader pads ranks to equal
    # batch counts): under ZeRO-3 each forward gathers parameters collectively.
    num_batches = min(len(loader), math.ceil(limit / cfg.eval.batch_size))
    captions: Captions = {}
    bar = tqdm(total=num_batches, desc="eval", unit="batch", disable=not show_progress)
    for batch in itertools.islice(loader, num_batches):
        batch = batch.to(device)
        selected = selector(batch.frames, dtype=dtype)
        prompt = {k: v.to(device) for k, v in processor.generation_inputs(batch.batch_size).items()}
        generated = model.generate(
            pixel_values=selected.frames,
            frame_scores=selected.scores,
            max_new_tokens=cfg.eval.max_new_tokens,
            num_beams=cfg.eval.num_beams,
            do_sample=False,
            synced_gpus=synced_ranks,
            **prompt,
        )
        rows = zip(
            batch.keys, processor.decode(generated), batch.references, batch.is_padding.tolist(), strict=True
        )
        for key, text, refs, is_padding in rows:
            if not is_padding:  # a repeat that keeps ranks in step, not another clip
                captions[key] = (text, refs)
        bar.update(1)
    bar.close()
    model.train(was_training)
    selector.train(was_training)
    return dict(sorted(captions.items())[:limit])


def evaluate_captions(
    model: Any,
    processor: Any,
    selector: FrameSelector,
    cfg: RunConfig,
    dist: DistInfo,
    dtype: torch.dtype,
    sharded_params: bool = False,
) -> tuple[dict[str, float], Captions] | None:
    """Sharded generation + scoring. Returns (scores, captions) on rank 0, None on the others."""
    per_rank = math.ceil(cfg.eval.num_samples / dist.world_size)
    local = generate_captions(
        model,
        processor,
        selector,
        cfg,
        per_rank,
        dist.device,
        dtype,
        dist.is_main,
        sharded_params and dist.world_size > 1,
    )
    gathered = gather_to_main(local)
    if gathered is None:
        return None
    merged = {key: pair for part in gathered for key, pair in part.items()}
    keep = sorted(merged)[: cfg.eval.num_samples]
    captions = {k: merged[k] for k in keep}
    scores = score_captions(
        {k: p for k, (p, _) in captions.items()}, {k: r for k, (_, r) in captions.items()}
    )
    return scores, captions

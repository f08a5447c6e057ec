"""The streaming pipeline: WebDataset video shards → decoded, tokenized, padded `VideoBatch`es.

Stages (open_clip's order)::

    shard list ─ split_by_node ─ split_by_worker ─ tar → samples ─ shuffle ─ decode + tokenize ─ batch
    (brace pattern, list or directory; resampled mode draws shards with replacement instead of splitting)

Bad data never kills a worker: a sample that cannot be used is skipped, logged once with its key
and shard, and counted by reason; each batch carries the counts its worker gathered since its
previous batch (`VideoBatch.bad_samples`), so the numbers reach the training process even from
DataLoader worker processes.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch
import webdataset as wds
from webdataset.filters import _shuffle
from webdataset.shardlists import expand_urls
from webdataset.utils import make_seed, pytorch_worker_info

from data.video_io import VideoDecodeError, decode_frames

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # labels with this value are left out of the loss (torch/transformers convention)
TextFn = Callable[[str], dict[str, torch.Tensor]]


@dataclass
class VideoBatch:
    """One batch of B clips with N frames each.

    Attributes:
        frames: uint8 [B, N, 3, H, W] RGB.
        input_ids: long [B, L] right-padded token ids, or None without a text_fn (evaluation).
        attention_mask: long [B, L], 1 on tokens, 0 on padding, or None.
        labels: long [B, L], -100 on padding (and wherever text_fn put -100), or None.
        captions: the B reference captions.
        keys: the B sample keys.
        bad_samples: reason → count of samples the producing worker skipped since its previous batch.
        metas: the B samples' json metadata (ground truth for SynthVid), {} where absent.
    """

    frames: torch.Tensor
    input_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None
    labels: torch.Tensor | None
    captions: list[str]
    keys: list[str]
    bad_samples: dict[str, int] = field(default_factory=dict)
    metas: list[dict[str, Any]] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return self.frames.shape[0]

    @property
    def num_frames(self) -> int:
        return self.frames.shape[1]

    def _map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> VideoBatch:
        names = ("frames", "input_ids", "attention_mask", "labels")
        moved = {n: fn(getattr(self, n)) for n in names if getattr(self, n) is not None}
        return dataclasses.replace(self, **moved)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> VideoBatch:
        """A copy with every tensor on `device` (lists and counts stay as they are)."""
        return self._map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> VideoBatch:
        """Called by DataLoader(pin_memory=True) for custom batch types."""
        return self._map_tensors(lambda t: t.pin_memory())


def expand_shards(shards: str | list[str]) -> list[str]:
    """Shard paths from a brace pattern ('dir/{00000..00003}.tar'), a list, or a directory (its *.tar, sorted)."""
    if isinstance(shards, (list, tuple)):
        urls = [str(s) for s in shards]
    elif os.path.isdir(shards):
        urls = sorted(glob.glob(os.path.join(shards, "*.tar")))
    else:
        urls = expand_urls(str(shards))
    if not urls:
        raise ValueError(f"no shards found in {shards!r}")
    # Fail here, not in a worker: local paths must exist (URLs and "pipe:" commands are left to webdataset).
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.exists(u)]
    if missing:
        raise ValueError(f"{len(missing)} of {len(urls)} shards not found, e.g. {missing[0]!r}")
    return urls


def world_size() -> int:
    """Number of training processes: torch.distributed if initialised, else env WORLD_SIZE, else 1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


class BadSampleCounter:
    """Counts skipped samples by reason inside one worker; the collate stage drains the counts.

    The tar reader's handler and the decode stage share one instance: both sit in the same
    pipeline object, which each DataLoader worker receives (and unpickles) as a whole.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def skip(self, reason: str, key: str, url: str, detail: str = "") -> None:
        self.counts[reason] += 1
        logger.warning("skipping sample %s in %s: %s %s", key, url, reason, detail)

    def tar_handler(self, exn: Exception) -> bool:
        """webdataset handler for unreadable shards (missing, truncated, duplicate names): count, continue."""
        self.counts["tar_error"] += 1
        logger.warning("tar_error, continuing with the next shard or file: %r", exn)
        return True

    def drain(self) -> dict[str, int]:
        counts, self.counts = dict(self.counts), Counter()
        return counts


class DecodeSample:
    """Sample dict from a tar → dict(frames uint8 [N,3,H,W], caption, key, meta[, input_ids, labels]).

    Returns None (the sample is dropped by `wds.map`) for unusable samples, after counting them.
    Checks the cheap caption first so broken samples cost no video decoding.
    """

    def __init__(
        self, num_frames: int, frame_size: tuple[int, int], text_fn: TextFn | None, bad: BadSampleCounter
    ):
        self.num_frames = num_frames
        self.frame_size = tuple(frame_size)
        self.text_fn = text_fn
        self.bad = bad

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any] | None:
        key, url = sample.get("__key__", "?"), sample.get("__url__", "?")
        if "mp4" not in sample:
            return self.bad.skip("missing_video", key, url)
        if "txt" not in sample:
            return self.bad.skip("missing_caption", key, url)
        try:
            caption = sample["txt"].decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            return self.bad.skip("bad_caption_encoding", key, url, str(exc))
        if not caption:
            return self.bad.skip("empty_caption", key, url)
        try:
            frames = decode_frames(sample["mp4"], self.num_frames, self.frame_size)
        except VideoDecodeError as exc:
            return self.bad.skip("decode_error", key, url, str(exc))
        try:
            meta = json.loads(sample["json"]) if "json" in sample else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            meta = {}  # the json is informative only; a broken one is no reason to lose the clip
        out = {"frames": frames, "caption": caption, "key": key, "meta": meta}
        if self.text_fn is not None:
            # A text_fn error is a bug in the tokenizer set-up, not bad data: let it surface.
            tokens = self.text_fn(caption)
            input_ids, labels = tokens["input_ids"], tokens["labels"]
            if input_ids.ndim != 1 or input_ids.shape != labels.shape:
                raise ValueError(
                    f"text_fn must return 1-D input_ids and labels of one length, got "
                    f"{tuple(input_ids.shape)} and {tuple(labels.shape)}"
                )
            out.update(input_ids=input_ids.long(), labels=labels.long())
        return out


class Collate:
    """List of decoded samples → `VideoBatch`, right-padding the token sequences to the longest."""

    def __init__(self, pad_token_id: int, bad: BadSampleCounter):
        self.pad_token_id = pad_token_id
        self.bad = bad

    def __call__(self, samples: list[dict[str, Any]]) -> VideoBatch:
        input_ids = attention_mask = labels = None
        if "input_ids" in samples[0]:
            lengths = torch.tensor([len(s["input_ids"]) for s in samples])
            width = int(lengths.max())
            input_ids = torch.full((len(samples), width), self.pad_token_id, dtype=torch.long)
            labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
            for row, s in enumerate(samples):
                input_ids[row, : len(s["input_ids"])] = s["input_ids"]
                labels[row, : len(s["labels"])] = s["labels"]
            attention_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        return VideoBatch(
            frames=torch.stack([s["frames"] for s in samples]),
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            captions=[s["caption"] for s in samples],
            keys=[s["key"] for s in samples],
            bad_samples=self.bad.drain(),
            metas=[s["meta"] for s in samples],
        )


class WorkerShuffle(wds.PipelineStage):
    """Sample shuffle buffer seeded by (seed, epoch, rank, worker): reproducible, different per worker."""

    def __init__(self, bufsize: int, seed: int):
        self.bufsize, self.seed, self.epoch = bufsize, seed, -1

    def run(self, src: Iterator[dict]) -> Iterator[dict]:
        self.epoch += 1
        rank, _, worker, _ = pytorch_worker_info()
        # ints only: make_seed uses hash(), which is salted per process for strings
        rng = random.Random(make_seed(self.seed, self.epoch, rank, worker))
        return _shuffle(src, self.bufsize, min(self.bufsize, 100), rng=rng)


class ShardList(torch.utils.data.IterableDataset):
    """Yields dict(url=...) for each shard: in order, or permuted by (seed, epoch, cycle) when shuffling.

    The permutation depends on nothing rank- or worker-specific, so every rank and worker sees the
    same order and `split_by_node` / `split_by_worker` still partition the shards. With
    `cycle=True` the list repeats without end (an epoch is then cut by sample count), so batches
    keep filling across the end of the shard list instead of ending in a partial one.
    """

    def __init__(self, urls: list[str], *, shuffle: bool, seed: int, cycle: bool):
        super().__init__()
        self.urls, self.shuffle, self.seed, self.cycle = urls, shuffle, seed, cycle
        self.epoch = -1  # advanced by each __iter__, i.e. each epoch of a persistent worker

    def __iter__(self) -> Iterator[dict[str, str]]:
        self.epoch += 1
        passes = itertools.count() if self.cycle else range(1)
        for one_pass in passes:
            urls = list(self.urls)
            if self.shuffle:
                random.Random(make_seed(self.seed, self.epoch, one_pass)).shuffle(urls)
            yield from ({"url": url} for url in urls)


class VideoDataPipeline(wds.DataPipeline):
    """`wds.DataPipeline` that remembers its shards and caps an epoch at `epoch_samples` in all.

    The cap is split over ranks x workers when iteration starts, because only then is the number
    of DataLoader workers known.
    """

    def __init__(
        self, *stages, shard_urls: list[str], resampled: bool, batch_size: int, epoch_samples: int | None
    ):
        super().__init__(*stages)
        self.shard_urls, self.resampled = shard_urls, resampled
        self.batch_size, self.epoch_samples = batch_size, epoch_samples

    def __iter__(self) -> Iterator[VideoBatch]:
        if self.epoch_samples is None:
            return self.iterator()
        _, world, _, workers = pytorch_worker_info()
        batches = math.ceil(self.epoch_samples / (self.batch_size * world * workers))
        return islice(self.iterator(), batches)


def build_dataset(
    shards: str | list[str],
    *,
    num_frames: int,
    frame_size: tuple[int, int],
    batch_size: int,
    text_fn: TextFn | None,
    pad_token_id: int = 0,
    shuffle_buffer: int = 0,
    seed: int = 0,
    resampled: bool = False,
    epoch_samples: int | None = None,
    partial_batches: bool = True,
) -> VideoDataPipeline:
    """Build the streaming dataset; iterate it directly or through `build_loader`.

    Args:
        shards: brace pattern, list of paths, or a directory holding *.tar shards.
        num_frames: N frames decoded per clip, uniform over the clip.
        frame_size: (H, W) the frames are decoded at.
        batch_size: B clips per `VideoBatch`.
        text_fn: caption → {"input_ids": long [L], "labels": long [L]}; None leaves the batch's
            token fields None (evaluation).
        pad_token_id: id used to right-pad input_ids.
        shuffle_buffer: samples held in the shuffle buffer (0: no shuffling, shards in order).
        seed: seeds shard order, sample shuffle and shard resampling; same seed → same order.
        resampled: draw shards with replacement per worker (endless stream; pair with epoch_samples).
        epoch_samples: samples per epoch over all ranks and workers; the shards are cycled to fill it
            (the stream is endless then: a shard set with no usable sample would spin).
        partial_batches: yield the last, smaller batch of a worker's stream.

    Returns:
        An IterableDataset of `VideoBatch` (frames uint8 [B, N, 3, H, W]).
    """
    urls = expand_shards(shards)
    bad = BadSampleCounter()
    if resampled:
        # Each worker of each rank draws from all shards with its own (seed, rank, worker) stream,
        # so there is nothing to split.
        stages: list[Any] = [wds.ResampledShards(urls, seed=seed, deterministic=True)]
    else:
        stages = [
            ShardList(urls, shuffle=shuffle_buffer > 0, seed=seed, cycle=epoch_samples is not None),
            wds.split_by_node,
            wds.split_by_worker,
        ]
    stages.append(wds.tarfile_to_samples(handler=bad.tar_handler))
    if shuffle_buffer > 0:
        stages.append(WorkerShuffle(shuffle_buffer, seed))
    stages.append(wds.map(DecodeSample(num_frames, frame_size, text_fn, bad)))
    stages.append(wds.batched(batch_size, collation_fn=Collate(pad_token_id, bad), partial=partial_batches))
    return VideoDataPipeline(
        *stages, shard_urls=urls, resampled=resampled, batch_size=batch_size, epoch_samples=epoch_samples
    )


def build_loader(
    dataset: VideoDataPipeline, num_workers: int, pin_memory: bool = False, prefetch_factor: int | None = None
) -> torch.utils.data.DataLoader:
    """DataLoader over a `build_dataset` pipeline (batching already happened there: batch_size=None).

    Raises:
        ValueError: fewer shards than workers × ranks without resampling: some workers would get
            no shard and the ranks would see different numbers of batches (a hang at the next
            collective).
    """
    ranks = world_size()
    if not dataset.resampled and len(dataset.shard_urls) < max(num_workers, 1) * ranks:
        raise ValueError(
            f"{len(dataset.shard_urls)} shards cannot feed {max(num_workers, 1)} workers x {ranks} ranks: "
            "write more (smaller) shards, lower num_workers, or use resampled=True"
        )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
    )

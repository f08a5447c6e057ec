"""The streaming pipeline: WebDataset video shards → decoded, tokenized, padded `VideoBatch`es.

Stages (open_clip's order), built per epoch and per DataLoader worker::

    shards for this (rank, worker) ─ tar → samples ─ shuffle ─ skip what a resumed run has seen
        ─ decode + tokenize ─ batch

Three ways to cut the stream into epochs (`build_dataset` arguments):

- exact (default): every sample exactly once per epoch over R ranks x W workers. Shards are
  split over the R*W slots by their sample counts (`data.shards.assign_shards`; counts from the
  shards' stats json or their tar headers), in an order shuffled per epoch. Every rank yields the
  same number of batches K per epoch, K = the largest planned count of any rank; a rank that runs
  out first (fewer samples, or bad ones) repeats its last batch with ``is_padding`` set, as
  torch's DistributedSampler repeats samples. So no rank waits at a collective for a batch that
  never comes, and consumers that must not count a sample twice (evaluation) drop padding rows.
- cycle (``epoch_samples``): each slot cycles through its shards, reshuffled each pass, and an
  epoch is ``epoch_samples`` samples over all ranks (webdataset's ``with_epoch``).
- resampled (``resampled=True`` + ``epoch_samples``): each slot draws shards with replacement.

Shuffling is deterministic: shard order from (seed, epoch), the sample buffer from (seed, epoch,
rank, worker). The `VideoLoader` returned by `data.loader.build_loader` keeps a `StreamState` (epoch, batches
yielded this epoch, samples seen, and for each worker how far it got). The trainer stores
``loader.state_dict()`` in its checkpoint and, on resume, calls ``loader.load_state_dict(...)``
(or passes ``build_dataset(..., start_state=...)``) before iterating: the epoch then continues
where it stopped, the samples already seen are skipped before they are decoded.

Bad data never kills a worker: a sample that cannot be used is skipped, logged once with its key
and shard, and counted by reason; each batch carries the counts its worker gathered since its
previous batch (`VideoBatch.bad_samples`), so the numbers reach the training process even from
DataLoader worker processes. A shard that cannot be read is named in the log and counted as
``tar_error``.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import logging
import math
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch
import webdataset as wds
from webdataset.filters import _shuffle
from webdataset.shardlists import expand_urls
from webdataset.utils import make_seed

from data.batch import Collate, VideoBatch
from data.languages import check_language_code
from data.samples import BadSampleCounter, DecodeSample, TextFn
from data.shards import assign_shards, shard_sample_count

logger = logging.getLogger(__name__)


@dataclass
class StreamState:
    """Where a `VideoLoader` is in its sample stream; small, JSON-able, per rank.

    Attributes:
        epoch: the current epoch (0-based).
        batches: batches this rank yielded in the current epoch, padding included.
        samples: real (non-padding) samples this rank yielded since the run began.
        ranks, workers: the layout the positions belong to; a resumed run with another layout
            restarts the current epoch at its beginning (positions would not mean anything).
        positions: worker → [samples consumed from its shuffled stream, batches it made] this epoch.
    """

    epoch: int = 0
    batches: int = 0
    samples: int = 0
    ranks: int = 1
    workers: int = 1
    positions: dict[int, list[int]] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        """Plain types only (JSON keys are strings), to store in a checkpoint's client_state."""
        out = dataclasses.asdict(self)
        out["positions"] = {str(k): list(v) for k, v in self.positions.items()}
        return out

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> StreamState:
        state = dict(state)
        state["positions"] = {int(k): list(v) for k, v in state.get("positions", {}).items()}
        return cls(**state)


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


def rank() -> int:
    """This process's rank: torch.distributed if initialised, else env RANK, else 0."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def _number_and_skip(samples: Iterable[dict], skip: int) -> Iterator[dict]:
    """Number the shuffled stream from 1 and drop its first `skip` samples before they are decoded."""
    for pos, sample in enumerate(samples, start=1):
        if pos > skip:
            sample["__pos__"] = pos
            yield sample


class VideoDataPipeline(torch.utils.data.IterableDataset):
    """The dataset `build_dataset` returns: iterates one epoch of one (rank, worker) slot per `iter()`.

    `VideoLoader` sets `epoch`, `rank`, `world` and `resume` before each epoch (they travel to the
    DataLoader workers, which are started per epoch); iterated directly, the dataset reads rank
    and world size from torch.distributed or the environment.
    """

    def __init__(
        self,
        urls: list[str],
        counts: list[int] | None,
        *,
        decode: DecodeSample,
        collate: Collate,
        bad: BadSampleCounter,
        batch_size: int,
        shuffle_buffer: int,
        seed: int,
        resampled: bool,
        epoch_samples: int | None,
        partial_batches: bool,
        start_state: StreamState | None,
    ):
        super().__init__()
        self.shard_urls, self.counts = urls, counts
        self.decode, self.collate, self.bad = decode, collate, bad
        self.batch_size, self.shuffle_buffer, self.seed = batch_size, shuffle_buffer, seed
        self.resampled, self.epoch_samples, self.partial = resampled, epoch_samples, partial_batches
        self.mode = "resampled" if resampled else "cycle" if epoch_samples is not None else "exact"
        self.start_state = start_state
        self.epoch = start_state.epoch if start_state else 0
        self.rank: int | None = None
        self.world: int | None = None
        self.resume: dict[int, list[int]] = {}

    # ------------------------------------------------------------------ planning (pure functions of epoch)
    def plan(self, epoch: int, slots: int) -> list[list[int]]:
        """Shard indices of each of `slots` (= ranks x workers, slot = rank * workers + worker)."""
        order = list(range(len(self.shard_urls)))
        if self.shuffle_buffer > 0:
            random.Random(make_seed(self.seed, epoch)).shuffle(order)
        counts = self.counts if self.counts is not None else [1] * len(order)
        return assign_shards(counts, slots, order)

    def worker_batches(self, epoch: int, world: int, workers: int) -> list[int]:
        """Planned batches of every slot this epoch (a worker may make fewer when samples are bad)."""
        slots = world * workers
        if self.mode != "exact":
            return [math.ceil(self.epoch_samples / (self.batch_size * slots))] * slots
        per_slot = [sum(self.counts[i] for i in shards) for shards in self.plan(epoch, slots)]
        rounding = math.ceil if self.partial else math.floor
        return [int(rounding(n / self.batch_size)) for n in per_slot]

    def epoch_batches(self, epoch: int, world: int, workers: int) -> int:
        """K: the batches every rank yields this epoch (the largest planned count of any rank)."""
        planned = self.worker_batches(epoch, world, workers)
        return max(sum(planned[r * workers : (r + 1) * workers]) for r in range(world))

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[VideoBatch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank_ = rank() if self.rank is None else self.rank
        world = world_size() if self.world is None else self.world
        return self.iter_slot(self.epoch, rank_, world, worker, workers, self.resume.get(worker))

    def _shard_source(self, epoch: int, slot: int, slots: int) -> Iterator[dict[str, str]]:
        if self.mode == "resampled":
            # webdataset's resampler; its worker seed is the slot, so every (rank, worker) draws its own stream.
            return iter(
                wds.ResampledShards(
                    self.shard_urls,
                    seed=make_seed(self.seed, epoch),
                    worker_seed=lambda: slot,
                    deterministic=True,
                )
            )
        mine = [self.shard_urls[i] for i in self.plan(epoch, slots)[slot]]
        if self.mode == "exact":
            return iter([{"url": u} for u in mine])
        return self._cycle(mine, epoch, slot)

    def _cycle(self, urls: list[str], epoch: int, slot: int) -> Iterator[dict[str, str]]:
        for one_pass in itertools.count():
            order = list(urls)
            if self.shuffle_buffer > 0:
                random.Random(make_seed(self.seed, epoch, slot, one_pass)).shuffle(order)
            yield from ({"url": u} for u in order)

    def iter_slot(
        self,
        epoch: int,
        rank_: int,
        world: int,
        worker: int,
        workers: int,
        resume: list[int] | None = None,
    ) -> Iterator[VideoBatch]:
        """One epoch of batches of slot (rank, worker), continuing after `resume` = [samples, batches]."""
        slot, slots = rank_ * workers + worker, world * workers
        skip, done = resume if resume else (0, 0)
        source = self._shard_source(epoch, slot, slots)
        stages: list[Any] = [
            lambda: source,
            wds.tarfile_to_samples(handler=self.bad.tar_handler),
        ]
        if self.shuffle_buffer > 0:
            # ints only: make_seed uses hash(), which is salted per process for strings
            rng = random.Random(make_seed(self.seed, epoch, rank_, worker))
            stages.append(
                lambda src: _shuffle(src, self.shuffle_buffer, min(self.shuffle_buffer, 100), rng=rng)
            )
        stages += [
            lambda src: _number_and_skip(src, skip),
            wds.map(self.decode),
            wds.batched(self.batch_size, collation_fn=self.collate, partial=self.partial),
        ]
        # The plan caps every mode: a shard holding more samples than its stats say cannot make
        # one rank yield more batches than the others.
        remaining = self.worker_batches(epoch, world, workers)[slot] - done
        for n, batch in enumerate(islice(wds.DataPipeline(*stages), max(remaining, 0)), start=done + 1):
            batch.worker, batch.worker_batches = worker, n
            yield batch


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
    sample_fps: float | None = None,
    start_state: StreamState | dict[str, Any] | None = None,
    caption_language: str | None = None,
    decoder: str = "decord",
    decode_timeout_s: float | None = None,
) -> VideoDataPipeline:
    """Build the streaming dataset; iterate it through `build_loader` (or directly, one process).

    Args:
        shards: brace pattern, list of paths, or a directory holding *.tar shards.
        num_frames: N frames decoded per clip, uniform over the clip (or `sample_fps` apart).
        frame_size: (H, W) the frames are decoded at.
        batch_size: B clips per `VideoBatch`.
        text_fn: caption → {"input_ids": long [L], "labels": long [L]}; None leaves the batch's
            token fields None (evaluation).
        pad_token_id: id used to right-pad input_ids.
        shuffle_buffer: samples held in the shuffle buffer (0: no shuffling, shards in order).
        seed: seeds shard order, sample shuffle and shard resampling; same seed → same order.
        resampled: draw shards with replacement per worker (endless stream; needs epoch_samples).
        epoch_samples: samples per epoch over all ranks and workers (cycle or resampled mode; the
            stream is endless then: a shard set with no usable sample would spin); None: exact
            mode, one pass over every sample (needs local shards or stats files to count them).
        partial_batches: yield the last, smaller batch of a worker's stream (exact mode: needed for
            every sample to come out; without it up to B-1 samples per worker are left out).
        sample_fps: decode frames at this rate centred in the clip instead of uniformly.
        start_state: a `StreamState` (or its state_dict) from a checkpoint: continue that stream.
        caption_language: ISO 639-1 code: captions and references from the json's
            ``captions_by_language`` (`data.languages`); samples without it are skipped and counted
            (``missing_language``). None: the ``txt`` caption and the json's ``captions``.
        decoder: the video decoder (`data.decoders`: decord, pyav).
        decode_timeout_s: seconds one sample's decode may take; a slower one is skipped and counted
            (``decode_timeout``) and the worker goes on (`data.decode_guard`). None or 0: unbounded.

    Returns:
        An IterableDataset of `VideoBatch` (frames uint8 [B, N, 3, H, W]).
    """
    if resampled and epoch_samples is None:
        raise ValueError("resampled=True draws shards without end: set epoch_samples")
    if caption_language is not None:
        check_language_code(caption_language, "caption_language")  # before any shard is listed
    urls = expand_shards(shards)
    counts = None
    if not resampled:
        counts = [shard_sample_count(u) for u in urls]
        unknown = [u for u, c in zip(urls, counts, strict=True) if c is None]
        if unknown and epoch_samples is None:
            raise ValueError(
                f"exact epochs need each shard's sample count, unknown for {len(unknown)} shards "
                f"(e.g. {unknown[0]!r}: remote and without a local _stats.json); "
                "set epoch_samples (optionally with resampled=True)"
            )
        counts = [1 if c is None else c for c in counts]
    bad = BadSampleCounter()
    if isinstance(start_state, dict):
        start_state = StreamState.from_dict(start_state)
    return VideoDataPipeline(
        urls,
        counts,
        decode=DecodeSample(
            num_frames, frame_size, text_fn, bad, sample_fps, caption_language, decoder, decode_timeout_s
        ),
        collate=Collate(pad_token_id, bad),
        bad=bad,
        batch_size=batch_size,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        resampled=resampled,
        epoch_samples=epoch_samples,
        partial_batches=partial_batches,
        start_state=start_state,
    )

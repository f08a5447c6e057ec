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
rank, worker). The `VideoLoader` returned by `build_loader` keeps a `StreamState` (epoch, batches
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
import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch
import webdataset as wds
from webdataset.filters import _shuffle
from webdataset.shardlists import expand_urls
from webdataset.utils import make_seed

from batch_contract import right_pad
from data.shards import assign_shards, shard_sample_count
from data.video_io import VideoDecodeError, decode_frames

logger = logging.getLogger(__name__)

TextFn = Callable[[str], dict[str, torch.Tensor]]


@dataclass
class VideoBatch:
    """One batch of B clips with N frames each.

    Attributes:
        frames: uint8 [B, N, 3, H, W] RGB.
        input_ids: long [B, L] right-padded token ids, or None without a text_fn (evaluation).
        attention_mask: long [B, L], 1 on tokens, 0 on padding, or None.
        labels: long [B, L], -100 on padding (and wherever text_fn put -100), or None.
        captions: the B captions trained on (each sample's first reference).
        keys: the B sample keys.
        bad_samples: reason → count of samples the producing worker skipped since its previous batch.
        metas: the B samples' json metadata (ground truth for SynthVid), {} where absent.
        references: for each of the B samples every reference caption (json ``captions``, else
            [caption]), for caption metrics.
        is_padding: bool [B], True on rows that repeat an earlier batch so that every rank yields
            the same number of batches (exact mode); leave them out of evaluation.
        worker, stream_pos, worker_batches: which DataLoader worker made the batch, how many samples
            of its shuffled stream it had consumed by then, and its batch count this epoch (what
            `StreamState` records for resuming).
    """

    frames: torch.Tensor
    input_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None
    labels: torch.Tensor | None
    captions: list[str]
    keys: list[str]
    bad_samples: dict[str, int] = field(default_factory=dict)
    metas: list[dict[str, Any]] = field(default_factory=list)
    references: list[list[str]] = field(default_factory=list)
    is_padding: torch.Tensor | None = None
    worker: int = 0
    stream_pos: int = 0
    worker_batches: int = 0

    @property
    def batch_size(self) -> int:
        return self.frames.shape[0]

    @property
    def num_frames(self) -> int:
        return self.frames.shape[1]

    def _map_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> VideoBatch:
        names = ("frames", "input_ids", "attention_mask", "labels", "is_padding")
        moved = {n: fn(getattr(self, n)) for n in names if getattr(self, n) is not None}
        return dataclasses.replace(self, **moved)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> VideoBatch:
        """A copy with every tensor on `device` (lists and counts stay as they are)."""
        return self._map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> VideoBatch:
        """Called by DataLoader(pin_memory=True) for custom batch types."""
        return self._map_tensors(lambda t: t.pin_memory())


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


class BadSampleCounter:
    """Counts skipped samples by reason inside one worker; the collate stage drains the counts.

    The tar reader's handler and the decode stage share one instance: both sit in the same
    dataset object, which each DataLoader worker receives (and unpickles) as a whole.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def skip(self, reason: str, key: str, url: str, detail: str = "") -> None:
        self.counts[reason] += 1
        logger.warning("skipping sample %s in %s: %s %s", key, url, reason, detail)

    def tar_handler(self, exn: Exception) -> bool:
        """webdataset handler for unreadable shards (not a tar, truncated, duplicate names): count, go on.

        webdataset appends the shard's url to the exception's args, so the log line names it.
        """
        self.counts["tar_error"] += 1
        logger.warning("tar_error, continuing with the next shard or file: %r", exn)
        return True

    def drain(self) -> dict[str, int]:
        counts, self.counts = dict(self.counts), Counter()
        return counts


def _references(meta: dict[str, Any], caption: str) -> list[str]:
    refs = meta.get("captions")
    if isinstance(refs, list) and refs and all(isinstance(r, str) for r in refs):
        return refs
    return [caption]


class DecodeSample:
    """Sample dict from a tar → dict(frames uint8 [N,3,H,W], caption, references, key, meta[, input_ids, labels]).

    Returns None (the sample is dropped by `wds.map`) for unusable samples, after counting them.
    Checks the cheap caption first so broken samples cost no video decoding.
    """

    def __init__(
        self,
        num_frames: int,
        frame_size: tuple[int, int],
        text_fn: TextFn | None,
        bad: BadSampleCounter,
        sample_fps: float | None = None,
    ):
        self.num_frames = num_frames
        self.frame_size = tuple(frame_size)
        self.text_fn = text_fn
        self.bad = bad
        self.sample_fps = sample_fps

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
            frames = decode_frames(
                sample["mp4"], self.num_frames, self.frame_size, sample_fps=self.sample_fps
            )
        except VideoDecodeError as exc:
            return self.bad.skip("decode_error", key, url, str(exc))
        try:
            meta = json.loads(sample["json"]) if "json" in sample else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            meta = {}  # the json is informative only; a broken one is no reason to lose the clip
        if not isinstance(meta, dict):
            meta = {}
        out = {
            "frames": frames,
            "caption": caption,
            "references": _references(meta, caption),
            "key": key,
            "meta": meta,
            "pos": sample.get("__pos__", 0),
        }
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
        text = {"input_ids": None, "attention_mask": None, "labels": None}
        if "input_ids" in samples[0]:
            text = right_pad(samples, self.pad_token_id)
        return VideoBatch(
            frames=torch.stack([s["frames"] for s in samples]),
            **text,
            captions=[s["caption"] for s in samples],
            keys=[s["key"] for s in samples],
            bad_samples=self.bad.drain(),
            metas=[s["meta"] for s in samples],
            references=[s["references"] for s in samples],
            is_padding=torch.zeros(len(samples), dtype=torch.bool),
            stream_pos=samples[-1]["pos"],
        )


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

    Returns:
        An IterableDataset of `VideoBatch` (frames uint8 [B, N, 3, H, W]).
    """
    if resampled and epoch_samples is None:
        raise ValueError("resampled=True draws shards without end: set epoch_samples")
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
        decode=DecodeSample(num_frames, frame_size, text_fn, bad, sample_fps),
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


class VideoLoader:
    """A DataLoader over a `build_dataset` pipeline that yields the same number of batches on every rank.

    Each ``iter()`` is one epoch of K batches (``len(loader)``): the DataLoader's batches, cut at
    K if a shard held more than planned, then repeats of the last batch flagged ``is_padding``
    until K. `state_dict()` / `load_state_dict()` save and restore where the stream is.

    Usage in a training loop::

        loader = build_loader(build_dataset(...), num_workers)
        loader.load_state_dict(client_state["data"])   # on resume, before iterating
        for epoch in ...:
            for batch in loader: ...                   # checkpoint: client_state["data"] = loader.state_dict()
    """

    def __init__(
        self, dataset: VideoDataPipeline, num_workers: int, pin_memory: bool, prefetch_factor: int | None
    ):
        self.dataset = dataset
        self.num_workers = num_workers
        self.workers, self.ranks, self.rank = max(num_workers, 1), world_size(), rank()
        # Not persistent: workers start each epoch with the epoch and resume positions set below.
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            # Each iter() draws the workers' base seed; from a private generator that draw leaves the
            # global RNG (dropout, LoRA init) alone, so a resumed run sees the same random numbers.
            generator=torch.Generator().manual_seed(0),
        )
        self.state = StreamState(ranks=self.ranks, workers=self.workers)
        if dataset.start_state is not None:
            self.load_state_dict(dataset.start_state.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return self.state.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the stream `state` describes (from `state_dict()` of the run being resumed)."""
        restored = StreamState.from_dict(state)
        if (restored.ranks, restored.workers) != (self.ranks, self.workers):
            logger.warning(
                "data state was saved with %d ranks x %d workers, now %d x %d: epoch %d restarts at its beginning",
                restored.ranks,
                restored.workers,
                self.ranks,
                self.workers,
                restored.epoch,
            )
            restored.batches, restored.positions = 0, {}
            restored.ranks, restored.workers = self.ranks, self.workers
        self.state = restored

    def __len__(self) -> int:
        return self.dataset.epoch_batches(self.state.epoch, self.ranks, self.workers)

    def _next_epoch(self) -> None:
        self.state.epoch, self.state.batches, self.state.positions = self.state.epoch + 1, 0, {}

    def __iter__(self) -> Iterator[VideoBatch]:
        state, ds = self.state, self.dataset
        if state.batches >= len(self):  # saved right after the last batch of an epoch
            self._next_epoch()
        total = len(self)
        ds.epoch, ds.rank, ds.world = state.epoch, self.rank, self.ranks
        ds.resume = {w: list(p) for w, p in state.positions.items()}
        last: VideoBatch | None = None
        for batch in self.loader:
            if state.batches >= total:
                logger.warning(
                    "rank %d: more samples than planned in epoch %d, cut at %d batches",
                    self.rank,
                    state.epoch,
                    total,
                )
                break
            # State first, then yield: a checkpoint taken after this batch was used includes it.
            state.positions[batch.worker] = [batch.stream_pos, batch.worker_batches]
            state.batches += 1
            state.samples += batch.batch_size
            last = batch
            yield batch
        while state.batches < total:
            last = last or self._any_batch(state.epoch)
            state.batches += 1
            yield dataclasses.replace(
                last, is_padding=torch.ones(last.batch_size, dtype=torch.bool), bad_samples={}
            )
        self._next_epoch()

    def _any_batch(self, epoch: int) -> VideoBatch:
        """A batch to repeat when this process has yielded none this epoch (resumed at its very end)."""
        slots = [(self.rank, w) for w in range(self.workers)]
        slots += [(r, w) for r in range(self.ranks) for w in range(self.workers) if r != self.rank]
        for rank_, worker in slots:
            for batch in self.dataset.iter_slot(epoch, rank_, self.ranks, worker, self.workers):
                return batch
        raise RuntimeError(
            f"no readable sample in any of {len(self.dataset.shard_urls)} shards in epoch {epoch}"
        )


def build_loader(
    dataset: VideoDataPipeline, num_workers: int, pin_memory: bool = False, prefetch_factor: int | None = None
) -> VideoLoader:
    """`VideoLoader` over a `build_dataset` pipeline (batching already happened there).

    Raises:
        ValueError: fewer shards than workers × ranks without resampling: some workers would get
            no shard (write more, smaller shards, lower num_workers, or resample).
    """
    ranks = world_size()
    if not dataset.resampled and len(dataset.shard_urls) < max(num_workers, 1) * ranks:
        raise ValueError(
            f"{len(dataset.shard_urls)} shards cannot feed {max(num_workers, 1)} workers x {ranks} ranks: "
            "write more (smaller) shards, lower num_workers, or use resampled=True"
        )
    return VideoLoader(dataset, num_workers, pin_memory, prefetch_factor)

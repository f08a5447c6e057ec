"""`VideoLoader`: the DataLoader over a pipeline that gives every rank the same number of batches
per epoch and can resume mid-epoch."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import torch

from data.batch import VideoBatch
from data.pipeline import StreamState, VideoDataPipeline, rank, world_size

logger = logging.getLogger(__name__)


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

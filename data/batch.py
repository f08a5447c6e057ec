"""The batch the pipeline yields (`VideoBatch`) and the collate stage that builds it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from batch_contract import right_pad
from data.samples import BadSampleCounter


@dataclass
class VideoBatch:
    """One batch of B clips with N frames each.

    Attributes:
        frames: uint8 [B, N, 3, H, W] RGB.
        input_ids: long [B, L] right-padded token ids, or None without a text_fn (evaluation).
        attention_mask: long [B, L], 1 on tokens, 0 on padding, or None.
        labels: long [B, L], -100 on padding (and wherever text_fn put -100), or None.
        captions: the B captions trained on (each sample's first reference, in the pipeline's
            caption_language when it has one).
        keys: the B sample keys.
        bad_samples: reason → count of samples the producing worker skipped since its previous batch.
        metas: the B samples' json metadata (ground truth for SynthVid), {} where absent.
        references: for each of the B samples every reference caption (json ``captions``, else
            [caption]; the json's ``captions_by_language`` entry under a caption_language), for
            caption metrics.
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

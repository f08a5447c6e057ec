"""The temporal controls of evaluation: the same kept frames shown to the model in other orders.

A model that uses time must do worse when time is taken away, so every evaluated model is also
scored on two views of the frames the selector kept:

    ordered    the K frames in time order, as trained (the primary view)
    shuffled   the same K frames in a fixed random order per clip: what the frames show is intact,
               their order is gone
    repeated   one of the K frames (the middle one) K times: one moment, no motion at all

Forced choice also scores every candidate caption under a fourth input, ``blank``: K frames of the
mean image (zeros after normalization) with zero selector scores, a video that shows nothing. Its
log-likelihoods are the captions' language prior, which forced choice subtracts
(`forced_choice`); it is not a control view and has no figures of its own.

Each frame keeps its own selector scores (the temporal gates read them), so a view changes what the
model sees and nothing else. A temporal claim needs ordered − shuffled > 0 on a task where order
matters, and ≈ 0 on the appearance control (SynthVid `dense`).

The shuffle of a clip depends only on its key (a hash, not Python's salted ``hash``), so every model,
seed and rank sees the same permutation of the same clip: the views are paired across runs.
"""

from __future__ import annotations

import hashlib

import torch

ORDERED = "ordered"
CONTROLS = ("shuffled", "repeated")
VIEWS = (ORDERED, *CONTROLS)
BLANK = "blank"


def clip_permutation(key: str, k: int) -> torch.Tensor:
    """A permutation long [k] of the clip's K frames, fixed by its key; never the identity for k > 1."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    order = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    if k > 1 and torch.equal(order, torch.arange(k)):
        order = order.roll(1)  # the one draw that would leave time intact
    return order


def frame_view(
    view: str, frames: torch.Tensor, scores: torch.Tensor | None, keys: list[str]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model inputs of one view of a batch.

    Args:
        view: one of `VIEWS`, or `BLANK`.
        frames: [B, K, 3, H, W] the kept frames in time order.
        scores: float [B, K, S] their selector scores, or None.
        keys: the B clips' keys (they fix the shuffles).
    Returns:
        (frames [B, K, 3, H, W], scores [B, K, S] or None), frames and scores moved together.
    """
    b, k = frames.shape[:2]
    if view == ORDERED:
        return frames, scores
    if view == BLANK:
        return torch.zeros_like(frames), None if scores is None else torch.zeros_like(scores)
    if view == "shuffled":
        order = torch.stack([clip_permutation(key, k) for key in keys]).to(frames.device)  # [B, K]
    elif view == "repeated":
        order = torch.full((b, k), k // 2, dtype=torch.long, device=frames.device)
    else:
        raise ValueError(f"unknown frame view {view!r}; choose from {VIEWS}")
    rows = torch.arange(b, device=frames.device)[:, None]
    return frames[rows, order], None if scores is None else scores[rows, order.to(scores.device)]

"""Batched frame selection: score N candidate frames per clip and keep K of them.

Pure torch on whatever device the frames are on (the training GPU when there is one), with no
Python loop over frames or clips. The per-frame scores of the chosen frames are returned too:
the temporal LoRA gates read them.

Scores, each in [0, 1], for frames uint8 [B, N, 3, H, W]:
    entropy       Shannon entropy of the `bits`-bit luma histogram / bits (0: flat frame)
    scene_change  L1 distance between consecutive luma histograms / 2 (0 for the first frame)
    motion        mean |difference| of consecutive luma frames average-pooled to ~16x16, / 255
                  (0 for the first frame)

Policies map scores [B, N, 3] to sorted indices [B, K]; new ones (scene, motion, hybrid, random,
headtail) are one function each in `POLICIES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ENTROPY, SCENE_CHANGE, MOTION = 0, 1, 2  # positions in the last dimension of the scores
SCORE_NAMES = ("entropy", "scene_change", "motion")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_MOTION_GRID = 16  # motion is measured on a coarse grid: robust to noise and cheap


@dataclass
class SelectedFrames:
    """K frames chosen out of N per clip.

    Attributes:
        frames: [B, K, 3, H, W] normalized ((x/255 - mean) / std) in the requested dtype.
        indices: long [B, K] positions among the N candidates, sorted in time.
        scores: float32 [B, K, 3] (entropy, scene_change, motion) of the chosen frames, in [0, 1].
    """

    frames: torch.Tensor
    indices: torch.Tensor
    scores: torch.Tensor


def _luma(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [B, N, 3, H, W] → float32 [B, N, H, W] BT.601 luma in [0, 255]."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=frames.device, dtype=torch.float32)
    return torch.einsum("bnchw,c->bnhw", frames.float(), weights)


def _histograms(luma: torch.Tensor, bits: int) -> torch.Tensor:
    """float [B, N, H, W] luma → float32 [B, N, 2**bits] normalized histograms (sum 1)."""
    levels = 2**bits
    b, n = luma.shape[:2]
    bins = (luma * (levels / 256.0)).long().clamp_(0, levels - 1).flatten(2)  # [B, N, H*W]
    # Counts of 1.0 are exact in float32 (up to 2**24 pixels per frame), so the atomic adds that
    # scatter_add_ does on a GPU give the same result in any order.
    counts = torch.zeros(b, n, levels, device=luma.device).scatter_add_(
        2, bins, torch.ones_like(bins, dtype=torch.float32)
    )
    return counts / bins.shape[-1]


def frame_scores(frames: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Per-frame (entropy, scene_change, motion) scores.

    Args:
        frames: uint8 [B, N, 3, H, W].
        bits: luma quantization for the histograms (2**bits levels).

    Returns:
        float32 [B, N, 3], every score in [0, 1].
    """
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"expected frames [B,N,3,H,W], got {tuple(frames.shape)}")
    luma = _luma(frames)
    hist = _histograms(luma, bits)
    entropy = -torch.xlogy(hist, hist).sum(-1) / (bits * math.log(2))  # nats → bits, / the maximum (bits)

    scene = torch.zeros_like(entropy)
    scene[:, 1:] = (hist[:, 1:] - hist[:, :-1]).abs().sum(-1) / 2

    b, n, h, w = luma.shape
    pooled = F.adaptive_avg_pool2d(luma.reshape(b * n, 1, h, w), (min(h, _MOTION_GRID), min(w, _MOTION_GRID)))
    pooled = pooled.reshape(b, n, -1)
    motion = torch.zeros_like(entropy)
    motion[:, 1:] = (pooled[:, 1:] - pooled[:, :-1]).abs().mean(-1) / 255
    return torch.stack([entropy, scene, motion], dim=-1).clamp_(0.0, 1.0)


def uniform_positions(n: int, k: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Centres of k equal segments of [0, n): long [k], sorted."""
    return ((torch.arange(k, device=device) + 0.5) * (n / k)).long().clamp_(max=n - 1)


def _uniform(scores: torch.Tensor, k: int) -> torch.Tensor:
    b, n, _ = scores.shape
    return uniform_positions(n, k, scores.device).expand(b, k)


def _best_per_segment(value: torch.Tensor, k: int) -> torch.Tensor:
    """float [B, N] → long [B, K]: in each of K equal segments, the frame with the highest value.

    Frame i belongs to segment floor(i * K / N), so with K <= N every segment is non-empty. A
    [B, K, N] masked matrix replaces a loop over segments; argmax returns the first maximum, so
    ties go to the earliest frame.
    """
    b, n = value.shape
    segment = torch.arange(n, device=value.device) * k // n  # [N]
    member = segment[None, :] == torch.arange(k, device=value.device)[:, None]  # [K, N]
    masked = value[:, None, :].masked_fill(~member[None], float("-inf"))  # [B, K, N]
    return masked.argmax(-1)


def _entropy(scores: torch.Tensor, k: int) -> torch.Tensor:
    return _best_per_segment(scores[..., ENTROPY], k)


# name → policy(scores float [B, N, 3], k) → long [B, K] sorted indices
POLICIES: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {"uniform": _uniform, "entropy": _entropy}


class FrameSelector:
    """Pick K of N frames per clip by a named policy and normalize them for the vision tower.

    Args:
        k: frames to keep; clips with N <= k keep all N frames.
        policy: one of `POLICIES` ("uniform": segment centres; "entropy": the highest-entropy frame
            of each of K equal segments, i.e. content-aware but with temporal coverage).
        bits: luma quantization of the histogram scores.
        mean, std: per-channel normalization (CLIP's by default).
    """

    def __init__(self, k: int, policy: str = "uniform", bits: int = 4, mean=CLIP_MEAN, std=CLIP_STD):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if policy not in POLICIES:
            raise ValueError(f"unknown frame selection policy {policy!r}; valid: {sorted(POLICIES)}")
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        self.k, self.policy, self.bits = k, policy, bits
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> SelectedFrames:
        """frames uint8 [B, N, 3, H, W] → `SelectedFrames` with K = min(k, N), on frames.device."""
        if frames.dtype != torch.uint8:
            raise ValueError(f"expected uint8 frames, got {frames.dtype}")
        scores = frame_scores(frames, self.bits)  # [B, N, 3]
        b, n = scores.shape[:2]
        if self.k >= n:
            indices = torch.arange(n, device=frames.device).expand(b, n)
        else:
            indices = POLICIES[self.policy](scores, self.k)
        rows = torch.arange(b, device=frames.device)[:, None]
        chosen = frames[rows, indices]  # [B, K, 3, H, W] uint8: gather before converting, K <= N
        mean = torch.tensor(self.mean, device=frames.device).view(1, 1, 3, 1, 1)
        std = torch.tensor(self.std, device=frames.device).view(1, 1, 3, 1, 1)
        # normalize in float32 and cast once at the end: bf16 would round x/255 before the shift
        normalized = ((chosen.float() / 255.0 - mean) / std).to(dtype)
        return SelectedFrames(frames=normalized, indices=indices.contiguous(), scores=scores[rows, indices])

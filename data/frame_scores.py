"""Per-frame scores of candidate frames, the signals the frame selector and the temporal gates read.

Scores, each in [0, 1], for frames uint8 [B, N, 3, H, W] (order: `batch_contract.FRAME_SCORE_NAMES`):
    entropy       Shannon entropy of the `bits`-bit luma histogram / bits (0: flat frame)
    scene_change  L1 distance between consecutive luma histograms / 2 (0 for the first frame)
    motion        mean |difference| of consecutive luma frames average-pooled to ~16x16, / 255
                  (0 for the first frame)
They are computed on every s-th pixel, s chosen so that the longer side keeps at most 64 samples:
a 4-bit histogram and a 16x16 motion grid need no more, and it keeps the selector at about 1% of
the decoder's time per frame at 224x224 (measured by `benchmarks/frame_selection.py`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_MOTION_GRID = 16  # motion is measured on a coarse grid: robust to noise and cheap
_ANALYSIS_SIDE = 64  # scores look at every s-th pixel so that the longer side has <= this many


def _luma(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [B, N, 3, H, W] → float32 [B, N, h, w] BT.601 luma in [0, 255] on the analysis grid."""
    stride = max(1, math.ceil(max(frames.shape[-2:]) / _ANALYSIS_SIDE))
    # Slicing before the float conversion: only the sampled pixels are ever converted.
    rgb = frames[..., ::stride, ::stride].float()
    return rgb[:, :, 0] * 0.299 + rgb[:, :, 1] * 0.587 + rgb[:, :, 2] * 0.114


def _histograms(luma: torch.Tensor, bits: int) -> torch.Tensor:
    """float [B, N, h, w] luma → float32 [B, N, 2**bits] normalized histograms (sum 1)."""
    levels = 2**bits
    b, n = luma.shape[:2]
    bins = (luma * (levels / 256.0)).long().clamp_(0, levels - 1).flatten(2)  # [B, N, h*w]
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


def normalize_per_clip(value: torch.Tensor) -> torch.Tensor:
    """Min-max normalize float [B, N] over N, per clip; a constant clip gives zeros (never NaN)."""
    low = value.amin(1, keepdim=True)
    span = value.amax(1, keepdim=True) - low
    return torch.where(span > 1e-6, (value - low) / span.clamp_min(1e-6), torch.zeros_like(value))

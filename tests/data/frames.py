"""Candidate-frame tensors with known structure, for the frame selector and cut-detection tests."""

from __future__ import annotations

import torch


def textured_shots(n: int, cuts: list[int], size: int = 32) -> torch.Tensor:
    """uint8 [1, n, 3, size, size]: static textured shots, a hard cut (a new texture) at each cut."""
    frames = torch.empty(1, n, 3, size, size, dtype=torch.uint8)
    bounds = [0, *cuts, n]
    for shot, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        g = torch.Generator().manual_seed(shot)
        # Each shot uses a different part of the luma range, so its histogram differs from the last.
        texture = torch.randint(0, 64, (3, size, size), generator=g) + 64 * (shot % 4)
        frames[0, start:end] = texture.to(torch.uint8)
    return frames

"""Shot segmentation of candidate frames: hard cuts found on the frame scores already computed.

A hard cut changes both what the frame's luma histogram holds (`scene_change`) and where things
are (`motion`, the mean change of the 16x16 luma grid), and it does so in one step, while the
frames around it change little. So a candidate opens a new shot when

    change[i] = min(scene_change[i], motion[i])  >=  CUT_MIN_CHANGE   and
    change[i]  >=  CUT_RATIO x median(change of the CUT_WINDOW candidates on each side of i)

The minimum of the two scores keeps a camera pan (layout moves, histogram stays) and a light change
(histogram moves, layout stays) from counting as cuts; the median of the neighbours, not their
mean, keeps a cut detectable when other cuts are close by (a shot of one or two candidates), and it
adapts the bar to footage that changes a lot everywhere (the idea of PySceneDetect's
AdaptiveDetector, whose default ratio is also 3). The first candidate always opens a shot.
Gradual transitions (fades, dissolves) spread their change over several candidates and are not
found: the selector then treats the two shots as one.

Pure torch, batched over clips, no loop over frames: traceable by `torch.compile`.
"""

from __future__ import annotations

import torch

from batch_contract import MOTION, SCENE_CHANGE

CUT_MIN_CHANGE = 0.1  # a tenth of the histogram mass moves and the grid changes by 10% of the range
CUT_RATIO = 3.0
CUT_WINDOW = 3  # candidates on each side whose median change is the local background


def cut_strength(scores: torch.Tensor) -> torch.Tensor:
    """float [B, N, 3] frame scores → float [B, N]: min(scene_change, motion), 0 for frame 0."""
    return torch.minimum(scores[..., SCENE_CHANGE], scores[..., MOTION])


def detect_cuts(scores: torch.Tensor) -> torch.Tensor:
    """float [B, N, 3] frame scores → bool [B, N]: True where a candidate opens a shot (frame 0 always)."""
    change = cut_strength(scores)
    b, n = change.shape
    # Frame 0's change is 0 only because nothing precedes it, and beyond the clip's ends there is
    # nothing: there the background reads the clip's typical (median) change instead.
    typical = change[:, min(1, n - 1) :].median(1, keepdim=True).values  # [B, 1]
    padded = torch.cat(
        [typical.expand(b, CUT_WINDOW + 1), change[:, 1:], typical.expand(b, CUT_WINDOW)], dim=1
    )  # [B, N + 2w], frame i at i + w
    window = padded.unfold(1, 2 * CUT_WINDOW + 1, 1)  # [B, N, 2w + 1], centred on each candidate
    neighbours = torch.cat([window[..., :CUT_WINDOW], window[..., CUT_WINDOW + 1 :]], dim=-1)  # [B, N, 2w]
    background = neighbours.median(-1).values
    cut = (change >= CUT_MIN_CHANGE) & (change >= CUT_RATIO * background)
    first = torch.arange(n, device=scores.device) == 0
    return cut | first[None, :]


def shot_ids(scores: torch.Tensor) -> torch.Tensor:
    """float [B, N, 3] frame scores → long [B, N]: the shot of each candidate, 0, 1, … in time."""
    return detect_cuts(scores).long().cumsum(1) - 1

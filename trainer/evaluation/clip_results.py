"""What evaluation keeps of each clip and what it returns for the whole set."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ClipResult:
    """What evaluation keeps of one clip (numpy / lists only: it is pickled to rank 0).

    Attributes:
        prediction: generated caption ("" when the model emitted nothing).
        references: every reference caption.
        selected: indices of the K kept frames among the N candidates.
        gates: gated layer name → the clip's K gates (temporal adapters), else {}.
        video_embedding: float32 [E] of the ordered frames, or None (no retrieval head).
        text_embeddings: float32 [R, E], one per reference, or None.
        meta: the sample's json (SynthVid ground truth), {} where absent.
        view_embeddings: control view → float32 [E] video embedding of that view (`frame_views`).
        choices: the clip's forced-choice candidates (true caption first), [] without ground truth.
        choice_scores: frame view → float64 [M] log p(candidate | frames), {} without ground truth.
        choice_prior: float64 [M] log p(candidate | blank video), the prior forced choice subtracts;
            None without ground truth.
        frames: uint8 [N, 3, H, W] candidate frames, kept for the first clips only (the report).
        attention: float32 [Lc, Qv, K] for those clips: each video query's attention over the K
            kept frames per cross-attention layer of the video Q-Former (rows sum to 1), else None.
        pixels: float32 [K, 3, H, W] the model's input frames, kept when re-ranking needs them.
        frame_scores: float32 [K, S] their selector scores, kept with ``pixels``.
    """

    prediction: str
    references: list[str]
    selected: list[int]
    gates: dict[str, list[float]] = field(default_factory=dict)
    video_embedding: np.ndarray | None = None
    text_embeddings: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    view_embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    choices: list[str] = field(default_factory=list)
    choice_scores: dict[str, np.ndarray] = field(default_factory=dict)
    choice_prior: np.ndarray | None = None
    frames: np.ndarray | None = None
    attention: np.ndarray | None = None
    pixels: np.ndarray | None = None
    frame_scores: np.ndarray | None = None


@dataclass
class EvalResult:
    """Rank 0's result.

    Attributes:
        scores: metric name → value (controls prefixed by their view: ``shuffled/choice_acc_pct``).
        clips: the clips by key.
        tasks: the tasks run.
        rankings: for retrieval, each clip's top-5 videos [(key, similarity)].
        chance: metric name → its chance level, for the metrics that have one.
        per_clip: metric name → {clip key: value} (1/0 outcomes, NaN where it does not apply), what
            runs are paired on clip by clip.
    """

    scores: dict[str, float]
    clips: dict[str, ClipResult]
    tasks: tuple[str, ...]
    rankings: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)
    per_clip: dict[str, dict[str, float]] = field(default_factory=dict)

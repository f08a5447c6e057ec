"""Re-rank each caption's top-k retrieved videos by caption likelihood, log p(caption | video).

The contrastive head compares one pooled vector per side, which is cheap over the whole set but
coarse; the captioning model reads every video token, which is exact but costs one forward per
(caption, video) pair. So the head retrieves and the captioner re-orders its top k (text → video),
at C × k forwards for C captions instead of C × V.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from batch_contract import IGNORE_INDEX


def rerank_top_k(
    similarity: np.ndarray, k: int, log_likelihood: Callable[[list[tuple[int, int]]], np.ndarray]
) -> np.ndarray:
    """A copy of ``similarity`` float [C, V] in which each caption's top-``k`` videos are ordered by
    ``log_likelihood`` and stay above every other video (which keep their similarity order).

    ``log_likelihood(pairs)`` takes [(caption row, video column), …] and returns float [len(pairs)].
    """
    k = min(k, similarity.shape[1])
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]  # [C, k]
    pairs = [(c, int(v)) for c in range(similarity.shape[0]) for v in top[c]]
    scores = np.asarray(log_likelihood(pairs), dtype=np.float64).reshape(top.shape)
    reranked = similarity.astype(np.float64)
    # One shift for the whole matrix keeps each row's likelihood order and lifts the top k above
    # the largest similarity, so they stay the top k.
    shift = float(similarity.max()) + 1.0 - float(scores.min())
    np.put_along_axis(reranked, top, scores + shift, axis=1)
    return reranked


@torch.no_grad()
def caption_log_likelihood(
    model: torch.nn.Module,
    processor: object,
    captions: Sequence[str],
    pixel_values: torch.Tensor | None,
    frame_scores: torch.Tensor | None,
    video_features: torch.Tensor | None = None,
) -> np.ndarray:
    """Summed log-probability of each caption given its video, as the model was trained to caption.

    One forward for the whole batch; the caller chooses its size.

    Args:
        captions: P caption strings.
        pixel_values: float [P, K, 3, H, W] the paired videos' selected frames (model dtype/device),
            or None with ``video_features``.
        frame_scores: float [P, K, S] their selector scores (temporal adapters) or None.
        video_features: float [P, Qv, D] the videos already encoded (`encode_video`), which skips
            the encoder: several captions of one video need it once.
    Returns:
        float64 [P] log p(caption | video), summed over the caption's tokens (and eos).
    """
    video = pixel_values if video_features is None else video_features
    tokens = processor.pad([processor.training_example(c) for c in captions])
    tokens = {name: t.to(video.device) for name, t in tokens.items()}
    logits = model(
        pixel_values=pixel_values,
        input_ids=tokens["input_ids"],
        attention_mask=tokens["attention_mask"],
        frame_scores=frame_scores,
        video_features=video_features,
    ).logits.float()
    labels = tokens["labels"][:, 1:]  # position t predicts token t + 1
    logp = F.log_softmax(logits[:, :-1], dim=-1)
    picked = logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (picked * (labels != IGNORE_INDEX)).sum(dim=1).double().cpu().numpy()

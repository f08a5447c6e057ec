"""A contrastive retrieval head: pooled video tokens and pooled LLM text states in one space.

    video: mean over Qv of the projected video tokens [B, Qv, D] → Linear(D, E) → L2 norm → [B, E]
    text:  masked mean of the LLM's last hidden states on the caption alone [B, L, D]
           → Linear(D, E) → L2 norm → [B, E]
    loss:  symmetric InfoNCE (CLIP): mean of the t→v and v→t cross-entropies of
           exp(logit_scale) · text @ video.T, with the diagonal as the positives.

The text side runs the LLM on the caption without the video so that a caption's embedding can be
compared with every video of a set (in the captioning sequence the caption attends to its video).

The head is a sub-module of the model (`model.retrieval_head`), built from the config's
`retrieval_dim` like every other one; the adapter code lists it in peft's `modules_to_save`, which
trains it under every method and writes it into the adapter file.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from batch_contract import IGNORE_INDEX

# CLIP's initial temperature (0.07) and its cap on the scale (100): larger scales make the loss
# dominated by a few pairs and training unstable.
INIT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = math.log(100.0)


class RetrievalHead(nn.Module):
    """Projections into a shared space plus a learnable temperature.

    Args:
        hidden_size: D, the LLM hidden size (video tokens are projected to it already).
        embed_dim: E, the shared space's size.
    """

    def __init__(self, hidden_size: int, embed_dim: int = 128) -> None:
        super().__init__()
        self.video_proj = nn.Linear(hidden_size, embed_dim)
        self.text_proj = nn.Linear(hidden_size, embed_dim)
        # Shape [1], not a 0-dim tensor: DeepSpeed broadcasts parameters as byte views, which 0-dim ones refuse.
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1.0 / INIT_TEMPERATURE)))

    def reset_parameters(self) -> None:
        """torch's default init of the projections and CLIP's initial temperature (the model's
        `_init_weights` calls it for a head that a checkpoint did not hold)."""
        self.video_proj.reset_parameters()
        self.text_proj.reset_parameters()
        with torch.no_grad():
            self.logit_scale.fill_(math.log(1.0 / INIT_TEMPERATURE))

    def forward(
        self,
        video_tokens: torch.Tensor | None = None,
        text_states: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """Embed either side or both (one entry point, so that peft's module wrapper routes every call).

        Args:
            video_tokens: float [B, Qv, D] video tokens, or None.
            text_states: float [B, L, D] last hidden states of the caption tokens, or None.
            text_mask: [B, L], 1 on caption tokens (None: all).
        Returns:
            (video [B, E] or None, text [B, E] or None, scale = exp(logit_scale) scalar), unit-norm
            embeddings in float32.
        """
        video = text = None
        dtype = self.video_proj.weight.dtype
        if video_tokens is not None:
            video = F.normalize(self.video_proj(video_tokens.to(dtype).mean(dim=1)).float(), dim=-1)
        if text_states is not None:
            if text_mask is None:
                text_mask = torch.ones(text_states.shape[:2], device=text_states.device)
            weights = text_mask.to(dtype).unsqueeze(-1)  # [B, L, 1]
            pooled = (text_states.to(dtype) * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
            text = F.normalize(self.text_proj(pooled).float(), dim=-1)
        scale = self.logit_scale.float().clamp(max=MAX_LOGIT_SCALE).exp().squeeze(0)
        return video, text, scale


def info_nce(video: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of B matching (video, text) pairs: video, text float [B, E] unit-norm → scalar."""
    logits = scale * text @ video.T  # [B, B], row = text query
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def caption_tokens(
    input_ids: torch.Tensor, labels: torch.Tensor, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The caption part of training sequences, left-aligned: where the labels are not IGNORE_INDEX.

    Args:
        input_ids, labels: long [B, L] (prompt + video placeholders + caption + eos, right-padded).
    Returns:
        (ids long [B, Lc], mask long [B, Lc]) with Lc the longest caption, padded with pad_token_id.
    """
    is_caption = labels != IGNORE_INDEX
    lengths = is_caption.sum(dim=1)
    width = max(int(lengths.max()), 1)
    ids = torch.full(
        (input_ids.shape[0], width), pad_token_id, dtype=input_ids.dtype, device=input_ids.device
    )
    mask = torch.arange(width, device=input_ids.device)[None, :] < lengths[:, None]
    ids[mask] = input_ids[is_caption]  # row-major order keeps each caption's tokens in order
    return ids, mask.long()

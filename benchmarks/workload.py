"""The model and batches the training benchmarks share: a saved preset checkpoint and synthetic inputs.

Inputs are random but shaped exactly like the trainer's (`trainer.trainer.Trainer._forward_backward`):
captions from SynthVid's corpus through the real processor, frames either already selected and
normalized (`model_batch`) or as uint8 candidates for the frame selector (`candidate_frames`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from batch_contract import FRAME_SCORE_NAMES
from data.synthvid import caption_corpus
from models.presets import create_pretrained
from models.processor import VideoLlamaProcessor

# The tiny preset widened and deepened, for timing benchmarks: at the plain tiny size a step is mostly
# Python overhead, here the matmuls and activations dominate as they do in real models.
LARGER = {
    "vision_config": {
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 6,
        "image_size": 128,
    },
    "qformer_config": {"encoder_hidden_size": 256},
    "text_config": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4},
}


def write_checkpoint(preset: str, out_dir: str | Path, **overrides: Any) -> Path:
    """A random-init base checkpoint of `preset` (seed 0) with its processor, in `out_dir`."""
    return create_pretrained(preset, out_dir, caption_corpus(), seed=0, **overrides)


def text_batch(
    processor: VideoLlamaProcessor, batch_size: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """input_ids / labels / attention_mask [B, L] of the first `batch_size` corpus captions."""
    captions = caption_corpus()
    tokens = processor.pad(
        [processor.training_example(captions[i % len(captions)]) for i in range(batch_size)]
    )
    return {k: v.to(device) for k, v in tokens.items()}


def model_batch(
    processor: VideoLlamaProcessor,
    batch_size: int,
    frames: int,
    image_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Model inputs with selected frames: pixel_values [B, K, 3, S, S] in `dtype`, frame_scores
    [B, K, len(FRAME_SCORE_NAMES)] in [0, 1), and the text tensors of `text_batch`."""
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch_size, frames, 3, image_size, image_size, generator=gen)
    scores = torch.rand(batch_size, frames, len(FRAME_SCORE_NAMES), generator=gen)
    return {
        "pixel_values": pixels.to(device, dtype),
        "frame_scores": scores.to(device, dtype),
        **text_batch(processor, batch_size, device),
    }


def candidate_frames(batch_size: int, candidates: int, image_size: int, device: torch.device) -> torch.Tensor:
    """uint8 [B, N, 3, S, S]: smooth random clips (a random walk over frames) for the frame selector,
    so entropy / motion scores differ between frames as in real video."""
    gen = torch.Generator().manual_seed(0)
    steps = torch.randn(batch_size, candidates, 3, image_size, image_size, generator=gen) * 12.0
    clips = 128.0 + steps.cumsum(dim=1)
    return clips.clamp(0, 255).to(torch.uint8).to(device)

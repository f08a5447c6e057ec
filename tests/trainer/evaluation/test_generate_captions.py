"""generate_caption_ids: evaluation's caption generation, and its fixed-length mode for benchmarks."""

import torch
from torch import nn

from data.frame_selector import SelectedFrames
from models.presets import build_model
from models.processor import VideoLlamaProcessor
from models.tokenizer import build_tokenizer
from trainer.evaluation.batch_outputs import generate_caption_ids


class _EosFirst(nn.Module):
    """An LLM head whose logits rank eos first at every position."""

    def __init__(self, vocab_size: int, eos: int) -> None:
        super().__init__()
        self.vocab_size, self.eos = vocab_size, eos

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, L, V]
        logits = hidden.new_zeros(*hidden.shape[:-1], self.vocab_size)
        logits[..., self.eos] = 1.0
        return logits


def _eos_first_model():
    """A tiny model whose LLM always ranks eos first, so that free generation stops at once."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(["a red circle moves up", "two blue squares move down"])
    model = build_model("tiny", tokenizer).eval()
    processor = VideoLlamaProcessor(
        tokenizer, num_video_tokens=model.config.num_video_query_tokens, video_token=model.config.video_token
    )
    model.language_model.lm_head = _EosFirst(model.config.text_config.vocab_size, tokenizer.eos_token_id)
    return model, processor, tokenizer.eos_token_id


def test_eos_is_held_back_for_min_new_tokens():
    model, processor, eos = _eos_first_model()
    selected = SelectedFrames(
        frames=torch.randn(2, 4, 3, 64, 64), indices=torch.arange(4).expand(2, 4), scores=torch.rand(2, 4, 3)
    )
    device = torch.device("cpu")
    with torch.no_grad():
        free = generate_caption_ids(model, processor, selected, 6, 1, False, device)
        fixed = generate_caption_ids(model, processor, selected, 6, 1, False, device, min_new_tokens=6)
    assert free.shape == (2, 1) and (free == eos).all()  # eos first: free generation stops at once
    assert fixed.shape == (2, 6) and not (fixed == eos).any()

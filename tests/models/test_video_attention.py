"""The video Q-Former's attention over frames (`video_frame_attention`): a distribution over the kept
frames, read per frame, from the adapted model, without touching the training path."""

import pytest
import torch

from models.adapters import apply_adapter
from models.loading import load_model
from models.presets import build_model
from models.tokenizer import build_tokenizer
from trainer.evaluation.batch_outputs import base_model


@pytest.fixture
def model(tiny_ckpt):
    return load_model(tiny_ckpt, quantization="none", compute_dtype=torch.float32).eval()


def test_attention_is_a_distribution_over_the_kept_frames(model):
    pixels = torch.randn(2, 4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cross_layers = model.config.video_qformer_config.num_hidden_layers  # cross_attention_frequency 1
    before = model.get_video_features(pixels)
    attention = model.video_frame_attention(pixels)
    assert attention.shape == (2, cross_layers, model.config.num_video_query_tokens, 4)
    assert attention.dtype == torch.float32 and bool((attention >= 0).all())
    torch.testing.assert_close(attention.sum(dim=-1), torch.ones(attention.shape[:-1]), atol=1e-5, rtol=0)
    # Eager was for that call only: both Q-Formers are back on their own attention, the features unchanged.
    assert model.video_qformer.config._attn_implementation == model.config._attn_implementation == "sdpa"
    assert model.qformer.config._attn_implementation == "sdpa"
    torch.testing.assert_close(model.get_video_features(pixels), before, atol=0, rtol=0)
    assert model.current_frame_scores is None


def test_each_column_is_one_frame_and_the_map_moves_with_the_frames(model):
    """With the frame positions zeroed, identical frames give identical encoder tokens: every query
    reads them uniformly, and a frame changed alone is the only column that changes. (Grouping the
    K*Q positions any other way than frame-major would mix frames and fail both.)"""
    with torch.no_grad():
        model.frame_position_embedding.weight.zero_()
    gen = torch.Generator().manual_seed(1)
    frame = torch.randn(3, 64, 64, generator=gen)
    same = frame.expand(1, 4, 3, 64, 64).clone()
    uniform = model.video_frame_attention(same)[0]  # [Lc, Qv, 4]
    torch.testing.assert_close(uniform, torch.full_like(uniform, 0.25), atol=1e-5, rtol=0)

    changed = same.clone()
    changed[0, 2] = torch.randn(3, 64, 64, generator=gen)
    moved = model.video_frame_attention(changed)[0]
    others = moved[..., [0, 1, 3]]
    torch.testing.assert_close(others, others[..., :1].expand_as(others), atol=1e-5, rtol=0)
    assert (moved[..., 2] - moved[..., 0]).abs().max() > 1e-3  # frame 2 is read differently

    clips = torch.randn(2, 4, 3, 64, 64, generator=gen)
    first, second = model.video_frame_attention(clips)
    assert (first - second).abs().max() > 1e-3  # not a constant of the model


@pytest.mark.parametrize("method", ["frozen", "lora", "temporal_lora"])
def test_adapted_models_give_the_adapted_attention(method):
    """Through `base_model` the map is the adapted model's: LoRA starts as the base (peft zero-inits
    B), so the map equals the base's, and moves once B is not zero; temporal gates read the scores."""
    torch.manual_seed(0)
    base = build_model("tiny", build_tokenizer(["a red circle moves up", "two blue squares"])).eval()
    pixels = torch.randn(2, 4, 3, 64, 64)
    scores = torch.rand(2, 4, 3)
    reference = base.video_frame_attention(pixels, scores)
    model = apply_adapter(base, method, **({"r": 4} if "lora" in method else {}))
    model.eval()
    inner = base_model(model)
    attention = inner.video_frame_attention(pixels, scores)
    torch.testing.assert_close(attention, reference, atol=1e-6, rtol=0)
    if method == "frozen":
        return
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    adapted = inner.video_frame_attention(pixels, scores)
    torch.testing.assert_close(adapted.sum(-1), torch.ones(adapted.shape[:-1]), atol=1e-5, rtol=0)
    assert (adapted - reference).abs().max() > 1e-3
    with pytest.raises(ValueError, match="frame_scores shape"):
        inner.video_frame_attention(pixels, scores[:, :3])

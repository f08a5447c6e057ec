"""Named model sizes and the builder of random-init "base checkpoints".

Nothing can be downloaded here, so a base checkpoint is a random-init Video-LLaMA plus a tokenizer
trained on the caption corpus, written with `save_pretrained`; everything downstream (quantized
loading, adapters, training, generation) then goes through the same `from_pretrained` path it would
take with released weights.
"""

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from .configuration_video_llama import VideoLlamaConfig
from .modeling_video_llama import VideoLlamaForConditionalGeneration
from .processor import VideoLlamaProcessor
from .tokenizer import build_tokenizer

# Bumped whenever `create_pretrained` would write another model for the same preset and corpus, so that
# bases cached under their settings (trainer/assets.py) are not reused across a change. 2: the
# tokenizer's ids in an order fixed by the corpus (models/tokenizer.py).
BASE_VERSION = 2

# Sub-config dicts per preset. vocab_size and the special-token ids of text_config come from the
# tokenizer in `build_model`. Every tower sets initializer_range explicitly: Blip2VisionConfig's default
# (1e-10) assumes pretrained weights are loaded and would leave a random-init ViT at ~zero.
# The tiny preset uses ~1/sqrt(hidden) (0.125 at width 64, 0.088 at 128) rather than the usual 0.02:
# at these widths 0.02 gives every attention/MLP branch a gain of ~0.16, and the video signal through
# two random Q-Formers shrank to 1e-5 of the token scale (measured), so the LLM could not see the clip.
PRESETS: dict[str, dict[str, Any]] = {
    # A few MB, builds in well under a second: for tests and the CPU demo.
    "tiny": {
        "vision_config": {
            "image_size": 64,
            "patch_size": 16,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "initializer_range": 0.125,
        },
        "qformer_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "cross_attention_frequency": 2,
            "encoder_hidden_size": 64,
            "initializer_range": 0.125,
        },
        "video_qformer_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "cross_attention_frequency": 1,
            "encoder_hidden_size": 64,
            "initializer_range": 0.125,
        },
        "text_config": {
            "model_type": "llama",
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 512,
            "tie_word_embeddings": False,
            "initializer_range": 0.088,
        },
        "num_query_tokens": 8,
        "num_video_query_tokens": 8,
        "max_frames": 16,
        "initializer_range": 0.125,
    },
    # ~1.1B parameters: a ViT-B-sized ViT (86M) at BLIP-2's 224/14 geometry (ViT-g scaled down), a
    # 4-layer frame Q-Former (33M) and the 2-layer video Q-Former (19M, cross-attention in both layers
    # as in Video-LLaMA) at BERT-base width, and a Llama of 18 x 2048 (GQA 16/8 heads): 0.84B in its
    # layers plus 2 x vocab x 2048 embeddings (0.98B at LLaMA's 32000). `python -m models.footprint
    # --preset 1b` prints the exact counts; tests only build it on the meta device.
    "1b": {
        "vision_config": {
            "image_size": 224,
            "patch_size": 14,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "initializer_range": 0.02,
        },
        "qformer_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 4,
            "num_attention_heads": 12,
            "cross_attention_frequency": 2,
            "encoder_hidden_size": 768,
        },
        "video_qformer_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 2,
            "num_attention_heads": 12,
            "cross_attention_frequency": 1,
            "encoder_hidden_size": 768,
        },
        "text_config": {
            "model_type": "llama",
            "hidden_size": 2048,
            "intermediate_size": 5632,
            "num_hidden_layers": 18,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "max_position_embeddings": 2048,
            "tie_word_embeddings": False,
        },
        "num_query_tokens": 32,
        "num_video_query_tokens": 32,
        "max_frames": 8,
    },
    # Video-LLaMA at its published size, for the GPU check's memory and speed figures (benchmarks.gpu_check):
    # an EVA-ViT-g-sized ViT (39 x 1408, MLP 6144, 16 heads, 224/14: ~1.0B) and a Llama-2-7B-sized LLM
    # (32 x 4096, MLP 11008, 32 heads, no GQA: 6.5B in its layers; the vocabulary is the tokenizer's).
    # The Q-Formers are the 1b preset's at BERT-base width, with the ViT's width as encoder input.
    "7b": {
        "vision_config": {
            "image_size": 224,
            "patch_size": 14,
            "hidden_size": 1408,
            "intermediate_size": 6144,
            "num_hidden_layers": 39,
            "num_attention_heads": 16,
            "initializer_range": 0.02,
        },
        "qformer_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 4,
            "num_attention_heads": 12,
            "cross_attention_frequency": 2,
            "encoder_hidden_size": 1408,
        },
        "video_qformer_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 2,
            "num_attention_heads": 12,
            "cross_attention_frequency": 1,
            "encoder_hidden_size": 768,
        },
        "text_config": {
            "model_type": "llama",
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": False,
        },
        "num_query_tokens": 32,
        "num_video_query_tokens": 32,
        "max_frames": 8,
    },
}


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides win; dict values (the sub-configs) are merged key by key, one level deep."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def preset_fields(preset: str, **overrides: Any) -> dict[str, Any]:
    """The config fields of a preset with `overrides` merged in (sub-config dicts key by key, e.g.
    `text_config={"num_hidden_layers": 4}` keeps the other text fields)."""
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    return _merge(PRESETS[preset], overrides)


def preset_config(preset: str, tokenizer: PreTrainedTokenizerBase, **overrides: Any) -> VideoLlamaConfig:
    """The `VideoLlamaConfig` of a preset, with vocabulary and special ids taken from `tokenizer`.

    `overrides` are config fields, merged as in `preset_fields`.
    """
    fields = preset_fields(preset, **overrides)
    video_token = fields.get("video_token", "<video>")
    video_token_index = tokenizer.convert_tokens_to_ids(video_token)
    if video_token_index is None or video_token_index == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no {video_token!r} token")
    fields["text_config"] = {
        **fields["text_config"],
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    fields.setdefault("video_token_index", video_token_index)
    return VideoLlamaConfig(**fields)


def build_model(
    preset: str, tokenizer: PreTrainedTokenizerBase, **overrides: Any
) -> VideoLlamaForConditionalGeneration:
    """A random-init fp32 Video-LLaMA of the given preset sized to `tokenizer` (see `preset_config`)."""
    model = VideoLlamaForConditionalGeneration(preset_config(preset, tokenizer, **overrides))
    # Generation stops at eos and pads with pad: make the LLM's generation config say so explicitly.
    for gen_config in (model.generation_config, model.language_model.generation_config):
        gen_config.pad_token_id = tokenizer.pad_token_id
        gen_config.bos_token_id = tokenizer.bos_token_id
        gen_config.eos_token_id = tokenizer.eos_token_id
    return model


def create_pretrained(
    preset: str,
    out_dir: str | Path,
    corpus: Iterable[str],
    *,
    prompt: str = "describe the video.",
    vocab_size: int = 1000,
    seed: int = 0,
    device: str | None = None,
    dtype: Any = None,
    **overrides: Any,
) -> Path:
    """Write a base checkpoint: tokenizer + processor settings + random-init model, all in `out_dir`.

    Args:
        preset: a key of `PRESETS`.
        out_dir: created if needed; afterwards `from_pretrained(out_dir)` works for the model
            (`VideoLlamaForConditionalGeneration` / `models.loading.load_model`) and the processor.
        corpus: caption texts for the tokenizer (the chat-template words are added here).
        prompt: the instruction stored in the processor.
        vocab_size: BPE vocabulary bound.
        seed: torch seed of the random init (same seed → same weights).
        device: where the random init runs (default the CPU); a GPU builds the 7b preset in seconds.
        dtype: the dtype the weights are saved in (default fp32); bf16 halves a big checkpoint.
    Returns:
        `out_dir` as a Path.
    """
    import torch  # local: only needed for the seed

    out_dir = Path(out_dir)
    # The template's words join the corpus so "user", "assistant" and the prompt are whole tokens.
    template_text = f"user: {prompt} assistant:"
    tokenizer = build_tokenizer([*corpus, template_text], vocab_size=vocab_size)

    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = build_model(preset, tokenizer, **overrides)
    if dtype is not None:
        model = model.to(dtype)
    processor = VideoLlamaProcessor(
        tokenizer,
        num_video_tokens=model.config.num_video_query_tokens,
        prompt=prompt,
        video_token=model.config.video_token,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir

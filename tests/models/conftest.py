"""Fixtures of the models tests: one tiny random-init base checkpoint per session, written through
the real save_pretrained path, and a small fixed batch."""

import pytest
import torch

from models.presets import create_pretrained
from models.processor import VideoLlamaProcessor

CORPUS = [
    "a man is riding a bike down the street.",
    "a cat plays with a red ball.",
    "people dance on a stage under bright lights.",
    "a woman is cooking pasta in a kitchen.",
]


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    return create_pretrained("tiny", tmp_path_factory.mktemp("tiny_base"), CORPUS, seed=0)


@pytest.fixture(scope="session")
def processor(tiny_ckpt):
    return VideoLlamaProcessor.from_pretrained(tiny_ckpt)


@pytest.fixture
def batch(processor):
    """Two videos of 4 frames at 64x64 and their padded caption tokens."""
    gen = torch.Generator().manual_seed(0)
    tokens = processor.pad([processor.training_example(c) for c in CORPUS[:2]])
    return {"pixel_values": torch.randn(2, 4, 3, 64, 64, generator=gen), **tokens}


# --- released-part stand-ins: tiny random checkpoints in the layouts real releases use ---------------
TINY_BLIP2 = {
    "vision_config": {
        "image_size": 64,
        "patch_size": 16,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    },
    "qformer_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "encoder_hidden_size": 64,
    },
    # BLIP-2's own LM (OPT here) is in the checkpoint but never read by the assembly.
    "text_config": {
        "model_type": "opt",
        "hidden_size": 32,
        "ffn_dim": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "vocab_size": 100,
        "word_embed_proj_dim": 32,
    },
    "num_query_tokens": 8,
}

TINY_LLMS = {
    "llama": {
        "model_type": "llama",
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": False,
    },
    "qwen2": {
        "model_type": "qwen2",
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    },
}


@pytest.fixture(scope="session")
def blip2_dir(tmp_path_factory):
    """A random tiny `Blip2ForConditionalGeneration` written with save_pretrained."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(Blip2Config(**TINY_BLIP2, initializer_range=0.1))
    # HF zero-inits the queries (it always loads weights); random ones show they are carried over.
    with torch.no_grad():
        model.query_tokens.normal_()
    path = tmp_path_factory.mktemp("blip2")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session", params=sorted(TINY_LLMS))
def llm_dir(request, tmp_path_factory):
    """A random tiny causal LM (Llama, Qwen2 with tied embeddings) + its own tokenizer, saved."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(CORPUS + ["user: describe the video. assistant:"], extra_special_tokens=())
    fields = dict(TINY_LLMS[request.param])
    config = AutoConfig.for_model(fields.pop("model_type"), vocab_size=len(tokenizer), **fields)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    path = tmp_path_factory.mktemp(f"llm_{request.param}")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

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

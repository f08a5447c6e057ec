"""Analytic training state (models.train_state): counted from the tensors a method holds at a preset."""

import pytest
import torch

from models.adapters import apply_adapter
from models.footprint import model_weight_bytes
from models.loading import load_model
from models.train_state import TRAINABLE_BYTES, model_train_state, train_state


def test_counts_match_a_loaded_model(tiny_ckpt):
    """On a really loaded NF4 model with QLoRA the analytic count equals the tensors it holds:
    frozen bytes = the loaded frozen weights' bytes, 16 bytes per trainable parameter."""
    model = apply_adapter(
        load_model(tiny_ckpt, quantization="nf4", compute_dtype=torch.bfloat16), "qlora", r=4
    )
    state = model_train_state(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert state["trainable_params"] == trainable > 0
    assert state["optimizer_bytes"] == trainable * TRAINABLE_BYTES["optimizer"] == 12 * trainable
    loaded = model_weight_bytes(model.get_base_model())
    total_loaded = sum(row["bytes"] for row in loaded.values())
    trainable_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    assert state["frozen_weight_bytes"] == total_loaded - trainable_bytes


def test_methods_at_1b_order_as_their_formats():
    """At the 1b preset: QLoRA's state is under half LoRA's (NF4 vs bf16 frozen weights, the same
    adapter), int8 sits between, full fine-tuning pays 16 bytes for every weight, frozen trains none."""
    figures = {m: train_state("1b", m, {"r": 16}) for m in ("qlora", "qlora8", "lora", "full", "frozen")}
    total = {m: f["total_bytes"] for m, f in figures.items()}
    assert figures["qlora"]["trainable_params"] == figures["lora"]["trainable_params"]
    assert total["qlora"] < total["qlora8"] < total["lora"] < total["full"]
    assert total["qlora"] < 0.5 * total["lora"]
    assert figures["frozen"]["trainable_params"] == 0 and figures["frozen"]["optimizer_bytes"] == 0
    assert figures["full"]["frozen_weight_bytes"] == 0
    assert figures["full"]["total_bytes"] == 16 * figures["full"]["trainable_params"]


def test_rank_grows_the_adapter_state_linearly():
    r8, r16, r32 = (train_state("1b", "qlora", {"r": r}) for r in (8, 16, 32))
    step = r16["trainable_params"] - r8["trainable_params"]
    assert step > 0 and r32["trainable_params"] - r16["trainable_params"] == 2 * step
    assert r8["frozen_weight_bytes"] == r16["frozen_weight_bytes"] == r32["frozen_weight_bytes"]


def test_budget_allocation_needs_its_ranks():
    with pytest.raises(ValueError, match="allocated"):
        train_state("1b", "ranked_qlora", {"allocation": "entropy", "budget": 1e6})


def test_counting_leaves_the_random_state_alone():
    """A run counts its memory after restoring its RNG from a checkpoint: counting must not move it."""
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    train_state("tiny", "qlora", {"r": 4})
    assert torch.equal(torch.rand(3), expected)

"""Optimizer groups for train.vit_lr / train.aligner_lr / train.gate_lr, on a real peft-wrapped tiny Video-LLaMA."""

from __future__ import annotations

import pytest

from models.adapters import apply_adapter
from models.presets import build_model
from models.tokenizer import build_tokenizer
from trainer.ds_config import scheduler_block
from trainer.param_groups import group_of, is_gate_parameter, learning_rate_groups, scaled_schedule


@pytest.fixture(scope="module")
def lora_model():
    tokenizer = build_tokenizer(["a red circle moves up", "two blue squares move down"])
    return apply_adapter(build_model("tiny", tokenizer), "lora", r=4, alpha=8)


@pytest.mark.parametrize(
    "name, group",
    [
        ("base_model.model.vision_model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight", "vit"),
        (
            "base_model.model.qformer.encoder.layer.0.crossattention.attention.key.lora_B.default.weight",
            "aligner",
        ),
        ("base_model.model.video_qformer.encoder.layer.1.output.dense.weight", "aligner"),
        ("video_query_tokens", "aligner"),
        ("frame_position_embedding.weight", "aligner"),
        ("base_model.model.video_projection.lora_A.default.weight", "aligner"),
        ("base_model.model.language_model.model.layers.0.mlp.up_proj.lora_A.default.weight", "llm"),
        ("base_model.model.retrieval_head.modules_to_save.default.text_proj.weight", "llm"),
    ],
)
def test_group_of_names(name, group):
    assert group_of(name) == group


def test_no_rates_set_keeps_one_plain_group(lora_model):
    params = learning_rate_groups(lora_model, 1e-3, None, None)
    assert all(not isinstance(p, dict) for p in params)
    assert len(params) == sum(p.requires_grad for p in lora_model.parameters())


def test_groups_hold_every_trainable_parameter_once_at_its_rate(lora_model):
    groups = learning_rate_groups(lora_model, 1e-3, 1e-4, 3e-4)
    assert [(g["name"], g["lr"]) for g in groups] == [("llm", 1e-3), ("vit", 1e-4), ("aligner", 3e-4)]
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p): name for name, p in lora_model.named_parameters() if p.requires_grad}
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    for g in groups:
        assert all(group_of(trainable[id(p)]) == g["name"] for p in g["params"])


def test_only_the_aligner_rate_set(lora_model):
    groups = learning_rate_groups(lora_model, 2e-3, None, 1e-4)
    assert {g["name"]: g["lr"] for g in groups} == {"llm": 2e-3, "vit": 2e-3, "aligner": 1e-4}


@pytest.fixture(scope="module")
def temporal_model():
    tokenizer = build_tokenizer(["a red circle moves up", "two blue squares move down"])
    return apply_adapter(build_model("tiny", tokenizer), "temporal_lora", r=4, alpha=8)


def test_gate_rate_takes_the_gates_into_a_group_of_their_own(temporal_model):
    named = {id(p): n for n, p in temporal_model.named_parameters() if p.requires_grad}
    gate_ids = {i for i, n in named.items() if is_gate_parameter(n)}
    assert len(gate_ids) == 4 * 8  # in/out weight + bias of the 8 gated ViT linears
    groups = learning_rate_groups(temporal_model, 1e-3, 1e-4, None, gate_lr=5e-2)
    # The projection is trained in full by default: the aligner group keeps the LLM's rate.
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("llm", 1e-3),
        ("vit", 1e-4),
        ("aligner", 1e-3),
        ("gate", 5e-2),
    ]
    by_name = {g["name"]: {id(p) for p in g["params"]} for g in groups}
    assert by_name["gate"] == gate_ids and not gate_ids & (
        by_name["vit"] | by_name["llm"] | by_name["aligner"]
    )
    assert sorted(i for ids in by_name.values() for i in ids) == sorted(named)
    # The gate rate alone makes groups; without it the gates go with their tower (here the ViT).
    alone = learning_rate_groups(temporal_model, 1e-3, None, None, gate_lr=5e-2)
    assert {g["name"]: g["lr"] for g in alone} == {"llm": 1e-3, "vit": 1e-3, "aligner": 1e-3, "gate": 5e-2}
    towers = learning_rate_groups(temporal_model, 1e-3, 1e-4, None)
    assert gate_ids <= {id(p) for g in towers if g["name"] == "vit" for p in g["params"]}
    assert not is_gate_parameter(
        "base_model.model.vision_model.encoder.layers.0.mlp.fc1.lora_A.default.weight"
    )


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_warmup_schedules_get_per_group_rates(schedule):
    ds = {"scheduler": scheduler_block(schedule, 1e-3, 100, 10, 0.1)}
    params = scaled_schedule(ds, [1e-3, 1e-4], 1e-3)["scheduler"]["params"]
    assert params["warmup_max_lr"] == pytest.approx([1e-3, 1e-4])
    assert params["warmup_min_lr"] == pytest.approx([0.0, 0.0])
    assert ds["scheduler"]["params"]["warmup_max_lr"] == 1e-3  # the input is not modified


def test_cosine_schedule_is_relative_and_left_alone():
    ds = {"scheduler": scheduler_block("cosine", 1e-3, 100, 10, 0.1)}
    assert scaled_schedule(ds, [1e-3, 1e-4], 1e-3) == ds

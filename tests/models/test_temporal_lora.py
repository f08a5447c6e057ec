"""Temporal (frame-gated) LoRA on the tiny Video-LLaMA: exactness at the gate extremes, gradients,
4-bit and 16-bit bases, save/load, gradient checkpointing, statistics and the heatmap."""

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from models.adapters import apply_adapter, load_adapter
from models.loading import load_model
from models.temporal_lora import (
    TemporalLinear,
    TemporalLinear4bit,
    TemporalLoraConfig,
    gate_statistics,
    gate_summary,
    install_frame_gates,
    temporal_layers,
    write_gate_heatmap,
)

VISION = r"vision_model\.encoder\.layers\.\d+\.(self_attn\.(qkv|projection)|mlp\.(fc1|fc2))"


def _load(path, quantization):
    return load_model(path, quantization=quantization, compute_dtype=torch.float32, device="cpu")


def _method(quantization):
    return "temporal_qlora" if quantization == "nf4" else "temporal_lora"


@pytest.fixture
def scored_batch(batch):
    gen = torch.Generator().manual_seed(1)
    return {**batch, "frame_scores": torch.rand(2, 4, 3, generator=gen)}


def _randomize_lora(model, seed=0):
    """Non-zero B (B starts at 0, which would make every gate invisible) and random gate weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)


def _set_gate_bias(model, value):
    """Zero gate output weights and a bias that saturates the sigmoid: every gate exactly 0 or 1 (or 0.5)."""
    with torch.no_grad():
        for layer in temporal_layers(model).values():
            layer.lora_gate_out["default"].weight.zero_()
            layer.lora_gate_out["default"].bias.fill_(value)


# Each mode on one base and each base in one mode: 4-bit and 16-bit are both covered, in half the time.
@pytest.mark.parametrize(("mode", "quantization"), [("scale", "nf4"), ("rank", "none")])
def test_gate_extremes_reproduce_lora_and_base(tiny_ckpt, scored_batch, quantization, mode):
    temporal = apply_adapter(
        _load(tiny_ckpt, quantization),
        _method(quantization),
        r=8,
        alpha=16,
        target_modules=VISION,
        gate={"mode": mode},
    ).eval()
    layer_type = TemporalLinear4bit if quantization == "nf4" else TemporalLinear
    assert len(temporal_layers(temporal)) == 8
    assert all(isinstance(layer, layer_type) for layer in temporal_layers(temporal).values())
    _randomize_lora(temporal)

    plain = get_peft_model(
        _load(tiny_ckpt, quantization), LoraConfig(r=8, lora_alpha=16, target_modules=VISION)
    )
    lora_weights = {k: v for k, v in temporal.state_dict().items() if "lora_A" in k or "lora_B" in k}
    missing = plain.load_state_dict(lora_weights, strict=False)
    assert not missing.unexpected_keys
    plain.eval()

    with torch.no_grad():
        _set_gate_bias(temporal, 200.0)  # sigmoid(200) == 1.0 exactly
        gated_one = temporal(**scored_batch).logits
        assert torch.equal(gated_one, plain(**scored_batch).logits)

        _set_gate_bias(temporal, -200.0)  # sigmoid(-200) == 0.0 exactly
        gated_zero = temporal(**scored_batch).logits
        with temporal.disable_adapter():
            base = temporal(**scored_batch).logits
        assert torch.equal(gated_zero, base)
        assert not torch.allclose(gated_one, base)  # the adapter does change the output

        if mode == "rank":  # g = 0.5 with r = 8: exactly the first 4 rank components
            _set_gate_bias(temporal, 0.0)
            half = temporal(**scored_batch).logits
            for name, param in plain.named_parameters():
                if "lora_A" in name:
                    param[4:].zero_()
            assert torch.allclose(half, plain(**scored_batch).logits, atol=1e-6)


@pytest.mark.parametrize("mode", ["scale", "rank"])
def test_gradients_reach_every_gate_network(tiny_ckpt, scored_batch, mode):
    model = apply_adapter(
        _load(tiny_ckpt, "nf4"),
        "temporal_qlora",
        r=4,
        alpha=8,
        gate={"inputs": ["motion", "entropy", "feature"], "mode": mode},
    )
    _randomize_lora(model)
    model.train()
    model(**scored_batch).loss.backward()
    gate_params = {n: p for n, p in model.named_parameters() if "lora_gate" in n}
    assert len(gate_params) == 4 * 8  # in/out weight + bias for each of the 8 vision linears
    for name, param in gate_params.items():
        assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
    # The LLM is not frame-rowed: plain LoRA there.
    assert all("vision_model" in name for name in temporal_layers(model))


def test_gates_follow_the_frame_scores(tiny_ckpt, scored_batch, tmp_path):
    model = apply_adapter(
        _load(tiny_ckpt, "nf4"), "temporal_qlora", r=4, alpha=8, gate={"inputs": ["motion"]}
    )
    _randomize_lora(model, seed=3)
    with torch.no_grad():
        model(**scored_batch)
    stats = gate_statistics(model)
    assert len(stats) == 8 and all(g.shape == (2, 4) for g in stats.values())
    first = torch.stack(list(stats.values()))
    moved = {**scored_batch, "frame_scores": scored_batch["frame_scores"].flip(1)}
    with torch.no_grad():
        model(**moved)
    # Gates of a frame depend on that frame's motion only: reversing the frames reverses the gates.
    assert torch.allclose(torch.stack(list(gate_statistics(model).values())), first.flip(2))

    summary = gate_summary(model)
    assert 0.0 <= summary["gate/mean"] <= 1.0
    assert {f"gate/frame/{k}/mean" for k in range(4)} <= set(summary)
    assert "gate/layer/vision_model.encoder.layers.0.mlp.fc1/mean" in summary

    path = write_gate_heatmap(model, tmp_path / "gates.png", clip=1)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_frame_scores_is_a_clear_error(tiny_ckpt, batch):
    model = apply_adapter(_load(tiny_ckpt, "nf4"), "temporal_qlora", r=4, alpha=8)
    with pytest.raises(ValueError, match="frame_scores"):
        model(**batch)
    feature_only = apply_adapter(
        _load(tiny_ckpt, "nf4"), "temporal_qlora", r=4, alpha=8, gate={"inputs": ["feature"]}
    )
    assert torch.isfinite(feature_only(**batch).loss)  # a feature gate needs no scores


def test_save_and_load_give_identical_outputs(tiny_ckpt, scored_batch, tmp_path):
    model = apply_adapter(
        _load(tiny_ckpt, "nf4"),
        "temporal_ranked_qlora",
        ranks={"vision": 4, "frame_qformer": 2, "llm": 8},
        gate={"inputs": ["motion", "scene_change", "feature"], "mode": "rank", "hidden": 8, "init": 0.7},
    )
    _randomize_lora(model, seed=5)
    model.eval()
    with torch.no_grad():
        expected = model(**scored_batch).logits
    model.save_pretrained(tmp_path / "adapter")

    reloaded = load_adapter(_load(tiny_ckpt, "nf4"), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**scored_batch).logits, expected)
    assert len(temporal_layers(reloaded)) == 8 + 16  # ViT linears + frame Q-Former linears

    # The documented manual route: register through the config, then peft's own loader.
    config = TemporalLoraConfig.from_pretrained(tmp_path / "adapter")
    assert config.gate_mode == "rank" and config.gate_hidden == 8
    manual = PeftModel.from_pretrained(_load(tiny_ckpt, "nf4"), tmp_path / "adapter", config=config)
    install_frame_gates(manual)
    with torch.no_grad():
        assert torch.equal(manual.eval()(**scored_batch).logits, expected)


def _loss_and_grads(model, batch):
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return loss.detach(), grads


def test_gradient_checkpointing_sees_the_same_gates(tiny_ckpt, scored_batch):
    def build(checkpointing):
        torch.manual_seed(0)
        model = apply_adapter(
            _load(tiny_ckpt, "none"),
            "temporal_lora",
            r=4,
            alpha=8,
            dropout=0.1,
            gradient_checkpointing=checkpointing,
            gate={"inputs": ["motion", "entropy", "feature"]},
        )
        _randomize_lora(model, seed=7)
        return model.train()

    plain, checkpointed = build(False), build(True)
    torch.manual_seed(1)
    loss, grads = _loss_and_grads(plain, scored_batch)
    torch.manual_seed(1)
    loss_ckpt, grads_ckpt = _loss_and_grads(checkpointed, scored_batch)
    assert torch.equal(loss, loss_ckpt)
    assert grads.keys() == grads_ckpt.keys() and any("lora_gate" in n for n in grads)
    for name in grads:
        assert torch.allclose(grads[name], grads_ckpt[name], rtol=1e-5, atol=1e-7), name

    # A second forward with other scores before the first backward: the recompute of the first
    # still sees its own scores (the checkpoint's context_fn), so its gradients do not change.
    other = {**scored_batch, "frame_scores": 1.0 - scored_batch["frame_scores"]}
    torch.manual_seed(1)
    first = checkpointed(**scored_batch).loss
    checkpointed(**other)
    first.backward()
    for name, param in checkpointed.named_parameters():
        if param.requires_grad:
            assert torch.allclose(param.grad, grads[name], rtol=1e-5, atol=1e-7), name

"""Temporal (frame-gated) LoRA on the tiny Video-LLaMA: exactness at the gate extremes, gradients,
4-bit and 16-bit bases, save/load, gradient checkpointing, statistics and the heatmap, the spread
of the gates at init, position inputs, gates on the frame Q-Former, the two controls (shuffled,
constant) and adapters saved before the standardised inputs."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from models.adapters import apply_adapter, load_adapter
from models.loading import load_model
from models.temporal_lora import (
    SHUFFLE_SEED,
    GateLogit,
    TemporalLinear,
    TemporalLinear4bit,
    TemporalLoraConfig,
    gate_spread,
    gate_statistics,
    gate_summary,
    install_frame_gates,
    load_shuffle_state,
    shuffle_state,
    temporal_layers,
    write_gate_heatmap,
)
from models.towers import tower

VISION = r"vision_model\.encoder\.layers\.\d+\.(self_attn\.(qkv|projection)|mlp\.(fc1|fc2))"
FRAME_QFORMER = tower("frame_qformer").linears


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


def _spreads(model, batch):
    with torch.no_grad():
        model(**batch)
    return torch.tensor([gate_spread(g) for g in gate_statistics(model).values()])


def test_gates_differ_across_frames_at_init(tiny_ckpt, scored_batch):
    """Default gates (z-scored inputs, output weight std 0.5) vary over a clip's frames from the
    start; the old init (std 0.01) kept them equal to about 1e-3."""
    torch.manual_seed(0)
    model = apply_adapter(_load(tiny_ckpt, "nf4"), "temporal_qlora", r=4, alpha=8)
    spread = _spreads(model, scored_batch)
    assert spread.mean() >= 0.02 and (spread > 0).all()
    torch.manual_seed(0)
    old = apply_adapter(_load(tiny_ckpt, "nf4"), "temporal_qlora", r=4, alpha=8, gate={"init_std": 0.01})
    assert _spreads(old, scored_batch).mean() < 0.005


def test_position_input_tells_frames_apart_when_scores_do_not(tiny_ckpt, scored_batch):
    same = {**scored_batch, "frame_scores": scored_batch["frame_scores"][:, :1].expand(2, 4, 3)}
    scores_only = apply_adapter(_load(tiny_ckpt, "nf4"), "temporal_qlora", r=4, gate={"inputs": ["motion"]})
    assert (_spreads(scores_only, same) == 0).all()  # z-scores of a constant are 0 in every frame
    with_position = apply_adapter(
        _load(tiny_ckpt, "nf4"), "temporal_qlora", r=4, gate={"inputs": ["motion", "position", "delta"]}
    )
    assert (_spreads(with_position, same) > 0).all()


def test_frame_qformer_linears_are_gated_when_targeted(tiny_ckpt, scored_batch):
    model = apply_adapter(
        _load(tiny_ckpt, "nf4"), "temporal_qlora", r=4, alpha=8, target_modules=FRAME_QFORMER
    )
    layers = temporal_layers(model)
    assert layers and all(name.startswith("qformer.") for name in layers)
    _randomize_lora(model)
    model.train()
    model(**scored_batch).loss.backward()
    assert {name for name, gates in gate_statistics(model).items() if gates.shape == (2, 4)} == set(layers)
    gate_grads = [p.grad for n, p in model.named_parameters() if "lora_gate" in n]
    assert len(gate_grads) == 4 * len(layers) and all(g is not None and g.abs().sum() > 0 for g in gate_grads)


def _train_one_step(model, batch):
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_gate" in n}
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    assert before and all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


@pytest.mark.parametrize("method", ["temporal_qlora_shuffled", "temporal_qlora_constant"])
def test_controls_build_train_and_reload(tiny_ckpt, scored_batch, tmp_path, method):
    model = apply_adapter(
        _load(tiny_ckpt, "nf4"), method, r=4, alpha=8, gate={"inputs": ["motion", "entropy"]}
    )
    layers = temporal_layers(model)
    assert len(layers) == 8
    _randomize_lora(model, seed=2)
    _train_one_step(model, scored_batch)
    context = model.get_base_model().frame_gate_context
    if method == "temporal_qlora_constant":  # one logit per layer, the same gate for every frame
        assert all(isinstance(layer.lora_gate_out["default"], GateLogit) for layer in layers.values())
        gate_names = [n for n, p in model.named_parameters() if "lora_gate" in n]
        assert len(gate_names) == 8 and all(n.endswith("lora_gate_out.default.bias") for n in gate_names)
    model.eval()
    if context.shuffle_generator is not None:
        context.shuffle_generator.manual_seed(SHUFFLE_SEED)  # the reloaded model starts the stream anew
    with torch.no_grad():
        expected = model(**scored_batch).logits
    gates = gate_statistics(model)
    if method == "temporal_qlora_constant":
        assert all(torch.equal(g, g[:1, :1].expand_as(g)) for g in gates.values())
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["gate_shuffle"] == (method == "temporal_qlora_shuffled")
    assert saved["gate_inputs"] == ([] if method == "temporal_qlora_constant" else ["motion", "entropy"])
    reloaded = load_adapter(_load(tiny_ckpt, "nf4"), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**scored_batch).logits, expected)


def test_shuffled_gates_are_the_ordered_gates_permuted_within_each_clip(tiny_ckpt, scored_batch):
    def gates(method):
        torch.manual_seed(0)  # the same gate weights for both methods
        model = apply_adapter(_load(tiny_ckpt, "nf4"), method, r=4, gate={"inputs": ["motion", "position"]})
        with torch.no_grad():
            model(**scored_batch)
        permutation = model.get_base_model().frame_gate_context.inputs.permutation
        return torch.stack(list(gate_statistics(model).values())), permutation  # [layers, B, K], [B*K]

    (ordered, none), (shuffled, permutation) = gates("temporal_qlora"), gates("temporal_qlora_shuffled")
    assert none is None
    assert torch.equal(gates("temporal_qlora_shuffled")[0], shuffled)  # seeded: deterministic
    # One permutation of each clip's own frames, the same for every layer.
    within = permutation.view(2, 4) - torch.arange(2)[:, None] * 4
    assert torch.equal(within.sort(dim=-1).values, torch.arange(4).expand(2, 4))
    assert torch.equal(shuffled, ordered.gather(-1, within[None].expand_as(ordered)))
    assert not torch.equal(within, torch.arange(4).expand(2, 4)) and not torch.allclose(ordered, shuffled)


def test_shuffle_stream_state_restores_the_next_permutations(tiny_ckpt, scored_batch):
    model = apply_adapter(_load(tiny_ckpt, "nf4"), "temporal_qlora_shuffled", r=4)
    context = model.get_base_model().frame_gate_context

    def next_permutation():
        with torch.no_grad():
            model(**scored_batch)
        return context.inputs.permutation.clone()

    next_permutation()
    state = shuffle_state(model)
    want = [next_permutation() for _ in range(3)]
    load_shuffle_state(model, state)
    assert all(torch.equal(next_permutation(), p) for p in want)
    plain = apply_adapter(_load(tiny_ckpt, "nf4"), "temporal_qlora", r=4)
    assert shuffle_state(plain) is None
    load_shuffle_state(plain, None)
    with pytest.raises(ValueError, match="do not shuffle"):
        load_shuffle_state(plain, state)
    with pytest.raises(ValueError, match="the model's gates shuffle"):
        load_shuffle_state(model, None)


def test_adapters_saved_before_standardisation_load_with_raw_scores(tiny_ckpt, scored_batch, tmp_path):
    model = apply_adapter(
        _load(tiny_ckpt, "nf4"), "temporal_qlora", r=4, alpha=8, gate={"standardize": False}
    )
    _randomize_lora(model, seed=4)
    model.eval()
    with torch.no_grad():
        expected = model(**scored_batch).logits
    model.save_pretrained(tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    fields = json.loads(config_path.read_text())
    for key in ("gate_standardize", "gate_init_std", "gate_shuffle"):  # what an older save lacks
        del fields[key]
    config_path.write_text(json.dumps(fields))
    assert TemporalLoraConfig.from_pretrained(tmp_path / "adapter").gate_standardize is False
    reloaded = load_adapter(_load(tiny_ckpt, "nf4"), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**scored_batch).logits, expected)

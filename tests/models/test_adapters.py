import pytest
import torch
from peft import PeftModel

from models.adapters import apply_adapter, load_adapter, save_adapter, trainable_parameter_count
from models.checkpointing import checkpointed_layers
from models.loading import load_model
from models.methods import uses_frame_gates
from models.towers import FRAME_POSITION_EMBEDDING, PLACEMENTS, prefixes_of, tower_of


def _nf4(path):
    return load_model(path, quantization="nf4", compute_dtype=torch.float32, device="cpu")


def _lora_modules(model):
    return [n for n, _ in model.named_modules() if n.endswith("lora_A.default")]


def test_qlora_trains_saves_and_reloads(tiny_ckpt, batch, tmp_path):
    model = apply_adapter(_nf4(tiny_ckpt), "qlora", r=8, alpha=16)
    assert isinstance(model, PeftModel)
    names = _lora_modules(model)
    assert any(".vision_model." in n for n in names) and any(".language_model." in n for n in names)
    assert not any("qformer" in n for n in names)
    trainable, total = trainable_parameter_count(model)
    assert 0 < trainable < total

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses

    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files

    reloaded = PeftModel.from_pretrained(_nf4(tiny_ckpt), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, expected)


def test_lora_on_16bit_with_checkpointing(tiny_ckpt, batch):
    base = load_model(tiny_ckpt, quantization="none", compute_dtype=torch.float32, device="cpu")
    model = apply_adapter(base, "lora", r=4, alpha=8, dropout=0.1, gradient_checkpointing=True)
    model.train()
    loss = model(**batch).loss
    loss.backward()
    # B starts at zero, so at step 0 only lora_B gets a gradient (dL/dA = B^T ... = 0)
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n and "vision_model" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("method", ["qlora", "temporal_qlora", "adapter"])
def test_checkpointing_only_the_named_towers_keeps_loss_and_grads(tiny_ckpt, batch, method):
    if uses_frame_gates(method):
        clips, frames = batch["pixel_values"].shape[:2]
        batch = {**batch, "frame_scores": torch.rand(clips, frames, 3, generator=torch.Generator().manual_seed(1))}

    def loss_and_grads(checkpointing):
        torch.manual_seed(0)
        model = apply_adapter(_nf4(tiny_ckpt), method, r=4, alpha=8, gradient_checkpointing=checkpointing)
        model.train()
        loss = model(**batch).loss
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
        return model, loss.detach(), grads

    _, plain_loss, plain_grads = loss_and_grads(False)
    model, loss, grads = loss_and_grads(["vision"])
    assert checkpointed_layers(model) == {"vision": model.config.vision_config.num_hidden_layers}
    torch.testing.assert_close(loss, plain_loss)
    assert grads.keys() == plain_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    fusion = apply_adapter(_nf4(tiny_ckpt), method, r=4, alpha=8, gradient_checkpointing=["fusion", "llm"])
    assert set(checkpointed_layers(fusion)) == {"frame_qformer", "video_qformer", "llm"}


def test_full_and_frozen(tiny_ckpt, batch):
    full = apply_adapter(
        load_model(tiny_ckpt, quantization="none", compute_dtype=torch.float32, device="cpu"), "full"
    )
    trainable, total = trainable_parameter_count(full)
    assert trainable == total

    frozen = apply_adapter(
        load_model(tiny_ckpt, quantization="none", compute_dtype=torch.float32, device="cpu"),
        "frozen",
        modules_to_save=["video_projection"],  # a linear probe; by default frozen trains nothing
    )
    trainable, _ = trainable_parameter_count(frozen)
    assert trainable == sum(p.numel() for p in frozen.video_projection.parameters())
    frozen(**batch).loss.backward()  # something trains, so backward works


def test_method_checks(tiny_ckpt):
    with pytest.raises(ValueError, match="method"):
        apply_adapter(torch.nn.Linear(2, 2), "ia3")
    plain = load_model(tiny_ckpt, quantization="none", compute_dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="qlora needs"):
        apply_adapter(plain, "qlora")
    with pytest.raises(ValueError, match="temporal_qlora needs"):
        apply_adapter(plain, "temporal_qlora")
    nf4 = _nf4(tiny_ckpt)
    with pytest.raises(ValueError, match="quantized"):
        apply_adapter(nf4, "lora")
    with pytest.raises(ValueError, match="quantized"):
        apply_adapter(nf4, "temporal_lora")
    with pytest.raises(ValueError, match="gate settings"):
        apply_adapter(nf4, "qlora", gate={"mode": "rank"})
    with pytest.raises(ValueError, match="unknown gate setting"):
        apply_adapter(nf4, "temporal_qlora", gate={"modes": "rank"})
    with pytest.raises(ValueError, match="gate_mode"):
        apply_adapter(nf4, "temporal_qlora", gate={"mode": "soft"})
    with pytest.raises(ValueError, match="total_step"):
        apply_adapter(nf4, "adalora")


def test_parameter_count_counts_4bit_values(tiny_ckpt):
    plain = load_model(tiny_ckpt, quantization="none", compute_dtype=torch.float32, device="cpu")
    assert trainable_parameter_count(_nf4(tiny_ckpt))[1] == trainable_parameter_count(plain)[1]


# --- every method: trains, saves (save_adapter = the trainer's export), reloads bit for bit -----------
_METHOD_BASES = {"qlora8": "int8", "prefix": "nf4", "adapter": "nf4", "temporal_qlora": "nf4"}


def _trained(model, batch, steps=2):
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("qlora8", {}),
        ("temporal_qlora", {"placement": "all"}),
        ("prefix", {"num_virtual_tokens": 4}),
        ("adapter", {"placement": "both", "bottleneck": {"dim": 8}}),
        ("full", {}),
        ("frozen", {"modules_to_save": ["video_projection"]}),
    ],
)
def test_every_method_round_trips_bit_for_bit(tiny_ckpt, batch, tmp_path, method, kwargs):
    quantization = _METHOD_BASES.get(method, "none")

    def base():
        return load_model(tiny_ckpt, quantization=quantization, compute_dtype=torch.float32, device="cpu")

    if uses_frame_gates(method):  # the gates read the selector's per-frame scores
        batch = {**batch, "frame_scores": torch.rand(2, 4, 3, generator=torch.Generator().manual_seed(1))}
    model = apply_adapter(base(), method, **kwargs)
    trained_names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained_names
    model = _trained(model, batch)
    with torch.no_grad():
        expected = model(**batch).logits
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if n in trained_names}

    if uses_frame_gates(method):  # the order pathway trained and is saved with the adapter
        position = next(v for n, v in trained.items() if FRAME_POSITION_EMBEDDING in n)
        assert not torch.equal(position, base().get_submodule(FRAME_POSITION_EMBEDDING).weight)
    save_adapter(model, tmp_path / "adapter")
    reloaded = load_adapter(base(), tmp_path / "adapter").eval()
    params = dict(reloaded.named_parameters())
    for name, value in trained.items():
        assert torch.equal(params[name], value), name
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, expected)
    assert not any(p.requires_grad for p in reloaded.parameters())
    trainable = load_adapter(base(), tmp_path / "adapter", is_trainable=True)
    assert {n for n, p in trainable.named_parameters() if p.requires_grad} == set(trained_names)


def test_frozen_is_zero_shot_and_saves_nothing_trainable(tiny_ckpt, batch, tmp_path):
    model = apply_adapter(
        load_model(tiny_ckpt, quantization="none", compute_dtype=torch.float32, device="cpu"), "frozen"
    )
    assert trainable_parameter_count(model)[0] == 0
    save_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json"]
    plain = load_model(tiny_ckpt, quantization="none", compute_dtype=torch.float32, device="cpu")
    reloaded = load_adapter(plain, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, model(**batch).logits)


def _adapted(model):
    """Names (in the unwrapped model) of the modules peft gave a LoRA adapter."""
    return {n.removeprefix("base_model.model.").removesuffix(".lora_A.default") for n in _lora_modules(model)}


@pytest.mark.parametrize(
    ("placement", "towers"),
    [
        ("vision", {"vision"}),
        ("fusion", {"frame_qformer", "video_qformer"}),
        ("llm", {"llm"}),
        ("both", {"vision", "llm"}),
        ("all", {"vision", "frame_qformer", "video_qformer", "llm"}),
    ],
)
def test_lora_placement_picks_the_towers(tiny_ckpt, placement, towers):
    model = apply_adapter(_nf4(tiny_ckpt), "qlora", placement=placement)
    assert {tower_of(n) for n in _adapted(model)} == towers


def test_fusion_placement_adapts_exactly_the_qformer_linears_and_trains_them(tiny_ckpt, batch):
    """fusion = every linear of both Q-Formers (attention q/k/v/output, cross-attention, query MLP),
    nothing else; all = the union of vision, fusion and llm."""
    plain = load_model(tiny_ckpt, quantization="none", compute_dtype=torch.float32, device="cpu")
    qformers = prefixes_of(PLACEMENTS["fusion"])
    qformer_linears = {
        n for n, m in plain.named_modules() if isinstance(m, torch.nn.Linear) and f"{n}.".startswith(qformers)
    }
    assert len(qformer_linears) == 16 + 20  # frame Q-Former: 1 cross-attention layer of 2; video: 2 of 2
    model = apply_adapter(_nf4(tiny_ckpt), "qlora", placement="fusion", r=4)
    assert _adapted(model) == qformer_linears
    parts = [
        _adapted(apply_adapter(_nf4(tiny_ckpt), "qlora", placement=p)) for p in ("vision", "fusion", "llm")
    ]
    assert _adapted(apply_adapter(_nf4(tiny_ckpt), "qlora", placement="all")) == set.union(*parts)

    model.train()
    model(**batch).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    assert len(grads) == len(qformer_linears)
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), [
        n for n, g in grads.items() if g is None or g.abs().sum() == 0
    ]


@pytest.mark.parametrize("modules_to_save", [None, ["video_projection"]])
def test_temporal_methods_train_the_frame_position_embedding(tiny_ckpt, batch, modules_to_save):
    """The order pathway: under frame-gated methods the frame position embedding trains (peft's
    modules_to_save copy) even when modules_to_save is given; plain qlora leaves it frozen."""
    scored = {**batch, "frame_scores": torch.rand(2, 4, 3, generator=torch.Generator().manual_seed(1))}
    options = {} if modules_to_save is None else {"modules_to_save": modules_to_save}
    model = apply_adapter(_nf4(tiny_ckpt), "temporal_qlora", **options)
    position = f"base_model.model.{FRAME_POSITION_EMBEDDING}.modules_to_save.default.weight"
    params = dict(model.named_parameters())
    assert params[position].requires_grad
    model.train()
    model(**scored).loss.backward()
    grad = params[position].grad
    # Only the rows of the kept frames' positions (4 frames: rows 0-3) are read, so only they learn.
    assert grad[:4].abs().sum(dim=1).min() > 0 and grad[4:].abs().sum() == 0

    qlora = apply_adapter(_nf4(tiny_ckpt), "qlora")
    assert not any(FRAME_POSITION_EMBEDDING in n for n, p in qlora.named_parameters() if p.requires_grad)


def test_prefix_generation_matches_forward(tiny_ckpt, batch, processor):
    """Greedy decoding through peft's prefix cache sees what a plain forward over the same tokens sees:
    the first two generated steps' logits equal the forward logits at the last position."""
    model = _trained(apply_adapter(_nf4(tiny_ckpt), "prefix", num_virtual_tokens=3), batch)
    plain = _nf4(tiny_ckpt).eval()
    prompt = processor.generation_inputs(2)
    video = {"pixel_values": batch["pixel_values"]}
    with torch.no_grad():
        out = model.generate(
            **video,
            **prompt,
            max_new_tokens=2,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
        first = model(**video, **prompt).logits[:, -1]
        ids = torch.cat([prompt["input_ids"], out.sequences[:, :1]], dim=1)
        second = model(**video, input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
        without_prefix = plain(**video, **prompt).logits[:, -1]
    torch.testing.assert_close(out.logits[0], first, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.logits[1], second, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(first, without_prefix, atol=1e-3)  # the prefix does act


def test_new_method_checks(tiny_ckpt):
    nf4 = _nf4(tiny_ckpt)
    with pytest.raises(ValueError, match="qlora8 needs a model loaded in int8"):
        apply_adapter(nf4, "qlora8")
    with pytest.raises(ValueError, match="placement must be one of"):
        apply_adapter(nf4, "qlora", placement="audio")
    with pytest.raises(ValueError, match="exclusive"):
        apply_adapter(nf4, "ranked_qlora", placement="llm", ranks={"llm": 8})
    with pytest.raises(ValueError, match="LLM only"):
        apply_adapter(nf4, "prefix", placement="vision")
    with pytest.raises(
        ValueError, match=r"placement 'fusion': bottleneck .* use placement vision / llm / both"
    ):
        apply_adapter(nf4, "adapter", placement="fusion")
    with pytest.raises(ValueError, match="num_virtual_tokens is for method 'prefix'"):
        apply_adapter(nf4, "qlora", num_virtual_tokens=4)
    with pytest.raises(ValueError, match="bottleneck settings are for method 'adapter'"):
        apply_adapter(nf4, "prefix", bottleneck={"dim": 4})

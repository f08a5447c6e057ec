import bitsandbytes as bnb
import pytest
import torch
from torch import nn

from models.loading import load_model
from models.presets import create_pretrained
from tests.models.conftest import CORPUS


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_model(missing, quantization="none", compute_dtype=torch.float32, device="cpu")


def test_unknown_quantization(tiny_ckpt):
    with pytest.raises(ValueError, match="quantization"):
        load_model(tiny_ckpt, quantization="fp4", compute_dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("quantization", ["nf4", "nf4-nodq"])
def test_nf4_quantizes_both_towers_only(tiny_ckpt, batch, quantization):
    dtype = torch.bfloat16
    model = load_model(tiny_ckpt, quantization=quantization, compute_dtype=dtype, device="cpu")
    assert model.is_loaded_in_4bit
    vit_fc1 = model.vision_model.encoder.layers[0].mlp.fc1
    llm_q = model.language_model.model.layers[0].self_attn.q_proj
    assert isinstance(vit_fc1, bnb.nn.Linear4bit) and isinstance(llm_q, bnb.nn.Linear4bit)
    assert vit_fc1.weight.quant_state.quant_type == "nf4"
    assert (vit_fc1.weight.quant_state.nested) == (quantization == "nf4")  # double quantization
    # the glue and the head stay ordinary linears in the compute dtype
    for name in (
        "qformer.encoder.layer.0.attention.attention.query",
        "video_qformer.encoder.layer.0.crossattention.attention.key",
        "video_projection",
        "language_model.lm_head",
    ):
        module = model.get_submodule(name)
        assert type(module) is nn.Linear and module.weight.dtype == dtype, name
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert n4 == 2 * 4 + 2 * 7  # 2 ViT layers x (qkv, projection, fc1, fc2) + 2 LLM layers x 7
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.dtype == dtype and torch.isfinite(out.loss)


def test_nf4_logits_close_to_fp32(tiny_ckpt, batch):
    ref = load_model(tiny_ckpt, quantization="none", compute_dtype=torch.float32, device="cpu")
    nf4 = load_model(tiny_ckpt, quantization="nf4", compute_dtype=torch.float32, device="cpu")
    with torch.no_grad():
        a, b = ref(**batch), nf4(**batch)
    assert torch.isfinite(b.logits).all() and torch.isfinite(b.loss)
    # 4-bit weights: loose agreement (correlation of the logits and similar losses)
    corr = torch.corrcoef(torch.stack([a.logits.flatten(), b.logits.flatten()]))[0, 1]
    assert corr > 0.9, corr
    # The exact check is test_nf4_logits_match_dequantized_reference; against fp32 weights the 4-bit
    # rounding error scales with the weights (tiny preset: std ~1/sqrt(hidden)), 0.167 was measured.
    assert abs(a.loss.item() - b.loss.item()) < 0.05 * a.loss.item()


def test_int8_and_skip_modules(tiny_ckpt, batch):
    model = load_model(tiny_ckpt, quantization="int8", compute_dtype=torch.float32, device="cpu")
    assert isinstance(model.language_model.model.layers[0].mlp.up_proj, bnb.nn.Linear8bitLt)
    # a custom skip list keeps the whole ViT in compute dtype
    model = load_model(
        tiny_ckpt,
        quantization="nf4",
        compute_dtype=torch.float32,
        device="cpu",
        skip_modules=[
            "vision_model",
            "qformer",
            "video_qformer",
            "video_projection",
            "language_model.lm_head",
        ],
    )
    assert type(model.vision_model.encoder.layers[0].mlp.fc1) is nn.Linear
    assert isinstance(model.language_model.model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def _dequantized_reference(tiny_ckpt, nf4_model, dtype):
    """The unquantized model with every NF4 weight replaced by its dequantized value."""
    ref = load_model(tiny_ckpt, quantization="none", compute_dtype=dtype, device="cpu")
    with torch.no_grad():
        for name, module in nf4_model.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                w = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
                ref.get_submodule(name).weight.copy_(w)
    return ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nf4_logits_match_dequantized_reference(tiny_ckpt, batch, dtype):
    """The 4-bit forward equals a plain forward with the dequantized weights: quantization error is
    all there is, the quantized path adds none of its own."""
    nf4 = load_model(tiny_ckpt, quantization="nf4", compute_dtype=dtype, device="cpu")
    ref = _dequantized_reference(tiny_ckpt, nf4, dtype)
    with torch.no_grad():
        a, b = nf4(**batch).logits.float(), ref(**batch).logits.float()
    tol = {torch.float32: 1e-4, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_4bit_storage_is_the_compute_dtype(tiny_ckpt):
    """`bnb_4bit_quant_storage=compute_dtype`: the packed weights are bf16 tensors of out*in/4
    elements (two 4-bit codes per byte, two bytes per element), so every parameter has one dtype and
    ZeRO-3 can flatten and partition the 4-bit weights with the rest."""
    model = load_model(tiny_ckpt, quantization="nf4", compute_dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    weight = model.language_model.model.layers[0].mlp.up_proj.weight
    out_features, in_features = weight.quant_state.shape
    assert isinstance(weight, bnb.nn.Params4bit) and weight.dtype == torch.bfloat16
    assert weight.numel() == out_features * in_features // 4
    assert weight.quant_state.dtype == torch.bfloat16  # dequantized into the compute dtype


def _packed_layers(model):
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, bnb.nn.Linear4bit) and getattr(m.weight.quant_state, "packing_format_for_cpu", False)
    ]


@pytest.fixture
def cpu_reports_avx512bf16(monkeypatch):
    """Layers built from here on see the CPU bitsandbytes repacks for (AVX512-BF16), whatever this CPU
    has: `Linear4bit.__init__` reads the flag from this function."""
    monkeypatch.setattr(bnb.nn.modules, "has_avx512bf16", lambda: True)


def test_4bit_layers_keep_their_training_layout_on_any_cpu(tiny_ckpt, batch, cpu_reports_avx512bf16):
    """On an AVX512-BF16 CPU bitsandbytes would repack every 4-bit weight at the first eval-mode
    forward without grad; the loader switches that off, so nothing is repacked."""
    model = load_model(tiny_ckpt, quantization="nf4", compute_dtype=torch.float32, device="cpu")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    with torch.no_grad():
        model(**batch)
    assert _packed_layers(model) == []


@pytest.fixture(scope="module")
def tiny_ckpt_without_dropout(tmp_path_factory):
    """The tiny base with the Q-Formers' dropout off (the other towers have none): training mode
    and eval mode then compute the same function."""
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    return create_pretrained(
        "tiny",
        tmp_path_factory.mktemp("tiny_no_dropout"),
        CORPUS,
        qformer_config=no_dropout,
        video_qformer_config=no_dropout,
    )


def test_qlora_evaluated_trained_and_evaluated_again(tiny_ckpt_without_dropout, batch, cpu_reports_avx512bf16):
    """Evaluate, train a step, evaluate: the step runs (it crashed on a repacked weight), no layer is
    repacked, and eval-mode logits equal the training-mode logits of the same weights."""
    from models.adapters import apply_adapter

    base = load_model(tiny_ckpt_without_dropout, quantization="nf4", compute_dtype=torch.float32, device="cpu")
    model = apply_adapter(base, "qlora", r=8, alpha=16)
    model.eval()
    with torch.no_grad():
        model(**batch)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch).loss.backward()
    opt.step()
    opt.zero_grad()
    training_logits = model(**batch).logits.detach()
    model.eval()
    with torch.no_grad():
        eval_logits = model(**batch).logits
    assert _packed_layers(model) == []
    torch.testing.assert_close(eval_logits, training_logits, rtol=1e-5, atol=1e-5)

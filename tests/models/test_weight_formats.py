"""Per-part weight formats: model.quantization={vision: int8, llm: nf4} / {vision: none, llm: nf4} /
{fusion: nf4} loads each part in its own bitsandbytes (or 16-bit) layers, trains through peft, and is
counted by the footprint as loaded."""

import bitsandbytes as bnb
import pytest
import torch
from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit
from peft.tuners.lora.bnb import Linear8bitLt as LoraLinear8bitLt
from torch import nn

from models.adapters import apply_adapter
from models.footprint import estimate_weight_bytes, model_weight_bytes, preset_footprint
from models.loading import load_model, model_formats
from models.method_spec import FULL_PRECISION_BASE, INT8_BASE, QUANTIZED_BASE
from models.train_state import train_state
from models.weight_formats import canonical, describe, tower_formats

INT8_VIT = {"vision": "int8", "fusion": "none", "llm": "nf4"}
BF16_VIT = {"vision": "none", "fusion": "none", "llm": "nf4"}
NF4_FUSION = {"vision": "nf4", "fusion": "nf4", "llm": "nf4"}
VIT_FC1 = "vision_model.encoder.layers.0.mlp.fc1"
LLM_UP = "language_model.model.layers.0.mlp.up_proj"
FRAME_QUERY = "qformer.encoder.layer.0.attention.attention.query"
VIDEO_CROSS_KEY = "video_qformer.encoder.layer.0.crossattention.attention.key"
# Never quantized, whatever the towers hold.
NEVER_QUANTIZED = ("video_projection", "language_model.lm_head")
# Not quantized unless model.quantization names fusion.
GLUE = (FRAME_QUERY, *NEVER_QUANTIZED)


def _load(path, quantization, dtype=torch.float32):
    return load_model(path, quantization=quantization, compute_dtype=dtype, device="cpu")


def _tower_linears(model, prefix):
    return {n: m for n, m in model.named_modules() if n.startswith(prefix) and isinstance(m, nn.Linear)}


def test_tower_formats_fill_the_default_and_name_bad_keys():
    assert tower_formats("int8") == {"vision": "int8", "fusion": "none", "llm": "int8"}
    assert tower_formats({"vision": "none"}, default="nf4") == BF16_VIT
    assert tower_formats({"vision": "int8", "llm": "auto"}, default="nf4") == INT8_VIT
    assert canonical(tower_formats({"vision": "nf4"}, default="nf4")) == "nf4"
    assert canonical(INT8_VIT) == INT8_VIT and describe(INT8_VIT) == "vision int8, llm nf4"
    # fusion stays 16-bit unless named; "auto" there is the method's format, as for the towers
    assert tower_formats({"fusion": "nf4"}, default="nf4") == NF4_FUSION
    assert tower_formats({"fusion": "auto"}, default="nf4") == NF4_FUSION
    assert canonical(NF4_FUSION) == NF4_FUSION and describe(NF4_FUSION) == "vision nf4, fusion nf4, llm nf4"
    with pytest.raises(ValueError, match=r"quantization.llm is not set"):
        tower_formats({"vision": "none"})
    with pytest.raises(ValueError, match=r"names \['video_qformer'\].*fusion: both Q-Formers"):
        tower_formats({"video_qformer": "int8"}, default="nf4")
    with pytest.raises(ValueError, match=r"quantization.vision must be one of .*got 'fp4'"):
        tower_formats({"vision": "fp4"}, default="nf4")


def test_a_quantized_base_admits_16bit_towers_beside_its_format():
    assert QUANTIZED_BASE.admits({"none", "nf4"}) and QUANTIZED_BASE.admits({"int8", "nf4"})
    assert not QUANTIZED_BASE.admits({"none"})
    assert INT8_BASE.admits({"int8", "none"}) and not INT8_BASE.admits({"int8", "nf4"})
    assert FULL_PRECISION_BASE.admits({"none"}) and not FULL_PRECISION_BASE.admits({"none", "nf4"})


def test_int8_vit_beside_nf4_llm_holds_what_a_whole_int8_load_holds(tiny_ckpt):
    mixed = _load(tiny_ckpt, INT8_VIT)
    assert model_formats(mixed) == INT8_VIT
    vit, llm = _tower_linears(mixed, "vision_model."), _tower_linears(mixed, "language_model.model.")
    assert vit and all(isinstance(m, bnb.nn.Linear8bitLt) for m in vit.values())
    assert llm and all(isinstance(m, bnb.nn.Linear4bit) for m in llm.values())
    for name in GLUE:
        assert type(mixed.get_submodule(name)) is nn.Linear, name
    # The ViT quantized after the load is the ViT an int8 load quantizes: same int8 rows, same scales.
    int8 = _load(tiny_ckpt, "int8")
    for name, layer in vit.items():
        reference = int8.get_submodule(name)
        assert torch.equal(layer.weight.data, reference.weight.data), name
        assert torch.equal(layer.weight.SCB, reference.weight.SCB), name
        assert torch.equal(layer.bias, reference.bias), name


def test_16bit_vit_beside_nf4_llm(tiny_ckpt):
    dtype = torch.bfloat16
    mixed = _load(tiny_ckpt, BF16_VIT, dtype)
    plain = _load(tiny_ckpt, "none", dtype)
    assert model_formats(mixed) == BF16_VIT
    for name, layer in _tower_linears(mixed, "vision_model.").items():
        assert type(layer) is nn.Linear and layer.weight.dtype == dtype, name
        assert torch.equal(layer.weight, plain.get_submodule(name).weight), name
    assert isinstance(mixed.get_submodule(LLM_UP), bnb.nn.Linear4bit)


@pytest.mark.parametrize(
    ("quantization", "vit_layer"),
    [(INT8_VIT, LoraLinear8bitLt), (BF16_VIT, None)],
    ids=["int8_vit", "bf16_vit"],
)
def test_qlora_trains_on_a_mixed_base(tiny_ckpt, batch, quantization, vit_layer):
    model = apply_adapter(_load(tiny_ckpt, quantization), "qlora", r=4, alpha=8)
    inner = model.base_model.model
    vit, llm = inner.get_submodule(VIT_FC1), inner.get_submodule(LLM_UP)
    assert isinstance(llm, LoraLinear4bit)
    if vit_layer is None:
        assert type(vit.base_layer) is nn.Linear
    else:
        assert isinstance(vit, vit_layer)
    model.train()
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    # B starts at zero, so at the first step B is what gets a gradient, in both towers.
    for layer in (vit, llm):
        assert layer.lora_B["default"].weight.grad.abs().sum() > 0


def test_a_method_sees_the_formats_of_every_tower(tiny_ckpt):
    with pytest.raises(ValueError, match=r"lora needs a model loaded in 16/32-bit.*vision none, llm nf4"):
        apply_adapter(_load(tiny_ckpt, BF16_VIT), "lora")
    with pytest.raises(ValueError, match=r"qlora8 needs a model loaded in int8.*vision int8, llm nf4"):
        apply_adapter(_load(tiny_ckpt, INT8_VIT), "qlora8")


@pytest.mark.parametrize("quantization", [INT8_VIT, BF16_VIT], ids=["int8_vit", "bf16_vit"])
def test_footprint_of_a_mixed_load_is_what_it_holds(tiny_ckpt, quantization):
    model = _load(tiny_ckpt, quantization, torch.bfloat16)
    assert estimate_weight_bytes(model.config, quantization) == model_weight_bytes(model)


def test_footprint_and_train_state_report_each_towers_format():
    report = preset_footprint("tiny", formats=("nf4-dq", "bf16", BF16_VIT))
    mixed = report["formats"]["vision none, llm nf4"]
    assert (
        mixed["tower_formats"] == BF16_VIT and report["formats"]["nf4-dq"]["tower_formats"]["vision"] == "nf4"
    )
    components = mixed["components"]
    assert components["vision"] == report["formats"]["bf16"]["components"]["vision"]
    assert components["llm"] == report["formats"]["nf4-dq"]["components"]["llm"]
    nf4 = train_state("tiny", "qlora")
    vit16 = train_state("tiny", "qlora", quantization={"vision": "none"})
    assert vit16["weight_format"] == "vision none, llm nf4" and nf4["weight_format"] == "nf4-dq"
    assert vit16["frozen_weight_bytes"] > nf4["frozen_weight_bytes"]
    assert vit16["trainable_params"] == nf4["trainable_params"]


def test_a_mixed_base_dequantizes_every_tower_for_merging(tiny_ckpt):
    from models.loading import dequantize_model

    plain = _load(tiny_ckpt, "none")
    merged = dequantize_model(_load(tiny_ckpt, INT8_VIT), INT8_VIT)
    assert not any(isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)) for m in merged.modules())
    assert not merged.is_loaded_in_4bit and not merged.is_loaded_in_8bit
    # Within each format's rounding (measured: int8 0.006, NF4 0.092 of the weight's norm).
    for name, error in ((VIT_FC1, 0.02), (LLM_UP, 0.15)):
        weight, reference = merged.get_submodule(name).weight, plain.get_submodule(name).weight
        assert type(merged.get_submodule(name)) is nn.Linear and weight.dtype == reference.dtype
        assert (weight - reference).norm() < error * reference.norm(), name


def test_nf4_fusion_quantizes_both_qformers_and_trains(tiny_ckpt, batch):
    """{fusion: nf4}: the frozen Q-Formers in NF4 beside the NF4 towers, in one load; the projection
    and lm_head stay 16-bit; qlora trains on it, and LoRA on the 4-bit Q-Formers (placement=fusion)."""
    model = _load(tiny_ckpt, {"fusion": "nf4", "vision": "nf4", "llm": "nf4"}, torch.bfloat16)
    assert model_formats(model) == NF4_FUSION
    for name in (FRAME_QUERY, VIDEO_CROSS_KEY, VIT_FC1, LLM_UP):
        assert isinstance(model.get_submodule(name), bnb.nn.Linear4bit), name
    for name in NEVER_QUANTIZED:
        assert type(model.get_submodule(name)) is nn.Linear, name
    assert estimate_weight_bytes(model.config, NF4_FUSION) == model_weight_bytes(model)
    nf4 = model_weight_bytes(_load(tiny_ckpt, "nf4", torch.bfloat16))
    fused = model_weight_bytes(model)
    for part in ("qformer", "video_qformer"):
        assert fused[part]["bytes"] < 0.5 * nf4[part]["bytes"], part
    for part in ("vision", "projection", "llm"):
        assert fused[part] == nf4[part], part

    adapted = apply_adapter(model, "qlora", r=4, alpha=8, placement="all").train()
    inner = adapted.base_model.model
    loss = adapted(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    for name in (FRAME_QUERY, VIDEO_CROSS_KEY):
        layer = inner.get_submodule(name)
        assert isinstance(layer, LoraLinear4bit), name
        assert layer.lora_B["default"].weight.grad.abs().sum() > 0, name


def test_int8_fusion_beside_nf4_towers_is_what_an_int8_load_holds(tiny_ckpt):
    """A fusion part in a second quantized format is quantized after the load (`quantize_tower`),
    and holds exactly the int8 rows and scales a load that quantizes it in int8 holds."""
    mixed = _load(tiny_ckpt, {"vision": "nf4", "fusion": "int8", "llm": "nf4"})
    assert model_formats(mixed) == {"vision": "nf4", "fusion": "int8", "llm": "nf4"}
    int8 = _load(tiny_ckpt, {"vision": "int8", "fusion": "int8", "llm": "int8"})
    for name in (FRAME_QUERY, VIDEO_CROSS_KEY):
        layer, reference = mixed.get_submodule(name), int8.get_submodule(name)
        assert isinstance(layer, bnb.nn.Linear8bitLt), name
        assert torch.equal(layer.weight.data, reference.weight.data), name
        assert torch.equal(layer.weight.SCB, reference.weight.SCB), name
    for name in NEVER_QUANTIZED:
        assert type(mixed.get_submodule(name)) is nn.Linear, name

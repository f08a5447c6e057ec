"""The method registry: every method has a declaration that reproduces the tables it replaced, and a
declaration drives what `apply_adapter` checks and builds."""

from __future__ import annotations

import dataclasses

import pytest
from peft import PeftModel

from models.adapters import apply_adapter
from models.loading import QUANTIZATIONS
from models.method_spec import OWN_SETTINGS, WHOLE_MODEL_FORMAT, AdapterOptions, GroupedRanks
from models.methods import METHODS, adapter_method, uses_frame_gates
from models.presets import build_model
from models.temporal_lora import TemporalLoraConfig, temporal_layers
from models.tokenizer import build_tokenizer

# --- the tables the declarations replaced, as they were written before them ------------------------------
OLD_METHODS = (
    "lora",
    "qlora",
    "qlora8",
    "prefix",
    "adapter",
    "full",
    "frozen",
    "temporal_lora",
    "temporal_qlora",
    "ranked_qlora",
    "temporal_ranked_qlora",
    "adalora",
)
OLD_TEMPORAL = ("temporal_lora", "temporal_qlora", "temporal_ranked_qlora")
OLD_QUANTIZED = ("qlora", "qlora8", "temporal_qlora", "ranked_qlora", "temporal_ranked_qlora")
OLD_FULL_PRECISION = ("lora", "temporal_lora", "full")
OLD_METHOD_QUANTIZATION = {
    **{m: "nf4" for m in OLD_QUANTIZED},
    "qlora8": "int8",
    **{m: "none" for m in OLD_FULL_PRECISION},
    "frozen": "none",
    "prefix": "nf4",
    "adapter": "nf4",
    "adalora": "nf4",
}
OLD_MERGEABLE = ("lora", "qlora", "qlora8", "ranked_qlora", "adalora")
OLD_LORA_FAMILY = ("lora", "qlora", "qlora8", *OLD_TEMPORAL, "ranked_qlora", "adalora")
# Declared after the tables: the controls of the temporal claim (#20).
TEMPORAL_CONTROLS = ("temporal_qlora_shuffled", "temporal_qlora_constant")
OLD = {n: m for n, m in METHODS.items() if n in OLD_METHODS}


def test_every_method_has_a_consistent_declaration():
    assert set(METHODS) == set(OLD_METHODS) | set(TEMPORAL_CONTROLS)
    options = {f.name for f in dataclasses.fields(AdapterOptions)}
    for name, method in METHODS.items():
        assert method.name == name and method.summary
        assert method.weight_format in QUANTIZATIONS and method.weight_format in method.base.formats, name
        assert method.fields <= options, name
        assert set(method.settings) <= set(OWN_SETTINGS)
        assert ("ranks" in method.fields) == (method.grouped_ranks is not GroupedRanks.NO), name
        assert ("gate" in method.fields) == method.frame_gates, name
        if method.counterpart is not None:
            assert method.counterpart in METHODS
        if method.default_placement is None:
            assert "placement" not in method.fields, name


def test_declarations_reproduce_the_old_tables():
    assert {n: m.weight_format for n, m in OLD.items()} == OLD_METHOD_QUANTIZATION
    assert {n for n in OLD if uses_frame_gates(n)} == set(OLD_TEMPORAL)
    assert {n for n, m in OLD.items() if m.mergeable} == set(OLD_MERGEABLE)
    assert [n for n, m in OLD.items() if m.saved_as == WHOLE_MODEL_FORMAT] == ["full"]
    # "ranked" in the name meant: per-group ranks required.
    assert {n for n, m in OLD.items() if m.grouped_ranks is GroupedRanks.REQUIRED} == {
        n for n in OLD if "ranked" in n
    }
    for name, method in OLD.items():
        accepts_16bit = "none" in method.base.formats
        accepts_quantized = any(f != "none" for f in method.base.formats)
        assert (name in OLD_QUANTIZED) == (not accepts_16bit), name
        assert (name in OLD_FULL_PRECISION) == (not accepts_quantized), name
    assert METHODS["qlora8"].base.formats == ("int8",)
    assert [n for n, m in OLD.items() if not m.trains] == ["frozen"]
    assert [n for n, m in OLD.items() if m.step_update is not None] == ["adalora"]
    assert {n for n, m in OLD.items() if "r" in m.fields} == set(OLD_LORA_FAMILY)


def test_the_temporal_controls_are_temporal_qlora_with_fixed_gate_settings():
    for name in TEMPORAL_CONTROLS:
        control, reference = METHODS[name], METHODS["temporal_qlora"]
        assert uses_frame_gates(name) and not control.mergeable and control.gate_overrides
        differing = {
            f.name
            for f in dataclasses.fields(control)
            if getattr(control, f.name) != getattr(reference, f.name)
        }
        assert differing == {"name", "summary", "gate_overrides", "counterpart"}, name
    assert dict(METHODS["temporal_qlora_shuffled"].gate_overrides) == {"gate_shuffle": True}
    assert dict(METHODS["temporal_qlora_constant"].gate_overrides) == {"gate_inputs": ()}


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ValueError, match=r"method must be one of \('lora', 'qlora'"):
        adapter_method("ia3")


@pytest.fixture
def tiny():
    tokenizer = build_tokenizer(["a red circle moves up", "two blue squares move down"])
    return build_model("tiny", tokenizer)


def test_frame_gates_in_the_declaration_make_the_lora_temporal(tiny, monkeypatch):
    gated = dataclasses.replace(METHODS["lora"], frame_gates=True, fields=METHODS["lora"].fields | {"gate"})
    monkeypatch.setitem(METHODS, "lora", gated)
    model = apply_adapter(tiny, "lora", r=4, gate={"inputs": ["motion"]})
    assert isinstance(model.peft_config["default"], TemporalLoraConfig)
    assert temporal_layers(model) and all(n.startswith("vision_model.") for n in temporal_layers(model))


def test_a_new_method_is_a_declaration_and_its_builder(tiny, monkeypatch):
    """Dispatch: the declared builder gets the declaration and the options; the checks use its fields."""
    seen = {}

    def build_probe(model, method, options):
        seen.update(method=method.name, options=options)
        model.requires_grad_(False)
        model.video_projection.requires_grad_(True)
        return model

    probe = dataclasses.replace(
        METHODS["frozen"], name="probe", build=build_probe, fields=frozenset({"modules_to_save", "budget"})
    )
    monkeypatch.setitem(METHODS, "probe", probe)
    model = apply_adapter(tiny, "probe", budget=10.0, r=4)
    assert seen == {"method": "probe", "options": AdapterOptions(budget=10.0, r=4)}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "video_projection.weight",
        "video_projection.bias",
    }
    with pytest.raises(ValueError, match=r"placement is for method 'lora' / .*, not 'probe'"):
        apply_adapter(tiny, "probe", placement="llm")


def test_grouped_ranks_required_by_the_declaration(tiny, monkeypatch):
    ranked = dataclasses.replace(METHODS["lora"], grouped_ranks=GroupedRanks.REQUIRED)
    monkeypatch.setitem(METHODS, "lora", ranked)
    with pytest.raises(ValueError, match="lora needs per-group ranks"):
        apply_adapter(tiny, "lora")
    model = apply_adapter(tiny, "lora", ranks={"llm": 4})
    assert isinstance(model, PeftModel) and model.adapter_allocation["groups"]["llm"]["rank"] == 4


def test_the_base_in_the_declaration_is_checked(tiny, monkeypatch):
    monkeypatch.setitem(METHODS, "lora", dataclasses.replace(METHODS["lora"], base=METHODS["qlora"].base))
    with pytest.raises(ValueError, match=r"lora needs a model loaded in 4/8-bit; this one is 16/32-bit"):
        apply_adapter(tiny, "lora")

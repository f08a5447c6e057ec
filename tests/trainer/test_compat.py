"""trainer.compat: model.quantization=auto resolved from the method, impossible combinations refused."""

import pytest
import torch

from trainer.compat import METHOD_QUANTIZATION, check_compatibility, resolve_quantization
from trainer.config import ConfigError, load_config
from trainer.ds_config import load_ds_config

CPU = torch.device("cpu")


def _cfg(*overrides):
    return load_config(None, list(overrides))


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("qlora", "nf4"),
        ("qlora8", "int8"),
        ("lora", "none"),
        ("full", "none"),
        ("frozen", "none"),
        ("prefix", "nf4"),
    ],
)
def test_auto_quantization_follows_the_method(method, expected):
    cfg = _cfg(f"adapter.method={method}")
    assert cfg.model.quantization == "auto"
    assert resolve_quantization(cfg) == expected


def test_every_adapter_method_has_a_default_quantization():
    from models.methods import METHODS

    assert set(METHOD_QUANTIZATION) == set(METHODS)


def test_explicit_quantization_is_kept_or_refused():
    assert resolve_quantization(_cfg("adapter.method=prefix", "model.quantization=none")) == "none"
    assert resolve_quantization(_cfg("adapter.method=qlora", "model.quantization=int8")) == "int8"
    with pytest.raises(ConfigError, match="qlora8 is LoRA on an int8 base but model.quantization=nf4"):
        resolve_quantization(_cfg("adapter.method=qlora8", "model.quantization=nf4"))
    with pytest.raises(ConfigError, match="adapter.method must be one of"):
        resolve_quantization(_cfg("adapter.method=ia3"))


def test_int8_under_zero3_is_refused_before_loading():
    cfg = _cfg("adapter.method=qlora8", "deepspeed.config=ds_configs/zero3.json")
    cfg.model.quantization = resolve_quantization(cfg)
    ds = load_ds_config(cfg, 1, CPU, torch.float32)
    with pytest.raises(ConfigError, match="ZeRO-3 cannot partition bitsandbytes int8"):
        check_compatibility(cfg, ds, CPU, torch.float32)


def test_checkpointing_an_unknown_tower_is_refused_before_loading():
    cfg = _cfg("adapter.method=qlora", "model.gradient_checkpointing=[vision, vit]")
    cfg.model.quantization = resolve_quantization(cfg)
    ds = load_ds_config(cfg, 1, CPU, torch.float32)
    with pytest.raises(ConfigError, match="model.gradient_checkpointing: 'vit' is not a tower with layers"):
        check_compatibility(cfg, ds, CPU, torch.float32)


@pytest.mark.parametrize("method", ["prefix", "adapter", "frozen"])
@pytest.mark.parametrize("quantization", ["nf4", "none"])
def test_prefix_adapter_frozen_take_either_base(method, quantization):
    cfg = _cfg(f"adapter.method={method}", f"model.quantization={quantization}")
    cfg.model.quantization = resolve_quantization(cfg)
    check_compatibility(cfg, load_ds_config(cfg, 1, CPU, torch.float32), CPU, torch.float32)


# --- per-tower weight formats: model.quantization={vision: ..., llm: ...} -------------------------------
def test_a_quantization_mapping_is_read_and_resolved_against_the_method():
    cfg = _cfg("adapter.method=qlora", "model.quantization={vision: none}")
    assert cfg.model.quantization == {"vision": "none"}
    # the unnamed LLM: qlora's nf4; the unnamed fusion layers: the compute dtype
    assert resolve_quantization(cfg) == {"vision": "none", "fusion": "none", "llm": "nf4"}
    fused = _cfg("adapter.method=qlora", "model.quantization={fusion: nf4}")
    assert resolve_quantization(fused) == {"vision": "nf4", "fusion": "nf4", "llm": "nf4"}
    same = _cfg("adapter.method=qlora", "model.quantization={vision: int8, llm: int8}")
    assert resolve_quantization(same) == "int8"  # one format for every tower is that format
    assert resolve_quantization(_cfg("adapter.method=qlora8", "model.quantization={vision: none}")) == {
        "vision": "none",
        "fusion": "none",
        "llm": "int8",
    }
    with pytest.raises(
        ConfigError, match=r"qlora8 is LoRA on an int8 base but model.quantization=vision nf4"
    ):
        resolve_quantization(_cfg("adapter.method=qlora8", "model.quantization={vision: nf4}"))
    with pytest.raises(ConfigError, match=r"model.quantization names \['projection'\]"):
        resolve_quantization(_cfg("model.quantization={projection: int8}"))
    with pytest.raises(ConfigError, match=r"model.quantization.llm must be one of"):
        resolve_quantization(_cfg("model.quantization={llm: fp8}"))
    with pytest.raises(ConfigError, match=r"model.quantization: 3 fits none of"):
        _cfg("model.quantization=3")


def _checked(*overrides):
    cfg = _cfg(*overrides)
    cfg.model.quantization = resolve_quantization(cfg)
    check_compatibility(cfg, load_ds_config(cfg, 1, CPU, torch.float32), CPU, torch.float32)
    return cfg


def test_mixed_formats_are_checked_against_the_method_and_zero3():
    _checked("adapter.method=qlora", "model.quantization={vision: int8, llm: nf4}")
    _checked(
        "adapter.method=temporal_qlora",
        "model.quantization={vision: none}",
        "deepspeed.config=ds_configs/zero3.json",
    )
    with pytest.raises(
        ConfigError, match=r"lora needs a 16/32-bit base but model.quantization=vision int8, llm none"
    ):
        _checked("adapter.method=lora", "model.quantization={vision: int8}")
    # NF4 Q-Formers under QLoRA, on ZeRO-2 and ZeRO-3 (the 4-bit storage is the compute dtype)
    _checked("adapter.method=qlora", "model.quantization={fusion: nf4}", "adapter.placement=all")
    _checked(
        "adapter.method=qlora", "model.quantization={fusion: nf4}", "deepspeed.config=ds_configs/zero3.json"
    )
    with pytest.raises(
        ConfigError,
        match=r"lora needs a 16/32-bit base but model.quantization=vision none, fusion nf4, llm none",
    ):
        _checked("adapter.method=lora", "model.quantization={fusion: nf4}")
    with pytest.raises(ConfigError, match=r"model.quantization.fusion=int8 with deepspeed.config"):
        _checked(
            "adapter.method=qlora",
            "model.quantization={fusion: int8}",
            "deepspeed.config=ds_configs/zero3.json",
        )
    with pytest.raises(
        ConfigError,
        match=r"ZeRO-3 cannot partition bitsandbytes int8 weights .*: model.quantization.vision=int8 with "
        r"deepspeed.config=ds_configs/zero3.json",
    ):
        _checked(
            "adapter.method=qlora",
            "model.quantization={vision: int8, llm: nf4}",
            "deepspeed.config=ds_configs/zero3.json",
        )

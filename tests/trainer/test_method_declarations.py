"""trainer.compat, trainer.export and the trainer's apply_adapter keywords follow each method's
declaration (`models.methods`), not its name."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from models.adapters import _check_options
from models.loading import QUANTIZATIONS
from models.method_spec import INT8_BASE, OWN_SETTINGS, WHOLE_MODEL_FORMAT, AdapterOptions
from models.methods import METHODS
from trainer.compat import check_compatibility, resolve_quantization
from trainer.config import AdapterConfig, ConfigError, load_config
from trainer.ds_config import load_ds_config
from trainer.export import export_merged
from trainer.run_setup import adapter_options

CPU = torch.device("cpu")


def _cfg(*overrides):
    return load_config(None, list(overrides))


def _checked(method: str, quantization: str) -> None:
    """resolve_quantization + check_compatibility, as the trainer runs them (ZeRO-0 for step updates)."""
    zero = ["deepspeed.config=ds_configs/zero0.json"] if METHODS[method].step_update else []
    cfg = _cfg(f"adapter.method={method}", f"model.quantization={quantization}", *zero)
    cfg.model.quantization = resolve_quantization(cfg)
    check_compatibility(cfg, load_ds_config(cfg, 1, CPU, torch.float32), CPU, torch.float32)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_compat_takes_the_declared_formats(name):
    method = METHODS[name]
    assert resolve_quantization(_cfg(f"adapter.method={name}")) == method.weight_format
    for quantization in QUANTIZATIONS:
        if quantization in method.base.formats:
            _checked(name, quantization)
        else:
            where = (
                "is LoRA on an int8 base" if method.base is INT8_BASE else f"needs a {method.base.label} base"
            )
            with pytest.raises(ConfigError, match=f"adapter.method={name} {where}"):
                _checked(name, quantization)


def test_a_method_with_a_step_update_needs_zero_stage_0():
    cfg = _cfg("adapter.method=adalora", "deepspeed.config=ds_configs/zero2.json")
    cfg.model.quantization = resolve_quantization(cfg)
    with pytest.raises(ConfigError, match="ds_configs/zero0.json"):
        check_compatibility(cfg, load_ds_config(cfg, 1, CPU, torch.float32), CPU, torch.float32)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_export_merges_what_the_declaration_calls_mergeable(tmp_path, name):
    method = METHODS[name]
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    run = {
        "adapter": {"method": name},
        "model": {"name_or_path": str(tmp_path / "no-base"), "quantization": "nf4"},
    }
    (adapter / "run_config.json").write_text(json.dumps(run))
    if method.mergeable or method.saved_as == WHOLE_MODEL_FORMAT:
        # Past the method check: it goes on to read the (here missing) base or model.
        with pytest.raises((OSError, ValueError)) as error:
            export_merged(adapter, tmp_path / "merged")
        assert "cannot be merged" not in str(error.value)
    else:
        with pytest.raises(ValueError, match=f"'{name}' adapter, which cannot be merged"):
            export_merged(adapter, tmp_path / "merged")


def test_declared_fields_are_adapter_config_keys():
    keys = {f.name for f in dataclasses.fields(AdapterConfig)} - {"method"}
    assert keys <= {f.name for f in dataclasses.fields(AdapterOptions)}
    assert set().union(*(m.fields for m in METHODS.values())) <= keys


@pytest.mark.parametrize("name", sorted(METHODS))
def test_trainer_passes_the_declared_settings_and_nothing_refused(name):
    cfg = _cfg(f"adapter.method={name}", "train.steps=7")
    kwargs = adapter_options(cfg, calibration=lambda count: [])
    method = METHODS[name]
    assert set(OWN_SETTINGS) & set(kwargs) == set(method.settings)
    for key in method.settings:
        section = getattr(cfg.adapter, key)
        if dataclasses.is_dataclass(section):
            assert kwargs[key] == {k: v for k, v in dataclasses.asdict(section).items() if v is not None}
        else:
            assert kwargs[key] == section
    assert kwargs["total_steps"] == 7
    _check_options(method, AdapterOptions(**kwargs))  # a default config is never refused


def test_gate_lr_is_refused_for_a_method_without_gates():
    for method, refused in (("qlora", True), ("temporal_qlora_constant", False)):
        cfg = _cfg(f"adapter.method={method}", "train.gate_lr=1e-2")
        cfg.model.quantization = resolve_quantization(cfg)
        ds = load_ds_config(cfg, 1, CPU, torch.float32)
        if refused:
            with pytest.raises(ConfigError, match="train.gate_lr .* adapter.method=qlora has none"):
                check_compatibility(cfg, ds, CPU, torch.float32)
        else:
            check_compatibility(cfg, ds, CPU, torch.float32)

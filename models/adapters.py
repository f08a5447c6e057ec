"""Which parameters train: `apply_adapter` sets a model up for one of the registered adapter methods.

The methods are declared in `models.methods` (LoRA / QLoRA / int8 LoRA through peft, frame-gated
temporal LoRA, per-tower ranks, AdaLoRA, prefix tuning, bottleneck adapters, full fine-tuning and
the frozen zero-shot baseline); `apply_adapter` checks the model and the options against the
method's declaration and hands them to its builder (`models.lora_methods`, `models.in_place_methods`).
`save_adapter` / `load_adapter` (`models.adapter_io`) round-trip every method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from . import rank_allocation as ra
from .adapter_io import load_adapter, save_adapter
from .loading import model_formats
from .method_spec import OWN_SETTINGS, AdapterMethod, AdapterOptions
from .methods import METHODS, adapter_method
from .parameters import trainable_parameter_count
from .towers import PLACEMENTS
from .weight_formats import FULL_PRECISION, canonical, describe

__all__ = [
    "apply_adapter",
    "load_adapter",
    "save_adapter",
    "trainable_parameter_count",
]


def apply_adapter(model: nn.Module, method: str, **options: Any) -> nn.Module:
    """Set up `model` for training with `method`.

    Args:
        model: a `VideoLlamaForConditionalGeneration`, loaded (`models.loading.load_model`) in a
            weight format the method's declaration accepts (`AdapterMethod.base`).
        method: a key of `models.methods.METHODS`.
        options: `models.method_spec.AdapterOptions` fields, named as the adapter.* config keys.
            Keys the method does not read (`AdapterMethod.fields`) are refused when given.
    Returns:
        a peft `PeftModel` for the LoRA family and adalora, the model itself for the others (with its
        LLM wrapped in peft for prefix). `.adapter_allocation` is a dict for logging (method,
        trainable parameters; for LoRA per-group ranks/alphas/params, scores, budget).
    """
    spec = adapter_method(method)
    settings = AdapterOptions(**options)
    _check_base(spec, model)
    _check_options(spec, settings)
    return spec.build(model, spec, settings)


def _check_base(spec: AdapterMethod, model: nn.Module) -> None:
    formats = model_formats(model)
    held = set(formats.values())
    if spec.base.admits(held):
        return
    hint = f"models.loading.load_model(quantization={spec.weight_format!r})"
    if spec.counterpart is not None and METHODS[spec.counterpart].base.admits(held):
        hint += f", or use method={spec.counterpart!r}"
    state = "16/32-bit" if held == {FULL_PRECISION} else f"quantized: {describe(canonical(formats))}"
    raise ValueError(f"{spec.name} needs a model loaded in {spec.base.label}; this one is {state} ({hint})")


def _check_options(spec: AdapterMethod, options: AdapterOptions) -> None:
    """Refuse options the method does not read and values no method takes."""
    for key in options.given():
        if key not in spec.fields:
            readers = " / ".join(repr(m.name) for m in METHODS.values() if key in m.fields)
            section = key in OWN_SETTINGS and isinstance(getattr(options, key), Mapping)
            what = f"{key} settings are" if section else f"{key} is"
            raise ValueError(f"{what} for method {readers}, not {spec.name!r}")
    if options.allocation not in ra.ALLOCATIONS:
        raise ValueError(f"adapter.allocation must be one of {ra.ALLOCATIONS}, got {options.allocation!r}")
    if options.placement is not None and options.placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {sorted(PLACEMENTS)}, got {options.placement!r}")

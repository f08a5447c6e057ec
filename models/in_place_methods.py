"""Builders of the methods that set the model up in place rather than wrapping it in a peft LoRA model:
full fine-tuning, the frozen (zero-shot) baseline, prefix tuning and bottleneck adapters.

Each returns the model itself with `adapter_method`, `adapter_format` (how `save_adapter` writes it)
and, for the ones saved as their trained modules, `adapter_modules_to_save`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .bottleneck import BottleneckConfig, add_bottleneck_adapters
from .checkpointing import enable_checkpointing
from .parameters import trainable_parameter_count
from .prefix import add_prefix
from .saved_modules import DEFAULT_MODULES_TO_SAVE, with_retrieval_head
from .towers import PLACEMENTS, tower

if TYPE_CHECKING:
    from .method_spec import AdapterMethod, AdapterOptions

DEFAULT_VIRTUAL_TOKENS = 20


def build_full(model: nn.Module, method: AdapterMethod, options: AdapterOptions) -> nn.Module:
    """Every parameter trains (saved as the whole model)."""
    model.requires_grad_(True)
    return _finish(model, method, options, None)


def build_frozen(model: nn.Module, method: AdapterMethod, options: AdapterOptions) -> nn.Module:
    """Nothing trains but `modules_to_save` (e.g. ["video_projection"]: a linear probe on the video tokens)."""
    modules_to_save = _modules_to_save(model, method, options)
    model.requires_grad_(False)
    return _finish(model, method, options, modules_to_save)


def build_prefix(model: nn.Module, method: AdapterMethod, options: AdapterOptions) -> nn.Module:
    """peft prefix tuning of the LLM (`models.prefix`), `num_virtual_tokens` pairs per layer."""
    modules_to_save = _modules_to_save(model, method, options)
    if options.placement not in (None, method.default_placement):
        raise ValueError(
            "prefix tuning acts on the LLM only: leave placement (or set 'llm') and target_modules unset"
        )
    tokens = options.num_virtual_tokens
    add_prefix(model, DEFAULT_VIRTUAL_TOKENS if tokens is None else tokens)
    return _finish(model, method, options, modules_to_save)


def build_bottleneck(model: nn.Module, method: AdapterMethod, options: AdapterOptions) -> nn.Module:
    """Bottleneck adapters after the attention and MLP blocks of the placement's towers (`models.bottleneck`)."""
    modules_to_save = _modules_to_save(model, method, options)
    if options.target_modules is not None and not isinstance(options.target_modules, str):
        raise ValueError("adapter target_modules must be one regex over module names (the block outputs)")
    placement = options.placement or method.default_placement
    supported = [p for p, towers in PLACEMENTS.items() if all(tower(t).block_outputs for t in towers)]
    if placement not in supported:
        raise ValueError(
            f"placement {placement!r}: bottleneck adapters sit after the attention / MLP blocks of the "
            f"vision and llm towers only; use placement {' / '.join(supported)}"
        )
    settings = BottleneckConfig(
        **(options.bottleneck or {}),
        groups=list(PLACEMENTS[placement]),
        target_modules=options.target_modules,
    )
    add_bottleneck_adapters(model, settings)
    return _finish(model, method, options, modules_to_save)


def _modules_to_save(model: nn.Module, method: AdapterMethod, options: AdapterOptions) -> list[str]:
    """The given modules, or the method's default (none for a method that trains nothing by default)."""
    default = DEFAULT_MODULES_TO_SAVE if method.trains else []
    names = default if options.modules_to_save is None else options.modules_to_save
    return with_retrieval_head(model, method.with_trained_modules(names))


def _finish(
    model: nn.Module, method: AdapterMethod, options: AdapterOptions, modules_to_save: list[str] | None
) -> nn.Module:
    """Unfreeze `modules_to_save`, turn on checkpointing and label the model for `save_adapter`."""
    if modules_to_save is not None:
        for name in modules_to_save:
            model.get_submodule(name).requires_grad_(True)
        model.adapter_modules_to_save = modules_to_save
    enable_checkpointing(model, options.gradient_checkpointing)
    model.adapter_method = method.name
    model.adapter_format = method.saved_as
    model.adapter_allocation = {
        "method": method.name,
        "trainable_params": trainable_parameter_count(model)[0],
    }
    return model

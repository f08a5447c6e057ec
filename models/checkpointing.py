"""Activation checkpointing of a chosen set of towers (`model.gradient_checkpointing`).

Checkpointing a layer keeps only its input through forward and recomputes the rest in backward:
memory for time. The towers differ in the trade. At the 1b preset and K = 4 the ViT sees 4 x 257
tokens and holds most of the activations (~300 of ~400 MiB), while the LLM's ~100 tokens make its
layers cheap to keep and costly to recompute per byte saved (the weights are dequantized again under
QLoRA). So "vision" alone buys most of what "all" saves, for a smaller share of the step's time
(README, "Where QLoRA's step memory goes").

transformers turns checkpointing on for every `GradientCheckpointingLayer` of a model at once; the
towers not named are turned back off here, layer by layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .towers import checkpointed_towers, tower_of


def enable_checkpointing(
    model: nn.Module, setting: bool | Iterable[str], kwargs: Mapping[str, Any] | None = None
) -> tuple[str, ...]:
    """Checkpoint the layers of the towers `setting` names (`towers.checkpointed_towers`) and no others.

    Args:
        model: the unwrapped model (`VideoLlamaForConditionalGeneration`), whose module names
            `towers.tower_of` reads; a peft wrapper's base model, not the wrapper.
        setting: True (every tower), False (none: nothing is touched) or tower / group names.
        kwargs: `activation_checkpointing_kwargs` (default non-reentrant, as every method uses).

    Returns:
        The towers checkpointed, in `towers.TOWERS` order.
    """
    towers = checkpointed_towers(setting)
    if not towers:
        return towers
    model.activation_checkpointing_enable(
        activation_checkpointing_kwargs=dict(kwargs or {"use_reentrant": False})
    )
    for name, module in model.named_modules():
        if isinstance(module, GradientCheckpointingLayer) and tower_of(name) not in towers:
            module.gradient_checkpointing = False
    return towers


def checkpointed_layers(model: nn.Module) -> dict[str, int]:
    """Tower → how many of its layers recompute in backward (towers with none left out); `model`
    unwrapped or a peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    counts: dict[str, int] = {}
    for name, module in base.named_modules():
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
            tower = tower_of(name) or "other"
            counts[tower] = counts.get(tower, 0) + 1
    return counts

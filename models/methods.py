"""The method registry: one declaration per adapter method (`adapter.method`).

A declaration (`models.method_spec.AdapterMethod`) says what the method trains on (its default
weight format and the formats it accepts), which adapter.* keys it reads, whether it gates per frame,
takes per-tower ranks, merges into the base, trains anything by default, how it is saved, and which
builder sets it up. `models.adapters.apply_adapter` dispatches on it; the trainer, `trainer.compat`,
`trainer.export` and the benchmarks read it instead of comparing method names. A new method is one
declaration here plus its builder.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .in_place_methods import build_bottleneck, build_frozen, build_full, build_prefix
from .lora_methods import build_adalora, build_lora
from .method_spec import (
    ANY_BASE,
    BOTTLENECK_FORMAT,
    FROZEN_FORMAT,
    FULL_PRECISION_BASE,
    INT8_BASE,
    LORA_FIELDS,
    PREFIX_FORMAT,
    QUANTIZED_BASE,
    WHOLE_MODEL_FORMAT,
    AdapterMethod,
    Base,
    GroupedRanks,
)
from .rank_allocation import adalora_update
from .towers import FRAME_POSITION_EMBEDDING


def _lora(
    name: str, summary: str, weight_format: str, base: Base, *, frame_gates: bool = False, **declared: Any
) -> AdapterMethod:
    """A LoRA-family declaration: peft LoRA on both towers unless told otherwise, per-tower ranks
    optional; a frame-gated update differs per frame, so no weight matrix holds it: not mergeable.
    Frame-gated methods also train the frame position embedding (the order pathway)."""
    family = AdapterMethod(
        name,
        summary,
        build_lora,
        weight_format=weight_format,
        base=base,
        fields=LORA_FIELDS | {"gate"} if frame_gates else LORA_FIELDS,
        frame_gates=frame_gates,
        grouped_ranks=GroupedRanks.OPTIONAL,
        mergeable=not frame_gates,
        default_placement="both",
        trained_modules=(FRAME_POSITION_EMBEDDING,) if frame_gates else (),
    )
    return dataclasses.replace(family, **declared)


# prefix and adapter take any base; NF4 is their default because they are compared with QLoRA at the
# same base memory. frozen (zero-shot) evaluates the base as it was trained: 16-bit.
_DECLARATIONS = (
    _lora("lora", "LoRA on a 16/32-bit base", "none", FULL_PRECISION_BASE, counterpart="qlora"),
    _lora(
        "qlora",
        "LoRA on a quantized base (NF4 + double quant by default)",
        "nf4",
        QUANTIZED_BASE,
        counterpart="lora",
    ),
    _lora("qlora8", "LoRA on an int8 base", "int8", INT8_BASE, counterpart="qlora"),
    _lora(
        "temporal_lora",
        "frame-gated LoRA on a 16/32-bit base",
        "none",
        FULL_PRECISION_BASE,
        frame_gates=True,
        counterpart="temporal_qlora",
    ),
    _lora(
        "temporal_qlora",
        "frame-gated LoRA on a quantized base",
        "nf4",
        QUANTIZED_BASE,
        frame_gates=True,
        counterpart="temporal_lora",
    ),
    # The controls of the temporal claim: what temporal_qlora gains over them is what the gates
    # learn from time, not from a per-layer scale (constant) or from scores of other frames (shuffled).
    _lora(
        "temporal_qlora_shuffled",
        "control: frame-gated LoRA whose gates read another frame's inputs (shuffled within the clip)",
        "nf4",
        QUANTIZED_BASE,
        frame_gates=True,
        gate_overrides=(("gate_shuffle", True),),
    ),
    _lora(
        "temporal_qlora_constant",
        "control: LoRA scaled by one learnable gate per gated layer (no inputs)",
        "nf4",
        QUANTIZED_BASE,
        frame_gates=True,
        gate_overrides=(("gate_inputs", ()),),
    ),
    _lora(
        "ranked_qlora",
        "LoRA with a rank per tower on a quantized base",
        "nf4",
        QUANTIZED_BASE,
        grouped_ranks=GroupedRanks.REQUIRED,
    ),
    _lora(
        "temporal_ranked_qlora",
        "frame-gated LoRA with a rank per tower on a quantized base",
        "nf4",
        QUANTIZED_BASE,
        frame_gates=True,
        grouped_ranks=GroupedRanks.REQUIRED,
    ),
    _lora(
        "adalora",
        "AdaLoRA: ranks reallocated from the gradients while training",
        "nf4",
        ANY_BASE,
        build=build_adalora,
        fields=LORA_FIELDS | {"adalora"},
        step_update=adalora_update,
    ),
    AdapterMethod(
        "prefix",
        "prefix tuning of the LLM",
        build_prefix,
        weight_format="nf4",
        base=ANY_BASE,
        fields=frozenset({"modules_to_save", "placement", "num_virtual_tokens"}),
        saved_as=PREFIX_FORMAT,
        default_placement="llm",
    ),
    AdapterMethod(
        "adapter",
        "bottleneck adapters after the attention and MLP blocks",
        build_bottleneck,
        weight_format="nf4",
        base=ANY_BASE,
        fields=frozenset({"modules_to_save", "placement", "target_modules", "bottleneck"}),
        saved_as=BOTTLENECK_FORMAT,
        default_placement="llm",
    ),
    AdapterMethod(
        "full",
        "full fine-tuning: every parameter trains",
        build_full,
        weight_format="none",
        base=FULL_PRECISION_BASE,
        fields=frozenset(),
        saved_as=WHOLE_MODEL_FORMAT,
    ),
    AdapterMethod(
        "frozen",
        "the zero-shot baseline: nothing trains but modules_to_save (a linear probe)",
        build_frozen,
        weight_format="none",
        base=ANY_BASE,
        fields=frozenset({"modules_to_save"}),
        trains=False,
        saved_as=FROZEN_FORMAT,
    ),
)
METHODS: dict[str, AdapterMethod] = {m.name: m for m in _DECLARATIONS}


def adapter_method(name: str) -> AdapterMethod:
    """The declaration of method `name`; ValueError naming the known methods otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {name!r}") from None


def uses_frame_gates(method: str) -> bool:
    """Whether `method` gates its adapters per kept frame, from the frame selector's scores [B, K]."""
    return adapter_method(method).frame_gates

"""What a declaration of an adapter method says, and the options its builder receives.

The declarations themselves are in `models.methods`; `models.adapters.apply_adapter` dispatches on
them and the trainer, compat checks, export and benchmarks read them instead of comparing names.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

from torch import nn

from .weight_formats import FULL_PRECISION, QUANTIZATIONS


@dataclass(frozen=True)
class Base:
    """The weight formats (`model.quantization` values) a method can train on.

    `label` completes "needs a model loaded in ..." and "needs a ... base" in error messages.
    """

    formats: tuple[str, ...]
    label: str

    def admits(self, held: Collection[str]) -> bool:
        """Whether a model whose towers hold the formats `held` is such a base.

        Every held format must be one of `formats`, except that a quantized base (one without
        "none") also admits 16-bit towers beside at least one tower in its formats: hybrid bit
        widths such as {vision: none, llm: nf4} are QLoRA.
        """
        held = set(held)
        if FULL_PRECISION in self.formats:
            return held <= set(self.formats)
        quantized = held - {FULL_PRECISION}
        return bool(quantized) and quantized <= set(self.formats)


ANY_BASE = Base(QUANTIZATIONS, "any format")
QUANTIZED_BASE = Base(tuple(q for q in QUANTIZATIONS if q != "none"), "4/8-bit")
INT8_BASE = Base(("int8",), "int8")
FULL_PRECISION_BASE = Base(("none",), "16/32-bit")


class GroupedRanks(Enum):
    """Whether a method takes a LoRA rank per tower (`adapter.ranks`, or a budget allocation)."""

    NO = "no"
    OPTIONAL = "optional"
    REQUIRED = "required"


# Saved formats (`models.adapter_io`): how `save_adapter` writes what a method trained.
PEFT_FORMAT = "peft"  # peft's save_pretrained of a PeftModel (adapter_config.json + weights)
WHOLE_MODEL_FORMAT = "whole_model"  # the whole model's save_pretrained (config.json + model.safetensors)
PREFIX_FORMAT = "prefix"
BOTTLENECK_FORMAT = "bottleneck"
FROZEN_FORMAT = "frozen"

# adapter.* sections that hold values under every method (config dataclasses with defaults): passed
# only to the methods whose `fields` name them, refused by the others when given.
OWN_SETTINGS = ("gate", "adalora", "num_virtual_tokens", "bottleneck")
# The LoRA family's adapter.* keys.
LORA_FIELDS = frozenset(
    {
        "r",
        "alpha",
        "rslora",
        "dropout",
        "target_modules",
        "modules_to_save",
        "placement",
        "ranks",
        "alphas",
        "allocation",
        "budget",
        "calibration_batches",
        "group_patterns",
    }
)


@dataclass(frozen=True)
class AdapterOptions:
    """Everything `apply_adapter` can be told, by the names of the `adapter.*` config keys.

    Attributes:
        r, alpha, dropout: LoRA rank, scale numerator (scale = alpha / r) and input dropout.
        rslora: rank-stabilised scaling, alpha / sqrt(r) (peft's ``use_rslora``).
        target_modules: peft targets (list of name suffixes or one regex); None: the method's default.
        gradient_checkpointing: recompute activations in backward: True for every ViT / Q-Former /
            LLM layer, or the towers to do it in, e.g. ("vision",) (`models.checkpointing`).
        modules_to_save: modules trained in full and saved with the adapter; None: the method's default.
        ranks: tower → LoRA rank (`models.towers` names, or `group_patterns` keys); only these are adapted.
            With a budget allocation, the groups to allocate among (values: base weights for "motion").
        alphas: group → alpha; default r_g * alpha / r (alpha * sqrt(r_g / r) under rslora), so every
            group keeps the scale of (r, alpha).
        allocation: "static" (the given ranks) or a budget allocator (`rank_allocation.BUDGET_ALLOCATIONS`):
            the static presets "static_vision" / "static_fusion" / "static_llm", or "entropy",
            "motion", "importance"; without ranks they allocate over `rank_allocation.ALLOCATION_GROUPS`.
        budget: total trainable parameters for the allocators; AdaLoRA's parameter budget. None: what the
            method trains at one rank r on its default placement (`lora_methods.uniform_trainable_params`).
        calibration_batches: model-input dicts the allocators measure on.
        group_patterns: group → regex overriding the towers' linear patterns.
        gate: temporal gate settings {"inputs", "mode", "hidden", "init", "modules", "standardize",
            "init_std"} (`models.temporal_lora.TemporalLoraConfig`'s gate_* fields).
        adalora: {"total_step", "target_r", "init_r", "tinit", "tfinal", "delta_t"}.
        placement: which towers get adapters: a key of `models.towers.PLACEMENTS`.
        num_virtual_tokens: prefix length of prefix tuning.
        bottleneck: {"dim", "activation"} of bottleneck adapters.
        total_steps: optimizer steps of the run, for methods whose schedule spans it (AdaLoRA's
            default total_step).
    """

    r: int = 8
    alpha: float = 16
    rslora: bool = False
    dropout: float = 0.0
    target_modules: list[str] | str | None = None
    gradient_checkpointing: bool | Sequence[str] = False
    modules_to_save: list[str] | None = None
    ranks: Mapping[str, int] | None = None
    alphas: Mapping[str, float] | None = None
    allocation: str = "static"
    budget: float | None = None
    calibration_batches: list[Mapping[str, Any]] | None = None
    group_patterns: Mapping[str, str] | None = None
    gate: Mapping[str, Any] | None = None
    adalora: Mapping[str, Any] | None = None
    placement: str | None = None
    num_virtual_tokens: int | None = None
    bottleneck: Mapping[str, Any] | None = None
    total_steps: int | None = None

    @property
    def grouped(self) -> bool:
        """Whether per-group ranks are asked for (given, or to be allocated)."""
        return bool(self.ranks) or self.allocation != "static"

    def given(self) -> list[str]:
        """The keys set away from "unset" (None, or allocation "static"), in declaration order.

        r, alpha, rslora and dropout always hold a value (configs set them once for a grid of
        methods) and gradient_checkpointing / total_steps concern every method: none of them is ever
        "given".
        """
        always = ("r", "alpha", "rslora", "dropout", "gradient_checkpointing", "total_steps")
        return [
            f.name
            for f in fields(self)
            if f.name not in always and getattr(self, f.name) not in (None, "static")
        ]


Builder = Callable[[nn.Module, "AdapterMethod", AdapterOptions], nn.Module]


@dataclass(frozen=True)
class AdapterMethod:
    """One adapter method: what it needs, what it reads, how it is built, saved and exported.

    Attributes:
        name: the `adapter.method` value.
        summary: what it is, in a phrase ("LoRA on an int8 base").
        build: (model, this declaration, options) → the model set up for training.
        weight_format: what `model.quantization=auto` becomes (a `models.loading` quantization).
        base: the weight formats it can train on.
        fields: the adapter.* keys it reads; the others are refused when given.
        frame_gates: its adapters read the frame selector's per-frame scores [B, K, S].
        grouped_ranks: whether it takes (or requires) a LoRA rank per tower.
        mergeable: its update is a weight matrix that `trainer.export` merges into the base.
        trains: whether anything trains by default (False: the zero-shot baseline).
        saved_as: its saved format (`models.adapter_io`).
        default_placement: the towers (a `PLACEMENTS` key) adapted when neither placement nor
            targets are given; None when it places nothing.
        trained_modules: modules it always trains in full and saves with its adapter, beside
            `modules_to_save` (given or default): the temporal methods' order pathway, the frame
            position embedding (`models.towers.FRAME_POSITION_EMBEDDING`), without which nothing
            trainable tells the video Q-Former where in the clip a frame was.
        counterpart: the same method on the other kind of base (lora ↔ qlora), for error hints.
        step_update: called as (model, step) after every optimizer step's backward, before the step
            clears the gradients (it reads `.grad`, so it needs them whole: ZeRO stage 0).
        gate_overrides: (TemporalLoraConfig field, value) pairs a frame-gated method fixes over
            `adapter.gate` (the controls: shuffled inputs, a constant gate); pairs, not a dict, so
            the declaration stays hashable.
    """

    name: str
    summary: str
    build: Builder
    weight_format: str
    base: Base
    fields: frozenset[str]
    frame_gates: bool = False
    grouped_ranks: GroupedRanks = GroupedRanks.NO
    mergeable: bool = False
    trains: bool = True
    saved_as: str = PEFT_FORMAT
    default_placement: str | None = None
    trained_modules: tuple[str, ...] = ()
    counterpart: str | None = None
    step_update: Callable[[nn.Module, int], None] | None = None
    gate_overrides: tuple[tuple[str, Any], ...] = ()

    def with_trained_modules(self, names: Sequence[str]) -> list[str]:
        """`names` (modules to train in full and save) plus the ones this method always trains."""
        return [*names, *(m for m in self.trained_modules if m not in names)]

    @property
    def settings(self) -> tuple[str, ...]:
        """The method's own adapter.* sections (of `OWN_SETTINGS`) that the trainer passes to it."""
        return tuple(key for key in OWN_SETTINGS if key in self.fields)

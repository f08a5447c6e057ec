"""Builders of the LoRA family (lora, qlora, qlora8, temporal and per-tower-rank variants) and AdaLoRA.

LoRA (Hu et al., 2021) replaces a frozen linear W0 [out, in] by

    h = W0 x + (alpha / r) * B A dropout(x),   A [r, in] ~ Kaiming-uniform,  B [out, r] = 0

so training starts exactly at the base model and only A, B (r * (in + out) per layer) learn.
rsLoRA (Kalajdzievski, 2023; `adapter.rslora`) scales by alpha / sqrt(r) instead, which keeps the
update's size from shrinking as r grows at a fixed alpha.
QLoRA (Dettmers et al., 2023) is the same with W0 stored in NF4 (see `models.loading`). Temporal
LoRA gates the update per video frame (`models.temporal_lora`); per-tower ranks and the budget
allocators are `models.rank_allocation`'s; AdaLoRA (Zhang et al., 2023) learns where the ranks go.

Why not `peft.prepare_model_for_kbit_training` for qlora: it casts every non-4-bit parameter
(Q-Formers, embeddings, norms, lm_head) to fp32, which silently runs the whole non-quantized path in
fp32 (2x activation memory, dtype mix under DeepSpeed bf16), and turns on reentrant checkpointing
through the deprecated `gradient_checkpointing_enable`. What it does that matters — freezing the
base and optional checkpointing — is done here directly.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from . import rank_allocation as ra
from .checkpointing import enable_checkpointing
from .low_rank_matmul import use_low_rank_linears
from .method_spec import GroupedRanks
from .parameters import trainable_parameter_count
from .saved_modules import DEFAULT_MODULES_TO_SAVE, with_retrieval_head
from .temporal_lora import TemporalLoraConfig, checkpoint_kwargs, gate_parameter_count, install_frame_gates
from .towers import PLACEMENTS, any_of, tower_of

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .method_spec import AdapterMethod, AdapterOptions

GATE_KEYS = ("inputs", "mode", "hidden", "init", "modules", "standardize", "init_std")
ADALORA_KEYS = ("total_step", "target_r", "init_r", "tinit", "tfinal", "delta_t")
# `adapter.gate` keys → TemporalLoraConfig fields.
_GATE_FIELDS = {
    "inputs": "gate_inputs",
    "mode": "gate_mode",
    "hidden": "gate_hidden",
    "init": "gate_init",
    "modules": "temporal_modules",
    "standardize": "gate_standardize",
    "init_std": "gate_init_std",
}


@dataclass
class _Targets:
    """Where a LoRA-family method puts its adapters, resolved from the options.

    `patterns` / `linears`: group → regex / {name: linear}, only with per-group ranks (else empty);
    `target_modules`: peft targets when there are no per-group ranks (None: the default placement's).
    """

    grouped: bool
    target_modules: list[str] | str | None
    groups: list[str]
    patterns: dict[str, str]
    linears: dict[str, dict[str, nn.Module]]
    modules_to_save: list[str]


def placement_targets(placement: str, group_patterns: Mapping[str, str] | None = None) -> str:
    """One peft regex over the linears of the towers of `placement`."""
    return any_of(ra.resolve_patterns(PLACEMENTS[placement], group_patterns).values())


def _resolve_targets(model: nn.Module, method: AdapterMethod, options: AdapterOptions) -> _Targets:
    """Check the target options against each other and resolve them (shared by LoRA and AdaLoRA)."""
    grouped, target_modules = options.grouped, options.target_modules
    if method.grouped_ranks is GroupedRanks.REQUIRED and not grouped:
        raise ValueError(
            f"{method.name} needs per-group ranks: pass ranks={{group: r}} or allocation + budget"
        )
    if grouped and target_modules is not None:
        raise ValueError(
            "target_modules and per-group ranks/allocation are exclusive (groups set the targets)"
        )
    if options.placement is not None:
        if grouped or target_modules is not None:
            raise ValueError("placement, per-group ranks/allocation and target_modules are exclusive")
        target_modules = placement_targets(options.placement, options.group_patterns)

    if options.ranks:
        groups = list(options.ranks)
    elif options.allocation != "static":
        groups = list(ra.ALLOCATION_GROUPS)
    else:
        groups = list(PLACEMENTS[method.default_placement])
    patterns = ra.resolve_patterns(groups, options.group_patterns) if grouped else {}
    linears = ra.group_modules(model, patterns) if grouped else {}
    modules_to_save = options.modules_to_save
    if modules_to_save is None:
        # A tower that gets LoRA ranks is no longer trained in full next to them.
        modules_to_save = [m for m in DEFAULT_MODULES_TO_SAVE if not (grouped and tower_of(m) in patterns)]
    modules_to_save = with_retrieval_head(model, method.with_trained_modules(modules_to_save))
    return _Targets(grouped, target_modules, groups, patterns, linears, modules_to_save)


def build_lora(model: nn.Module, method: AdapterMethod, options: AdapterOptions) -> PeftModel:
    """LoRA (temporal when `method.frame_gates`) on the targets, or on per-group ranks."""
    targets = _resolve_targets(model, method, options)
    report: dict[str, Any] = {"method": method.name, "allocation": options.allocation}
    gate_config = gate_settings(options.gate, method.gate_overrides) if method.frame_gates else {}
    if targets.grouped:
        ranks, alphas = _group_ranks(model, method, options, targets, gate_config, report)
        target_regex, rank_pattern, alpha_pattern = ra.lora_patterns(ranks, alphas, targets.patterns)
        lora_kwargs = {
            "r": max(ranks.values()),
            "lora_alpha": options.alpha,
            "target_modules": target_regex,
            "rank_pattern": rank_pattern,
            "alpha_pattern": alpha_pattern,
        }
    else:
        default = placement_targets(method.default_placement)
        lora_kwargs = {
            "r": options.r,
            "lora_alpha": options.alpha,
            "target_modules": default if targets.target_modules is None else targets.target_modules,
        }
    config_cls = TemporalLoraConfig if method.frame_gates else LoraConfig
    config = config_cls(
        **lora_kwargs,
        lora_dropout=options.dropout,
        use_rslora=options.rslora,
        modules_to_save=targets.modules_to_save,
        bias="none",
        **gate_config,
    )
    # get_peft_model freezes every base parameter, then un-freezes LoRA A/B and the modules_to_save copy.
    peft_model = get_peft_model(model, config)
    use_low_rank_linears(peft_model)  # ranks below 16 would be slower than 16 on CPU otherwise

    checkpointing = {"use_reentrant": False}
    if method.frame_gates:
        checkpointing = checkpoint_kwargs(install_frame_gates(peft_model))
    enable_checkpointing(model, options.gradient_checkpointing, checkpointing)
    if targets.grouped:
        report["groups"] = ra.verify_ranks(peft_model, ranks, alphas, targets.patterns)
    report["lora_params_by_tower"] = ra.lora_params_by_tower(peft_model)
    report["trainable_params"], _ = trainable_parameter_count(peft_model)
    peft_model.adapter_allocation = report
    return peft_model


def _group_ranks(
    model: nn.Module,
    method: AdapterMethod,
    options: AdapterOptions,
    targets: _Targets,
    gate_config: Mapping[str, Any],
    report: dict[str, Any],
) -> tuple[dict[str, int], dict[str, float]]:
    """(rank, alpha) per group: the given ranks, or a budget allocator's (its figures go to `report`).

    The budget defaults to `uniform_trainable_params` (the same method at rank r on its default
    placement); `report["uniform_params"]` holds that count for every grouped run, matched or not.
    """
    ranks = options.ranks
    gates = gate_config if method.frame_gates else None
    report["uniform_params"] = uniform_trainable_params(model, method, options.r, gates)
    if options.allocation != "static":
        fixed = _fixed_params(model, targets.modules_to_save, targets.linears, gates)
        budget = options.budget if options.budget is not None else report["uniform_params"]
        report["budget_source"] = "adapter.budget" if options.budget is not None else f"uniform r={options.r}"
        result = ra.allocate(
            model,
            options.allocation,
            budget,
            targets.linears,
            base_ranks=ranks,
            calibration_batches=options.calibration_batches,
            fixed_params=fixed,
        )
        ranks = result.pop("ranks")
        report.update(result)
    alphas = {g: (options.alphas or {}).get(g, _group_alpha(options, ranks[g])) for g in ranks}
    return ranks, alphas


def uniform_trainable_params(
    model: nn.Module, method: AdapterMethod, r: int, gate_config: Mapping[str, Any] | None = None
) -> int:
    """Trainable parameters of `method` at one rank `r` on its default placement with its default
    saved modules and the ones it always trains (and gates, for a gated method): QLoRA at r for
    ranked_qlora, temporal QLoRA at r (its frame position embedding too) for temporal_ranked_qlora.
    The default budget of the allocators, so that they are compared with uniform QLoRA at a matched
    count: r * sum (in + out) over the placement's linears + fixed."""
    patterns = ra.resolve_patterns(PLACEMENTS[method.default_placement])
    linears = ra.group_modules(model, patterns)
    saved = with_retrieval_head(model, method.with_trained_modules(DEFAULT_MODULES_TO_SAVE))
    return r * sum(ra.rank_unit_params(linears).values()) + _fixed_params(model, saved, linears, gate_config)


def _group_alpha(options: AdapterOptions, rank: int) -> float:
    """The alpha that gives a group of rank ``rank`` the scale of ``options``' (r, alpha): alpha / r,
    or alpha / sqrt(r) under rsLoRA."""
    if options.rslora:
        return options.alpha * math.sqrt(rank / options.r)
    return rank * options.alpha / options.r


def gate_settings(
    gate: Mapping[str, Any] | None, overrides: tuple[tuple[str, Any], ...] = ()
) -> dict[str, Any]:
    """TemporalLoraConfig fields from the `gate` settings (unknown keys are an error), then the
    method's own `overrides` (its declaration's `gate_overrides`: TemporalLoraConfig fields a
    control fixes whatever the settings say)."""
    gate = dict(gate or {})
    unknown = sorted(set(gate) - set(GATE_KEYS))
    if unknown:
        raise ValueError(f"unknown gate setting(s) {unknown}; known: {GATE_KEYS}")
    fields = {_GATE_FIELDS[key]: value for key, value in gate.items()}
    fields.update(overrides)
    if "gate_inputs" in fields:
        fields["gate_inputs"] = list(fields["gate_inputs"])
    return fields


def _fixed_params(
    model: nn.Module,
    modules_to_save: list[str],
    linears: Mapping[str, Mapping[str, nn.Module]],
    gate_config: Mapping[str, Any] | None,
) -> int:
    """Trainable parameters that do not depend on the ranks: saved modules and gate networks."""
    fixed = sum(p.numel() for name in modules_to_save for p in model.get_submodule(name).parameters())
    if gate_config is None:
        return fixed
    defaults = TemporalLoraConfig()
    inputs = gate_config.get("gate_inputs", defaults.gate_inputs)
    hidden = gate_config.get("gate_hidden", defaults.gate_hidden)
    temporal = gate_config.get("temporal_modules", defaults.temporal_modules)
    for group in linears.values():
        for name, module in group.items():
            if re.fullmatch(temporal, name):
                fixed += gate_parameter_count(inputs, hidden, module.in_features)
    return fixed


def build_adalora(model: nn.Module, method: AdapterMethod, options: AdapterOptions) -> PeftModel:
    """peft AdaLoRA on the targets (default: the default placement's towers) within `budget`
    (default: `uniform_trainable_params` at r, unless adalora.target_r sets the target rank).

    `settings` {"total_step" (default: options.total_steps), "target_r", ...}; the ranks it starts
    from and prunes to are `rank_allocation.adalora_config`'s; call `method.step_update` every step.
    """
    if options.rslora:
        # peft's SVD layers scale by alpha / (their current rank) whatever use_rslora says.
        logger.warning("adapter.rslora does not apply to adalora: AdaLoRA scales by alpha / its current rank")
    targets = _resolve_targets(model, method, options)
    total_step = {} if options.total_steps is None else {"total_step": options.total_steps}
    settings = {**total_step, **(options.adalora or {})}
    unknown = sorted(set(settings) - set(ADALORA_KEYS))
    if unknown or "total_step" not in settings:
        raise ValueError(
            f"adalora settings need total_step and take only {ADALORA_KEYS}; got {sorted(settings)}"
        )
    patterns, linears = targets.patterns, targets.linears
    if not patterns:  # AdaLoRA decides the ranks itself; the groups only give targets and the budget
        patterns = ra.resolve_patterns(targets.groups)
        linears = ra.group_modules(model, patterns)
    target_modules = targets.target_modules or any_of(patterns.values())
    fixed = _fixed_params(model, targets.modules_to_save, linears, None)
    # Without a budget or a target rank, AdaLoRA keeps what uniform LoRA at r trains: a matched count.
    budget = options.budget
    if budget is None and "target_r" not in settings:
        budget = uniform_trainable_params(model, method, options.r)
    config = ra.adalora_config(
        target_modules,
        linears,
        budget=None if budget is None else budget - fixed,
        alpha=options.alpha,
        dropout=options.dropout,
        modules_to_save=targets.modules_to_save,
        **settings,
    )
    peft_model = get_peft_model(model, config)
    enable_checkpointing(model, options.gradient_checkpointing)
    peft_model.adapter_allocation = {
        "method": method.name,
        "allocation": options.allocation,
        "budget": budget,
        "target_r": config.target_r,
        "init_r": config.init_r,
        "groups": ra.adalora_ranks(peft_model, patterns),
        "lora_params_by_tower": ra.lora_params_by_tower(peft_model),
        "trainable_params": trainable_parameter_count(peft_model)[0],
    }
    return peft_model

"""Which parameters train: LoRA / QLoRA through peft, full fine-tuning, or a frozen baseline.

LoRA (Hu et al., 2021) replaces a frozen linear W0 [out, in] by

    h = W0 x + (alpha / r) * B A dropout(x),   A [r, in] ~ Kaiming-uniform,  B [out, r] = 0

so training starts exactly at the base model and only A, B (r * (in + out) per layer) learn.
QLoRA (Dettmers et al., 2023) is the same with W0 stored in NF4 (see `models.loading`).
Temporal LoRA gates the update per video frame (`models.temporal_lora`); per-group ranks and the
budget allocators live in `models.rank_allocation`.
"""

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from . import rank_allocation as ra
from .temporal_lora import (
    FEATURE_INPUT,
    FRAME_SCORE_NAMES,
    TemporalLoraConfig,
    checkpoint_kwargs,
    install_frame_gates,
    is_temporal_config,
)

METHODS = (
    "lora",
    "qlora",
    "full",
    "frozen",
    "temporal_lora",
    "temporal_qlora",
    "ranked_qlora",
    "temporal_ranked_qlora",
    "adalora",
)
_QUANTIZED_METHODS = ("qlora", "temporal_qlora", "ranked_qlora", "temporal_ranked_qlora")
_16BIT_METHODS = ("lora", "temporal_lora", "full")
# Groups adapted when per-group ranks are asked for without naming groups (as DEFAULT_TARGET_MODULES).
DEFAULT_GROUPS = ("vision", "llm")
GATE_KEYS = ("inputs", "mode", "hidden", "init", "modules")
ADALORA_KEYS = ("total_step", "target_r", "init_r", "tinit", "tfinal", "delta_t")

# Default LoRA targets, as one peft regex (full match on module names): the attention and MLP linears
# of the vision tower (BLIP-2 qkv / projection, CLIP / SigLIP q/k/v/out_proj, mlp.fc1 / fc2) and of the
# LLM (Llama / Qwen2 q/k/v/o_proj, gate/up/down_proj; OPT out_proj, fc1 / fc2): the "vision" and "llm"
# groups of `models.rank_allocation`. The Q-Formers are not targeted: Video-LLaMA trains its video
# branch fully rather than through low-rank updates.
DEFAULT_TARGET_MODULES = f"(?:{ra.GROUP_PATTERNS['vision']})|(?:{ra.GROUP_PATTERNS['llm']})"
# Trained in full next to the adapters and written into the adapter file by peft (`modules_to_save`),
# so `PeftModel.from_pretrained` restores it; a plain `requires_grad=True` would train it but leave
# it out of adapter_model.safetensors.
DEFAULT_MODULES_TO_SAVE = ["video_projection"]


def _is_quantized(model: nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def apply_adapter(
    model: nn.Module,
    method: str,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: list[str] | str | None = None,
    gradient_checkpointing: bool = False,
    modules_to_save: list[str] | None = None,
    ranks: Mapping[str, int] | None = None,
    alphas: Mapping[str, float] | None = None,
    allocation: str = "static",
    budget: float | None = None,
    calibration_batches: list[Mapping[str, Any]] | None = None,
    group_patterns: Mapping[str, str] | None = None,
    gate: Mapping[str, Any] | None = None,
    adalora: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Set up `model` for training with `method`.

    Args:
        model: a `VideoLlamaForConditionalGeneration` (16-bit/fp32 for lora/temporal_lora/full/frozen,
            loaded in 4- or 8-bit by `models.loading.load_model` for the *qlora methods; either for adalora).
        method: one of `METHODS`:
            "lora" / "qlora": LoRA on a 16-bit / quantized base;
            "temporal_lora" / "temporal_qlora": frame-gated LoRA on the frame-rowed targets (vision
                tower, frame Q-Former), plain LoRA on the others (`models.temporal_lora`);
            "ranked_qlora" / "temporal_ranked_qlora": the same with per-group ranks, which these
                require (`ranks`, or `allocation` + `budget`); any LoRA method accepts `ranks` too;
            "adalora": peft AdaLoRA (needs `adalora={"total_step": N}`; call
                `rank_allocation.adalora_update(model, step)` every step);
            "full": every parameter trains (not possible on quantized weights);
            "frozen": only `video_projection` trains (a linear probe on the video tokens is the
                meaningful "no fine-tuning" baseline; with nothing trainable backward would fail).
        r, alpha, dropout: LoRA rank, scale numerator (scale = alpha / r) and input dropout.
        target_modules: peft targets (list of name suffixes or one regex); default
            `DEFAULT_TARGET_MODULES` (ViT + LLM attention and MLP linears). Not with `ranks`/`allocation`.
        gradient_checkpointing: recompute activations of every ViT / Q-Former / LLM layer in backward.
            Non-reentrant checkpointing, so frozen inputs need no `enable_input_require_grads` hook;
            for temporal methods the recompute is handed its forward's frame scores (`context_fn`).
        modules_to_save: modules trained in full and saved with the adapter; default
            `["video_projection"]` (left out when the projection group gets LoRA ranks).
        ranks: group → LoRA rank, groups from `rank_allocation.GROUPS`; only these groups are adapted.
            With a budget allocation, the groups to allocate among (values: base weights for "motion").
        alphas: group → alpha; default r_g * alpha / r, so every group keeps the scale alpha / r.
        allocation: "static" (the given ranks) or a budget allocator: "entropy", "motion",
            "importance" (`rank_allocation.allocate`); default groups `DEFAULT_GROUPS`.
        budget: total trainable parameters (LoRA factors + gate networks + modules_to_save) for the
            allocators, and for adalora its LoRA parameter budget.
        calibration_batches: model-input dicts for the allocators ("motion" reads their frame_scores).
        group_patterns: group → regex overriding `rank_allocation.GROUP_PATTERNS`.
        gate: temporal gate settings {"inputs": [names from "entropy", "scene_change", "motion",
            "feature"], "mode": "scale"|"rank", "hidden": int, "init": float in (0,1), "modules": regex}.
        adalora: {"total_step" (required), "target_r", "init_r", "tinit", "tfinal", "delta_t"}.
    Returns:
        a peft `PeftModel` for the LoRA family and adalora (with `.adapter_allocation`, a dict for
        logging: method, per-group ranks/alphas/params, scores, budget, trainable parameters), the
        model itself for full/frozen.

    Why not `peft.prepare_model_for_kbit_training` for qlora: it casts every non-4-bit parameter
    (Q-Formers, embeddings, norms, lm_head) to fp32, which silently runs the whole non-quantized
    path in fp32 (2x activation memory, dtype mix under DeepSpeed bf16), and turns on reentrant
    checkpointing through the deprecated `gradient_checkpointing_enable`. What it does that matters —
    freezing the base and optional checkpointing — is done here directly.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    quantized = _is_quantized(model)
    if method in _QUANTIZED_METHODS and not quantized:
        raise ValueError(
            f"{method} needs a model loaded in 4/8 bit (models.loading.load_model(quantization='nf4'))"
        )
    if method in _16BIT_METHODS and quantized:
        raise ValueError(f"{method} needs a 16-bit model; this one is quantized (use method='qlora')")
    temporal = method.startswith("temporal")
    if gate is not None and not temporal:
        raise ValueError(f"gate settings are for the temporal methods, not {method!r}")
    if adalora is not None and method != "adalora":
        raise ValueError(f"adalora settings are for method 'adalora', not {method!r}")
    if allocation not in ra.ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ra.ALLOCATIONS}, got {allocation!r}")

    if method in ("full", "frozen"):
        if ranks or allocation != "static" or budget is not None:
            raise ValueError(f"ranks / allocation / budget do not apply to method {method!r}")
        if gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if method == "full":
            model.requires_grad_(True)
            return model
        model.requires_grad_(False)
        for name in DEFAULT_MODULES_TO_SAVE if modules_to_save is None else modules_to_save:
            model.get_submodule(name).requires_grad_(True)
        return model

    grouped = bool(ranks) or allocation != "static"
    if "ranked" in method and not grouped:
        raise ValueError(f"{method} needs per-group ranks: pass ranks={{group: r}} or allocation + budget")
    if grouped and target_modules is not None:
        raise ValueError(
            "target_modules and per-group ranks/allocation are exclusive (groups set the targets)"
        )
    if allocation != "static" and budget is None:
        raise ValueError(f"allocation {allocation!r} needs a budget (total trainable parameters)")

    groups = list(ranks) if ranks else list(DEFAULT_GROUPS)
    patterns = ra.resolve_patterns(groups, group_patterns) if grouped else {}
    linears = ra.group_modules(model, patterns) if grouped else {}
    if modules_to_save is None:
        modules_to_save = [
            m
            for m in DEFAULT_MODULES_TO_SAVE
            if not (grouped and m == "video_projection" and "projection" in patterns)
        ]
    report: dict[str, Any] = {"method": method, "allocation": allocation}

    if method == "adalora":
        return _apply_adalora(
            model,
            adalora,
            linears,
            patterns,
            target_modules,
            budget,
            alpha,
            dropout,
            modules_to_save,
            gradient_checkpointing,
            report,
        )

    gate_config = _gate_config(gate) if temporal else {}
    if grouped:
        if allocation != "static":
            fixed = _fixed_params(model, modules_to_save, linears, gate_config if temporal else None)
            result = ra.allocate(
                model,
                allocation,
                budget,
                linears,
                base_ranks=ranks,
                calibration_batches=calibration_batches,
                fixed_params=fixed,
            )
            ranks = result.pop("ranks")
            report.update(result)
        alphas = {g: (alphas or {}).get(g, ranks[g] * alpha / r) for g in ranks}
        targets, rank_pattern, alpha_pattern = ra.lora_patterns(ranks, alphas, patterns)
        lora_kwargs = {
            "r": max(ranks.values()),
            "lora_alpha": alpha,
            "target_modules": targets,
            "rank_pattern": rank_pattern,
            "alpha_pattern": alpha_pattern,
        }
    else:
        lora_kwargs = {
            "r": r,
            "lora_alpha": alpha,
            "target_modules": DEFAULT_TARGET_MODULES if target_modules is None else target_modules,
        }
    config_cls = TemporalLoraConfig if temporal else LoraConfig
    config = config_cls(
        **lora_kwargs, lora_dropout=dropout, modules_to_save=modules_to_save, bias="none", **gate_config
    )
    # get_peft_model freezes every base parameter, then un-freezes LoRA A/B and the modules_to_save copy.
    peft_model = get_peft_model(model, config)

    checkpointing = {"use_reentrant": False}
    if temporal:
        context = install_frame_gates(peft_model)
        checkpointing = checkpoint_kwargs(context)
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing)
    if grouped:
        report["groups"] = ra.verify_ranks(peft_model, ranks, alphas, patterns)
    report["trainable_params"], _ = trainable_parameter_count(peft_model)
    peft_model.adapter_allocation = report
    return peft_model


def _gate_config(gate: Mapping[str, Any] | None) -> dict[str, Any]:
    """TemporalLoraConfig fields from the `gate` settings (unknown keys are an error)."""
    gate = dict(gate or {})
    unknown = sorted(set(gate) - set(GATE_KEYS))
    if unknown:
        raise ValueError(f"unknown gate setting(s) {unknown}; known: {GATE_KEYS}")
    names = {
        "inputs": "gate_inputs",
        "mode": "gate_mode",
        "hidden": "gate_hidden",
        "init": "gate_init",
        "modules": "temporal_modules",
    }
    return {names[key]: (list(value) if key == "inputs" else value) for key, value in gate.items()}


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
                n_in = sum(1 for i in inputs if i in FRAME_SCORE_NAMES)
                n_in += module.in_features if FEATURE_INPUT in inputs else 0
                fixed += (n_in + 1) * hidden + hidden + 1
    return fixed


def _apply_adalora(
    model: nn.Module,
    settings: Mapping[str, Any] | None,
    linears: Mapping[str, Mapping[str, nn.Module]],
    patterns: Mapping[str, str],
    target_modules: list[str] | str | None,
    budget: float | None,
    alpha: float,
    dropout: float,
    modules_to_save: list[str],
    gradient_checkpointing: bool,
    report: dict[str, Any],
) -> PeftModel:
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(ADALORA_KEYS))
    if unknown or "total_step" not in settings:
        raise ValueError(
            f"adalora settings need total_step and take only {ADALORA_KEYS}; got {sorted(settings)}"
        )
    if not patterns:  # AdaLoRA decides the ranks itself; the groups only give targets and the budget
        patterns = ra.resolve_patterns(DEFAULT_GROUPS)
        linears = ra.group_modules(model, patterns)
    targets = target_modules or "|".join(f"(?:{p})" for p in patterns.values())
    fixed = _fixed_params(model, modules_to_save, linears, None)
    config = ra.adalora_config(
        targets,
        linears,
        budget=None if budget is None else budget - fixed,
        alpha=alpha,
        dropout=dropout,
        modules_to_save=modules_to_save,
        **settings,
    )
    peft_model = get_peft_model(model, config)
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    report.update(
        {
            "budget": budget,
            "target_r": config.target_r,
            "init_r": config.init_r,
            "groups": ra.adalora_ranks(peft_model, patterns),
        }
    )
    report["trainable_params"], _ = trainable_parameter_count(peft_model)
    peft_model.adapter_allocation = report
    return peft_model


def trainable_parameter_count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as their unpacked number of values."""
    trainable = total = 0
    for param in model.parameters():
        # Params4bit packs two 4-bit values per byte of its storage dtype; quant_state knows the real shape.
        quant_state = getattr(param, "quant_state", None)
        n = int(torch.Size(quant_state.shape).numel()) if quant_state is not None else param.numel()
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def load_adapter(model: nn.Module, adapter_dir: str | Path, is_trainable: bool = False) -> PeftModel:
    """Wrap a freshly loaded base model with a saved adapter (`PeftModel.from_pretrained`).

    A temporal adapter's config is read as `TemporalLoraConfig` first — which registers the gated
    layer types with peft — and its gates are connected to the model's frame scores.
    """
    fields = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    if not is_temporal_config(fields):
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable)
    config = TemporalLoraConfig.from_pretrained(adapter_dir)
    peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable, config=config)
    install_frame_gates(peft_model)
    return peft_model

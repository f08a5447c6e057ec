"""Which parameters train: LoRA / QLoRA through peft, prefix tuning, bottleneck adapters, full
fine-tuning, or a frozen (zero-shot) baseline.

LoRA (Hu et al., 2021) replaces a frozen linear W0 [out, in] by

    h = W0 x + (alpha / r) * B A dropout(x),   A [r, in] ~ Kaiming-uniform,  B [out, r] = 0

so training starts exactly at the base model and only A, B (r * (in + out) per layer) learn.
QLoRA (Dettmers et al., 2023) is the same with W0 stored in NF4 (see `models.loading`).
Temporal LoRA gates the update per video frame (`models.temporal_lora`); per-group ranks and the
budget allocators live in `models.rank_allocation`; prefix tuning in `models.prefix`, bottleneck
adapters in `models.bottleneck`. `save_adapter` / `load_adapter` round-trip every method.
"""

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

from batch_contract import FRAME_SCORE_NAMES

from . import rank_allocation as ra
from .bottleneck import (
    BottleneckConfig,
    add_bottleneck_adapters,
    is_bottleneck_config,
    load_bottleneck,
    save_bottleneck,
)
from .modeling_video_llama import VideoLlamaForConditionalGeneration
from .prefix import add_prefix, is_prefix_config, load_prefix, save_prefix
from .temporal_lora import (
    FEATURE_INPUT,
    TemporalLoraConfig,
    checkpoint_kwargs,
    install_frame_gates,
    is_temporal_config,
)

METHODS = (
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
TEMPORAL_METHODS = ("temporal_lora", "temporal_qlora", "temporal_ranked_qlora")
# Methods that train adapters on a quantized base, and those that need a 16/32-bit one.
QUANTIZED_METHODS = ("qlora", "qlora8", "temporal_qlora", "ranked_qlora", "temporal_ranked_qlora")
FULL_PRECISION_METHODS = ("lora", "temporal_lora", "full")
# Adapter placement (`placement`): the module groups of `models.rank_allocation` that get adapters.
PLACEMENTS = {"vision": ("vision",), "llm": ("llm",), "both": ("vision", "llm")}
# Trained modules outside a peft adapter (prefix, bottleneck, frozen probe), by full parameter name.
MODULES_FILE = "modules_to_save.safetensors"
# adapter_config.json "peft_type" of the methods that are not peft's: a frozen run's trained modules.
FROZEN_TYPE = "FROZEN"
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
DEFAULT_VIRTUAL_TOKENS = 20


def uses_frame_gates(method: str) -> bool:
    """Whether `method` gates its adapters per kept frame, from the frame selector's scores [B, K]."""
    return method in TEMPORAL_METHODS


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
    placement: str | None = None,
    num_virtual_tokens: int | None = None,
    bottleneck: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Set up `model` for training with `method`.

    Args:
        model: a `VideoLlamaForConditionalGeneration` (16-bit/fp32 for lora/temporal_lora/full, loaded
            in 4- or 8-bit by `models.loading.load_model` for the *qlora methods, in int8 for qlora8;
            either for adalora, prefix, adapter and frozen).
        method: one of `METHODS`:
            "lora" / "qlora": LoRA on a 16-bit / quantized (NF4, or int8) base;
            "qlora8": LoRA on an int8 (LLM.int8) base;
            "prefix": peft prefix tuning of the LLM (`num_virtual_tokens` key/value pairs per layer,
                `models.prefix`), on a 16-bit or quantized base;
            "adapter": bottleneck adapters after the attention and MLP blocks (`models.bottleneck`;
                `bottleneck={"dim": m, "activation": "gelu"}`, towers by `placement`, default "llm");
            "temporal_lora" / "temporal_qlora": frame-gated LoRA on the frame-rowed targets (vision
                tower, frame Q-Former), plain LoRA on the others (`models.temporal_lora`);
            "ranked_qlora" / "temporal_ranked_qlora": the same with per-group ranks, which these
                require (`ranks`, or `allocation` + `budget`); any LoRA method accepts `ranks` too;
            "adalora": peft AdaLoRA (needs `adalora={"total_step": N}`; call
                `rank_allocation.adalora_update(model, step)` every step);
            "full": every parameter trains (not possible on quantized weights);
            "frozen": the zero-shot baseline: nothing trains unless `modules_to_save` names modules
                (e.g. ["video_projection"]: a linear probe on the video tokens).
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
        placement: which towers get adapters: "vision", "llm" or "both" (`PLACEMENTS`); for the LoRA
            family and adalora it sets the targets (default: both), for "adapter" the blocks adapted
            (default: llm); "prefix" is LLM-only. Not with `ranks`/`allocation`/`target_modules`.
        num_virtual_tokens: prefix length of "prefix" (default 20).
        bottleneck: {"dim", "activation"} of "adapter" (`models.bottleneck.BottleneckConfig`).
    Returns:
        a peft `PeftModel` for the LoRA family and adalora, the model itself for the others (with its
        LLM wrapped in peft for prefix). `.adapter_allocation` is a dict for logging (method,
        trainable parameters; for LoRA per-group ranks/alphas/params, scores, budget).

    Why not `peft.prepare_model_for_kbit_training` for qlora: it casts every non-4-bit parameter
    (Q-Formers, embeddings, norms, lm_head) to fp32, which silently runs the whole non-quantized
    path in fp32 (2x activation memory, dtype mix under DeepSpeed bf16), and turns on reentrant
    checkpointing through the deprecated `gradient_checkpointing_enable`. What it does that matters —
    freezing the base and optional checkpointing — is done here directly.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    quantized = _is_quantized(model)
    if method in QUANTIZED_METHODS and not quantized:
        raise ValueError(
            f"{method} needs a model loaded in 4/8 bit (models.loading.load_model(quantization='nf4'))"
        )
    if method in FULL_PRECISION_METHODS and quantized:
        raise ValueError(f"{method} needs a 16-bit model; this one is quantized (use method='qlora')")
    temporal = uses_frame_gates(method)
    if gate is not None and not temporal:
        raise ValueError(f"gate settings are for the temporal methods, not {method!r}")
    if adalora is not None and method != "adalora":
        raise ValueError(f"adalora settings are for method 'adalora', not {method!r}")
    if allocation not in ra.ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ra.ALLOCATIONS}, got {allocation!r}")
    if method == "qlora8" and not getattr(model, "is_loaded_in_8bit", False):
        raise ValueError(
            "qlora8 needs a model loaded in int8 (models.loading.load_model(quantization='int8'))"
        )
    if placement is not None and placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {sorted(PLACEMENTS)}, got {placement!r}")
    if num_virtual_tokens is not None and method != "prefix":
        raise ValueError(f"num_virtual_tokens is for method 'prefix', not {method!r}")
    if bottleneck is not None and method != "adapter":
        raise ValueError(f"bottleneck settings are for method 'adapter', not {method!r}")

    if method in ("full", "frozen", "prefix", "adapter"):
        return _apply_other(
            model,
            method,
            target_modules=target_modules,
            gradient_checkpointing=gradient_checkpointing,
            modules_to_save=modules_to_save,
            grouped=bool(ranks) or allocation != "static" or budget is not None,
            placement=placement,
            num_virtual_tokens=num_virtual_tokens,
            bottleneck=bottleneck,
        )

    grouped = bool(ranks) or allocation != "static"
    if "ranked" in method and not grouped:
        raise ValueError(f"{method} needs per-group ranks: pass ranks={{group: r}} or allocation + budget")
    if grouped and target_modules is not None:
        raise ValueError(
            "target_modules and per-group ranks/allocation are exclusive (groups set the targets)"
        )
    if allocation != "static" and budget is None:
        raise ValueError(f"allocation {allocation!r} needs a budget (total trainable parameters)")
    if placement is not None:
        if grouped or target_modules is not None:
            raise ValueError("placement, per-group ranks/allocation and target_modules are exclusive")
        target_modules = _placement_targets(placement, group_patterns)

    groups = list(ranks) if ranks else list(DEFAULT_GROUPS)
    patterns = ra.resolve_patterns(groups, group_patterns) if grouped else {}
    linears = ra.group_modules(model, patterns) if grouped else {}
    if modules_to_save is None:
        modules_to_save = [
            m
            for m in DEFAULT_MODULES_TO_SAVE
            if not (grouped and m == "video_projection" and "projection" in patterns)
        ]
    modules_to_save = _with_retrieval_head(model, modules_to_save)
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


def _apply_other(
    model: nn.Module,
    method: str,
    *,
    target_modules: list[str] | str | None,
    gradient_checkpointing: bool,
    modules_to_save: list[str] | None,
    grouped: bool,
    placement: str | None,
    num_virtual_tokens: int | None,
    bottleneck: Mapping[str, Any] | None,
) -> nn.Module:
    """full / frozen / prefix / adapter: the model itself, with `adapter_method` and, for the ones
    saved as their trained modules, `adapter_modules_to_save` (what `save_adapter` writes)."""
    if grouped:
        raise ValueError(f"ranks / allocation / budget do not apply to method {method!r}")
    if method in ("full", "frozen") and (placement is not None or target_modules is not None):
        raise ValueError(f"placement / target_modules do not apply to method {method!r}")
    if method == "full":
        model.requires_grad_(True)
    else:
        default = [] if method == "frozen" else DEFAULT_MODULES_TO_SAVE
        modules_to_save = _with_retrieval_head(model, default if modules_to_save is None else modules_to_save)
        if method == "prefix":
            if placement not in (None, "llm") or target_modules is not None:
                raise ValueError(
                    "prefix tuning acts on the LLM only: leave placement (or set 'llm') and target_modules unset"
                )
            add_prefix(model, DEFAULT_VIRTUAL_TOKENS if num_virtual_tokens is None else num_virtual_tokens)
        elif method == "adapter":
            if target_modules is not None and not isinstance(target_modules, str):
                raise ValueError(
                    "adapter target_modules must be one regex over module names (the block outputs)"
                )
            settings = BottleneckConfig(
                **(bottleneck or {}),
                groups=list(PLACEMENTS[placement or "llm"]),
                target_modules=target_modules,
            )
            add_bottleneck_adapters(model, settings)
        else:
            model.requires_grad_(False)
        for name in modules_to_save:
            model.get_submodule(name).requires_grad_(True)
        model.adapter_modules_to_save = modules_to_save
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.adapter_method = method
    model.adapter_allocation = {"method": method, "trainable_params": trainable_parameter_count(model)[0]}
    return model


def _placement_targets(placement: str, group_patterns: Mapping[str, str] | None) -> str:
    """One peft regex over the module groups of `placement`."""
    patterns = ra.resolve_patterns(PLACEMENTS[placement], group_patterns)
    return "|".join(f"(?:{p})" for p in patterns.values())


def _with_retrieval_head(model: nn.Module, names: list[str]) -> list[str]:
    """`names` plus an attached `models.retrieval_head` head: it trains and is saved under every method."""
    if getattr(model, "retrieval_head", None) is not None and "retrieval_head" not in names:
        return [*names, "retrieval_head"]
    return list(names)


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


def save_adapter(model: nn.Module, out_dir: str | Path) -> Path:
    """Write what `model` trains so that `load_adapter` on a fresh base restores it bit for bit.

    LoRA family / adalora: peft's `save_pretrained` (adapter_config.json + adapter_model.safetensors,
    modules_to_save included). prefix: the LLM's peft prefix adapter; adapter: `models.bottleneck`'s
    files in the same layout; frozen: an adapter_config.json with peft_type "FROZEN". These three add
    their modules trained outside the adapter (video_projection, ...) as `MODULES_FILE`. full: the
    whole model (`save_pretrained`: config.json + model.safetensors).
    """
    out_dir = Path(out_dir)
    method = getattr(model, "adapter_method", None)
    if isinstance(model, PeftModel) or method == "full":
        model.save_pretrained(str(out_dir))
        return out_dir
    if method is None:
        raise ValueError("save_adapter needs a model set up by apply_adapter or load_adapter")
    out_dir.mkdir(parents=True, exist_ok=True)
    if method == "prefix":
        save_prefix(model, out_dir)
    elif method == "adapter":
        save_bottleneck(model, out_dir)
    else:
        fields = {"peft_type": FROZEN_TYPE, "modules_to_save": model.adapter_modules_to_save}
        (out_dir / "adapter_config.json").write_text(json.dumps(fields, indent=2))
    modules = {
        f"{name}.{key}": value.detach().contiguous().cpu()
        for name in model.adapter_modules_to_save
        for key, value in model.get_submodule(name).state_dict().items()
    }
    if modules:
        save_file(modules, out_dir / MODULES_FILE)
    return out_dir


def load_adapter(model: nn.Module, adapter_dir: str | Path, is_trainable: bool = False) -> nn.Module:
    """Put a saved adapter (`save_adapter`'s folder) on a freshly loaded base model.

    A temporal adapter's config is read as `TemporalLoraConfig` first — which registers the gated
    layer types with peft — and its gates are connected to the model's frame scores. A full
    fine-tuning save is a whole model: it is loaded in place of `model`, on its device and dtype.
    Returns a `PeftModel` for the LoRA family, the model otherwise.
    """
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        if not (adapter_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{adapter_dir} holds neither an adapter (adapter_config.json) nor a model"
            )
        full = VideoLlamaForConditionalGeneration.from_pretrained(
            adapter_dir, dtype=model.dtype, device_map={"": model.device}
        )
        full.requires_grad_(is_trainable)
        full.adapter_method = "full"
        return full
    fields = json.loads(config_path.read_text())
    if is_prefix_config(fields) or is_bottleneck_config(fields) or fields.get("peft_type") == FROZEN_TYPE:
        if is_prefix_config(fields):
            model = load_prefix(model, adapter_dir, is_trainable)
            model.adapter_method = "prefix"
        elif is_bottleneck_config(fields):
            model = load_bottleneck(model, adapter_dir, is_trainable)
            model.adapter_method = "adapter"
        else:
            model.requires_grad_(False)
            model.adapter_method = "frozen"
        model.adapter_modules_to_save = _load_modules(model, adapter_dir / MODULES_FILE, is_trainable)
        return model
    if not is_temporal_config(fields):
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable)
    config = TemporalLoraConfig.from_pretrained(adapter_dir)
    peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable, config=config)
    install_frame_gates(peft_model)
    return peft_model


def _load_modules(model: nn.Module, path: Path, is_trainable: bool) -> list[str]:
    """Load `MODULES_FILE` (if any) into `model`; returns the names of the modules it held."""
    if not path.is_file():
        return []
    saved = load_file(path)
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    unknown = sorted(set(saved) - set(params))
    if unknown:
        raise KeyError(f"{path} holds tensors this model does not have: {unknown[:5]}")
    model.load_state_dict(saved, strict=False)
    names = sorted({key.rsplit(".", 1)[0] for key in saved})
    for name in names:
        model.get_submodule(name).requires_grad_(is_trainable)
    return names

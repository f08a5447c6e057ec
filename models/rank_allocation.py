"""Cross-modality rank allocation: a LoRA rank (and alpha) per module group of Video-LLaMA.

Groups are name patterns (regex, full match on module names of the base model):

    vision          ViT block linears                      rows are frames
    frame_qformer   frame Q-Former linears                 rows are frames
    video_qformer   video Q-Former linears                 rows are videos
    projection      video_projection                       Q-Former → LLM space
    llm             LLM attention and MLP linears

Static ranks become peft `rank_pattern` / `alpha_pattern` and are checked after injection
(`verify_ranks`). A budget allocator sets the ranks from a score per group so that the LoRA
parameters fill a budget:

    params(r) = sum_g r_g * c_g,     c_g = sum over the group's linears of (in + out)
    r_g = lambda * w_g,              lambda such that params(r) = budget  (r_g >= min_rank, integer)

with the weights w_g from
    entropy     relative effective rank exp(H) / min(rows, in) of each linear's input activations on
                calibration batches, H = spectral entropy of the singular values^2 (a LoRA update
                B A x only reaches the directions x occupies), averaged over the group's linears;
    motion      the static (or uniform) weights, vision scaled by mean motion / reference motion
                (clipped to [1/4, 4]): fast-moving data gets more vision capacity;
    importance  first-order sensitivity mean |W ⊙ dL/dW| (Molchanov et al., 2019) per linear,
                averaged over the group; dL/dW = sum_rows dy^T x from hooks, so 4-bit weights
                (dequantized for the product) need no weight gradient.
AdaLoRA (Zhang et al., 2023) is the learned baseline: `adalora_config` maps the same budget to its
target rank, `adalora_update` is its per-step call, `adalora_ranks` reports where ranks went.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import bitsandbytes as bnb
import torch
from peft import AdaLoraConfig
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from batch_contract import MOTION

GROUPS = ("vision", "frame_qformer", "video_qformer", "projection", "llm")
_QFORMER_LINEARS = (
    r"encoder\.layer\.\d+\.((attention|crossattention)\.(attention\.(query|key|value)|output\.dense)"
    r"|(intermediate_query|output_query|intermediate|output)\.dense)"
)
GROUP_PATTERNS: dict[str, str] = {
    "vision": (
        r"vision_model\.(.*\.)?encoder\.layers\.\d+\."
        r"(self_attn\.(qkv|projection|q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))"
    ),
    "frame_qformer": rf"qformer\.{_QFORMER_LINEARS}",
    "video_qformer": rf"video_qformer\.{_QFORMER_LINEARS}",
    "projection": r"video_projection",
    "llm": (
        r"language_model\.(.*\.)?layers\.\d+\."
        r"(self_attn\.(q_proj|k_proj|v_proj|o_proj|out_proj)|mlp\.(gate_proj|up_proj|down_proj)|fc1|fc2)"
    ),
}
ALLOCATIONS = ("static", "entropy", "motion", "importance")


def resolve_patterns(groups: Iterable[str], overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Pattern per requested group (`overrides` win); unknown group names are an error."""
    patterns = {**GROUP_PATTERNS, **(overrides or {})}
    groups = list(groups)
    unknown = [g for g in groups if g not in patterns]
    if unknown:
        raise ValueError(f"unknown module group(s) {unknown}; known: {sorted(patterns)}")
    return {g: patterns[g] for g in groups}


def _base_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Linear layers by module name in the base model (peft wrappers unwrapped to their base layer)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    found = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            found[name] = module.get_base_layer()
        elif isinstance(module, nn.Linear) and not name.endswith("base_layer") and ".lora_" not in name:
            found[name] = module
    return found


def group_modules(model: nn.Module, patterns: Mapping[str, str]) -> dict[str, dict[str, nn.Module]]:
    """group → {name: linear} for every linear whose name fully matches the group's pattern.

    Raises ValueError when a pattern matches no linear (naming the group and the pattern), or when
    one linear falls into two groups.
    """
    linears = _base_linears(model)
    groups: dict[str, dict[str, nn.Module]] = {}
    owner: dict[str, str] = {}
    for group, pattern in patterns.items():
        matched = {name: mod for name, mod in linears.items() if re.fullmatch(pattern, name)}
        if not matched:
            raise ValueError(
                f"module group {group!r}: pattern {pattern!r} matches no linear layer of the model"
            )
        for name in matched:
            if name in owner:
                raise ValueError(f"{name} matches the patterns of both {owner[name]!r} and {group!r}")
            owner[name] = group
        groups[group] = matched
    return groups


def rank_unit_params(groups: Mapping[str, Mapping[str, nn.Module]]) -> dict[str, int]:
    """LoRA parameters per unit of rank in each group: c_g = sum (in + out)."""
    return {
        group: sum(mod.in_features + mod.out_features for mod in linears.values())
        for group, linears in groups.items()
    }


def lora_patterns(
    ranks: Mapping[str, int], alphas: Mapping[str, float], patterns: Mapping[str, str]
) -> tuple[str, dict[str, int], dict[str, float]]:
    """(target_modules regex, rank_pattern, alpha_pattern) for peft from per-group ranks and alphas."""
    for group, rank in ranks.items():
        if int(rank) < 1:
            raise ValueError(f"rank of group {group!r} must be >= 1, got {rank}")
    target = "|".join(f"(?:{patterns[g]})" for g in ranks)
    return (
        target,
        {f"(?:{patterns[g]})": int(r) for g, r in ranks.items()},
        {f"(?:{patterns[g]})": alphas[g] for g in ranks},
    )


def verify_ranks(
    model: nn.Module,
    ranks: Mapping[str, int],
    alphas: Mapping[str, float],
    patterns: Mapping[str, str],
    adapter_name: str = "default",
) -> dict[str, dict[str, Any]]:
    """Check a peft model after injection: every group has LoRA layers, each with the group's r and alpha.

    Returns group → {"rank", "alpha", "modules", "lora_params"} for logging.
    """
    layers = {
        name: module
        for name, module in (
            model.get_base_model() if hasattr(model, "get_base_model") else model
        ).named_modules()
        if isinstance(module, LoraLayer) and adapter_name in module.r
    }
    report = {}
    for group, pattern in patterns.items():
        if group not in ranks:
            continue
        matched = {name: layer for name, layer in layers.items() if re.fullmatch(pattern, name)}
        if not matched:
            raise ValueError(f"module group {group!r}: no LoRA layer was injected for pattern {pattern!r}")
        for name, layer in matched.items():
            if layer.r[adapter_name] != ranks[group] or layer.lora_alpha[adapter_name] != alphas[group]:
                raise ValueError(
                    f"{name} (group {group!r}) got r={layer.r[adapter_name]}, "
                    f"alpha={layer.lora_alpha[adapter_name]}; expected r={ranks[group]}, alpha={alphas[group]}"
                )
        report[group] = {
            "rank": int(ranks[group]),
            "alpha": float(alphas[group]),
            "modules": len(matched),
            "lora_params": sum(
                layer.lora_A[adapter_name].weight.numel() + layer.lora_B[adapter_name].weight.numel()
                for layer in matched.values()
            ),
        }
    return report


def allocate_budget(
    unit_params: Mapping[str, int],
    weights: Mapping[str, float],
    budget: float,
    min_rank: int = 1,
    max_rank: int | None = None,
) -> dict[str, int]:
    """Integer ranks r_g ~ lambda * w_g whose LoRA parameters sum_g r_g c_g come closest to `budget`.

    Continuous solution first (groups pinned at min_rank / max_rank are taken out and lambda is
    solved again for the rest), then floor and a greedy fill of what is left by the largest shortfall,
    and one final step over the budget when that lands closer. The result is within c_min / 2 of the
    budget whenever the bounds allow.
    """
    groups = list(unit_params)
    if any(weights[g] < 0 for g in groups) or sum(weights[g] for g in groups) <= 0:
        raise ValueError(f"allocation weights must be >= 0 with a positive sum, got {dict(weights)}")
    floor_cost = sum(min_rank * unit_params[g] for g in groups)
    if budget < floor_cost:
        raise ValueError(
            f"budget of {budget:.0f} LoRA parameters is below {floor_cost} (rank {min_rank} in every group)"
        )
    upper = max_rank if max_rank is not None else math.inf
    pinned: dict[str, float] = {}
    while True:
        free = [g for g in groups if g not in pinned]
        left = budget - sum(pinned[g] * unit_params[g] for g in pinned)
        denom = sum(weights[g] * unit_params[g] for g in free)
        scale = left / denom if denom > 0 else 0.0
        target = {**pinned, **{g: weights[g] * scale for g in free}}
        out_of_bounds = {
            g: min(max(target[g], min_rank), upper) for g in free if not min_rank <= target[g] <= upper
        }
        if not out_of_bounds or not free:
            break
        pinned.update(out_of_bounds)

    ranks = {g: int(min(max(math.floor(target[g]), min_rank), upper)) for g in groups}
    remaining = budget - sum(ranks[g] * unit_params[g] for g in groups)
    while True:
        fits = [g for g in groups if unit_params[g] <= remaining and ranks[g] < upper]
        if not fits:
            break
        best = max(fits, key=lambda g: target[g] - ranks[g])
        ranks[best] += 1
        remaining -= unit_params[best]
    growable = [g for g in groups if ranks[g] < upper]
    if growable:
        cheapest = min(growable, key=lambda g: unit_params[g])
        if unit_params[cheapest] - remaining < remaining:
            ranks[cheapest] += 1
    return ranks


# --- scores ------------------------------------------------------------------------------------------
def _run_calibration(model: nn.Module, batches: Iterable[Mapping[str, Any]], need_grad: bool) -> int:
    """Forward (and backward of the loss when need_grad) every calibration batch; returns the count."""
    was_training = model.training
    model.eval()
    count = 0
    try:
        for batch in batches:
            batch = dict(batch)
            if need_grad:
                # Frozen weights: gradients flow to the activations only, from the pixels through the LLM.
                batch["pixel_values"] = batch["pixel_values"].detach().clone().requires_grad_(True)
                model(**batch).loss.backward()
            else:
                with torch.no_grad():
                    model(**batch)
            count += 1
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("calibration needs at least one batch")
    return count


def entropy_scores(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    groups: Mapping[str, Mapping[str, nn.Module]],
    max_rows: int = 512,
) -> dict[str, float]:
    """Mean relative effective rank exp(H) / min(rows, in) of each group's linear inputs, in (0, 1].

    Relative, so that a group seen through more rows (the ViT sees B*K*T tokens, the LLM B*L) or a
    wider layer is not favoured by its shape alone.

    Args:
        model: the (base) model; batches: model inputs (pixel_values [B,K,3,H,W], input_ids, ...).
        groups: from `group_modules`. max_rows: rows (tokens) per linear and batch fed to the SVD.
    """
    sums: dict[str, float] = {name: 0.0 for linears in groups.values() for name in linears}
    handles = []

    def hook_for(name: str):
        def hook(_module: nn.Module, args: tuple, _output: Any) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # [M, in]
            if x.shape[0] > max_rows:  # evenly spaced rows: every frame / position represented
                x = x[torch.linspace(0, x.shape[0] - 1, max_rows, device=x.device).long()]
            energy = torch.linalg.svdvals(x) ** 2  # min(M, in) values
            p = energy / energy.sum().clamp_min(1e-30)
            effective_rank = math.exp(-(p * p.clamp_min(1e-30).log()).sum().item())
            sums[name] += effective_rank / energy.numel()

        return hook

    for linears in groups.values():
        for name, module in linears.items():
            handles.append(module.register_forward_hook(hook_for(name)))
    try:
        count = _run_calibration(model, batches, need_grad=False)
    finally:
        for handle in handles:
            handle.remove()
    return {g: sum(sums[n] for n in linears) / (len(linears) * count) for g, linears in groups.items()}


def _dense_weight(module: nn.Module) -> torch.Tensor:
    """float32 [out, in] weight of a linear, dequantized when 4-bit."""
    weight = module.weight
    if isinstance(module, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    return weight.detach().float()


def importance_scores(
    model: nn.Module, batches: Iterable[Mapping[str, Any]], groups: Mapping[str, Mapping[str, nn.Module]]
) -> dict[str, float]:
    """Mean first-order sensitivity |W ⊙ dL/dW| of each group's linears on calibration batches (with labels)."""
    sums: dict[str, float] = {name: 0.0 for linears in groups.values() for name in linears}
    handles = []

    def hook_for(name: str, module: nn.Module):
        def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not output.requires_grad:
                return
            x = args[0].detach()

            def on_grad(grad_out: torch.Tensor) -> None:
                # dL/dW = sum over rows of dy^T x  [out, in]
                grad_w = (
                    grad_out.reshape(-1, grad_out.shape[-1]).float().T @ x.reshape(-1, x.shape[-1]).float()
                )
                sums[name] += (_dense_weight(module) * grad_w).abs().mean().item()

            output.register_hook(on_grad)

        return hook

    requires_grad = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    for linears in groups.values():
        for name, module in linears.items():
            handles.append(module.register_forward_hook(hook_for(name, module)))
    try:
        count = _run_calibration(model, batches, need_grad=True)
    finally:
        for handle in handles:
            handle.remove()
        for param, flag in requires_grad.items():
            param.requires_grad_(flag)
    scores = {g: sum(sums[n] for n in linears) / (len(linears) * count) for g, linears in groups.items()}
    if not any(scores.values()):
        raise ValueError("importance scores are all zero: do the calibration batches have labels?")
    return scores


def mean_motion(batches: Iterable[Mapping[str, Any]]) -> float:
    """Mean selector motion score over the calibration batches (frames after the first of each clip)."""
    values = []
    for batch in batches:
        scores = batch.get("frame_scores")
        if scores is None:
            raise ValueError("motion allocation needs frame_scores [B, K, 3] in the calibration batches")
        values.append(scores[:, 1:, MOTION].float().flatten())
    if not values or sum(v.numel() for v in values) == 0:
        raise ValueError("motion allocation needs clips of at least 2 frames in the calibration batches")
    return torch.cat(values).mean().item()


def motion_scores(
    base_weights: Mapping[str, float], motion: float, reference_motion: float = 0.05
) -> dict[str, float]:
    """The base weights with the vision weight scaled by motion / reference_motion (clipped to [1/4, 4])."""
    if "vision" not in base_weights:
        raise ValueError("motion allocation scales the vision group, which is not among the groups")
    factor = min(max(motion / reference_motion, 0.25), 4.0)
    return {g: w * factor if g == "vision" else w for g, w in base_weights.items()}


def allocate(
    model: nn.Module,
    allocation: str,
    budget: float,
    groups: Mapping[str, Mapping[str, nn.Module]],
    *,
    base_ranks: Mapping[str, int] | None = None,
    calibration_batches: list[Mapping[str, Any]] | None = None,
    fixed_params: int = 0,
    min_rank: int = 1,
    max_rank: int | None = None,
    reference_motion: float = 0.05,
) -> dict[str, Any]:
    """Ranks per group for a total trainable-parameter `budget` (LoRA + `fixed_params`, e.g. gates, saved modules).

    Returns a dict for logging: {"allocation", "budget", "fixed_params", "scores", "weights", "ranks",
    "lora_params", "total_params"} (lora_params per group).
    """
    if allocation not in ALLOCATIONS or allocation == "static":
        raise ValueError(f"budget allocation must be one of {ALLOCATIONS[1:]}, got {allocation!r}")
    base = {g: float(base_ranks[g]) if base_ranks and g in base_ranks else 1.0 for g in groups}
    extra: dict[str, Any] = {}
    if allocation in ("entropy", "importance") and not calibration_batches:
        raise ValueError(f"{allocation} allocation needs calibration_batches")
    if allocation == "entropy":
        scores = entropy_scores(model, calibration_batches, groups)
    elif allocation == "importance":
        scores = importance_scores(model, calibration_batches, groups)
    else:
        if not calibration_batches:
            raise ValueError("motion allocation needs calibration_batches with frame_scores")
        extra["mean_motion"] = mean_motion(calibration_batches)
        scores = motion_scores(base, extra["mean_motion"], reference_motion)
    units = rank_unit_params(groups)
    ranks = allocate_budget(units, scores, budget - fixed_params, min_rank=min_rank, max_rank=max_rank)
    lora = {g: ranks[g] * units[g] for g in groups}
    return {
        "allocation": allocation,
        "budget": float(budget),
        "fixed_params": int(fixed_params),
        "scores": {g: float(s) for g, s in scores.items()},
        "ranks": ranks,
        "lora_params": lora,
        "total_params": int(sum(lora.values()) + fixed_params),
        **extra,
    }


# --- AdaLoRA baseline ----------------------------------------------------------------------------------
def adalora_config(
    target_modules: str | list[str],
    groups: Mapping[str, Mapping[str, nn.Module]],
    *,
    total_step: int,
    budget: float | None = None,
    target_r: int = 8,
    init_r: int | None = None,
    alpha: float = 16,
    dropout: float = 0.0,
    tinit: int | None = None,
    tfinal: int | None = None,
    delta_t: int = 10,
    modules_to_save: list[str] | None = None,
) -> AdaLoraConfig:
    """AdaLoRA config; with `budget` (LoRA parameters) its average target rank spends that budget.

    AdaLoRA keeps init_r components per layer allocated and masks the pruned ones, so its parameter
    count stays at the init_r size; the budget is what the kept components (r * (in + out + 1)) cost.
    """
    if total_step is None or total_step < 1:
        raise ValueError("adalora needs total_step (the number of training steps)")
    if budget is not None:
        # Each kept rank of a linear costs a row of A, a column of B and one singular value.
        per_rank = sum(rank_unit_params(groups).values()) + sum(len(linears) for linears in groups.values())
        target_r = max(1, round(budget / per_rank))
    init_r = init_r if init_r is not None else math.ceil(1.5 * target_r)
    # Warm-up 10% of the steps, final fine-tuning at the fixed allocation for the last 20%.
    tinit = tinit if tinit is not None else total_step // 10
    tfinal = tfinal if tfinal is not None else total_step // 5
    if tinit + tfinal >= total_step:
        raise ValueError(f"adalora needs tinit + tfinal < total_step, got {tinit} + {tfinal} >= {total_step}")
    return AdaLoraConfig(
        init_r=init_r,
        target_r=target_r,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=delta_t,
        total_step=total_step,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        modules_to_save=modules_to_save,
    )


def adalora_update(model: nn.Module, step: int) -> None:
    """AdaLoRA's per-step budget update: call after backward, before zero_grad, every step.

    It reads `.grad` of the LoRA parameters, so under DeepSpeed ZeRO (gradients held in the engine's
    partitions) call it where the full gradients are visible (ZeRO stage 0/1, or after gathering).
    """
    model.base_model.update_and_allocate(step)


def adalora_ranks(
    model: nn.Module, patterns: Mapping[str, str], adapter_name: str = "default"
) -> dict[str, Any]:
    """Current AdaLoRA ranks per group: {group: {"rank_sum", "rank_mean", "modules"}}.

    Before the first budget masking every layer holds init_r components; afterwards the kept ones are
    those of the config's `rank_pattern` (keyed by the lora_E parameter name).
    """
    base = model.get_base_model()
    rank_pattern = model.peft_config[adapter_name].rank_pattern or {}
    report = {}
    for group, pattern in patterns.items():
        ranks = []
        for name, module in base.named_modules():
            if hasattr(module, "lora_E") and adapter_name in module.lora_E and re.fullmatch(pattern, name):
                kept = rank_pattern.get(f"{name}.lora_E.{adapter_name}")
                ranks.append(int(sum(kept)) if kept is not None else int(module.r[adapter_name]))
        if ranks:
            report[group] = {
                "rank_sum": sum(ranks),
                "rank_mean": sum(ranks) / len(ranks),
                "modules": len(ranks),
            }
    return report

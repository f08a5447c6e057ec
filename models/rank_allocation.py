"""Cross-modality rank allocation: a LoRA rank (and alpha) per module group of Video-LLaMA.

Groups are name patterns (regex, full match on module names of the base model); the built-in ones
are the towers of `models.towers`, by the same names:

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

with the weights w_g either fixed or measured (`models.rank_scores`, each normalised by a reference
from the same data, see there):

    static_vision   vision 4, every other group 1            (`STATIC_PRESETS`: vision-heavy)
    static_fusion   frame_qformer and video_qformer 4, others 1                   (fusion-heavy)
    static_llm      llm 4, others 1                                               (LLM-heavy)
    entropy         relative effective rank of each linear's inputs
    importance      |W ⊙ dL/dW| / (mean |W| * mean |dL/dW|) per linear
    motion          the vision weight times the odds of the clips' temporal change ratio

A budget allocation spreads its ranks over `ALLOCATION_GROUPS` (the towers with layers: vision, both
Q-Formers, the LLM; the projection stays trained in full, as under QLoRA) unless `adapter.ranks`
names the groups. Its budget defaults to what the same method at one rank r on its default
placement trains (`models.lora_methods.uniform_trainable_params`: QLoRA at r for ranked_qlora), so
an allocation is compared with uniform QLoRA at a matched trainable-parameter count (within 2%).

AdaLoRA (Zhang et al., 2023) is the learned baseline: `adalora_config` maps the same budget to its
target rank, `adalora_update` is its per-step call, `adalora_ranks` reports where ranks went.
`lora_params_by_tower` / `allocation_metrics` give what every LoRA-family run logs, so that the
comparison can draw the ranks each method chose side by side.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from peft import AdaLoraConfig
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from .rank_scores import entropy_scores, importance_scores, motion_factor, motion_scores, temporal_change
from .towers import FUSION, TOWER_NAMES, linear_patterns, tower_of

# Module groups: the towers (`models.towers`), by the same names; `group_patterns` can override them.
GROUP_PATTERNS: dict[str, str] = linear_patterns(TOWER_NAMES)
# Rank multiplier of the heavy groups of a static preset against 1 for every other group.
HEAVY = 4.0
STATIC_PRESETS: dict[str, dict[str, float]] = {
    "static_vision": {"vision": HEAVY},
    "static_fusion": dict.fromkeys(FUSION, HEAVY),
    "static_llm": {"llm": HEAVY},
}
# "static": the ranks of adapter.ranks as given; the others fill a budget.
BUDGET_ALLOCATIONS = (*STATIC_PRESETS, "entropy", "motion", "importance")
ALLOCATIONS = ("static", *BUDGET_ALLOCATIONS)
# The groups a budget allocation spreads its ranks over when adapter.ranks does not name them.
ALLOCATION_GROUPS = ("vision", *FUSION, "llm")
# AdaLoRA's budget re-allocations in a run, whatever its length (its default delta_t).
ADALORA_UPDATES = 20


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


def preset_scores(allocation: str, groups: Iterable[str]) -> dict[str, float]:
    """The fixed weights of a static preset over `groups`: `HEAVY` for its heavy groups, 1 for the others."""
    heavy, groups = STATIC_PRESETS[allocation], list(groups)
    if not set(heavy) & set(groups):
        raise ValueError(
            f"adapter.allocation={allocation} weighs up {sorted(heavy)}, none of which is among the groups "
            f"{groups}; name them in adapter.ranks or leave adapter.ranks unset ({list(ALLOCATION_GROUPS)})"
        )
    return {g: heavy.get(g, 1.0) for g in groups}


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
) -> dict[str, Any]:
    """Ranks per group for a total trainable-parameter `budget` (LoRA + `fixed_params`, e.g. gates, saved modules).

    `base_ranks`: the base weights "motion" scales (default 1 per group). Returns a dict for logging:
    {"allocation", "budget", "fixed_params", "scores", "ranks", "lora_params", "total_params"}
    (lora_params per group), and "temporal_change" ({"within", "across", "ratio", "factor"}) for motion.
    """
    if allocation not in BUDGET_ALLOCATIONS:
        raise ValueError(f"budget allocation must be one of {BUDGET_ALLOCATIONS}, got {allocation!r}")
    base = {g: float(base_ranks[g]) if base_ranks and g in base_ranks else 1.0 for g in groups}
    extra: dict[str, Any] = {}
    if allocation in ("entropy", "importance", "motion") and not calibration_batches:
        raise ValueError(f"{allocation} allocation needs calibration_batches")
    if allocation in STATIC_PRESETS:
        scores = preset_scores(allocation, groups)
    elif allocation == "entropy":
        scores = entropy_scores(model, calibration_batches, groups)
    elif allocation == "importance":
        scores = importance_scores(model, calibration_batches, groups)
    else:
        change = temporal_change(calibration_batches)
        extra["temporal_change"] = {**change, "factor": motion_factor(change["ratio"])}
        scores = motion_scores(base, change["ratio"])
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
    delta_t: int | None = None,
    modules_to_save: list[str] | None = None,
) -> AdaLoraConfig:
    """AdaLoRA config; with `budget` (LoRA parameters) its average target rank spends that budget.

    AdaLoRA keeps init_r components per layer allocated and masks the pruned ones, so its parameter
    count stays at the init_r size; the budget is what the kept components (r * (in + out + 1)) cost.

    Schedule (peft's): warm-up at init_r for `tinit` steps (default 10% of total_step), then the
    budget falls cubically to the target, re-allocated every `delta_t` steps, and is fixed for the
    last `tfinal` steps (default 20%). The default delta_t spreads `ADALORA_UPDATES` re-allocations
    over the span between, whatever the run's length: at 200 steps tinit 20, tfinal 40, delta_t 7,
    21 re-allocations (`adalora_budget_updates`; the fixed delta_t = 10 of before made 14 there and
    3 at 40 steps, too few for the ranks to move).
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
    if delta_t is None:
        delta_t = max(1, (total_step - tfinal - tinit) // ADALORA_UPDATES)
    elif delta_t < 1:
        raise ValueError(f"adapter.adalora.delta_t must be >= 1, got {delta_t}")
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


def adalora_budget_updates(total_step: int, tinit: int, tfinal: int, delta_t: int) -> int:
    """How many times peft's AdaLoRA re-allocates its ranks in steps 0 .. total_step - 1: every
    step s with tinit < s < total_step - tfinal and s % delta_t == 0, and once more at
    s = total_step - tfinal, where the allocation is fixed for the rest of the run."""
    final = total_step - tfinal
    return sum(1 for s in range(tinit + 1, final) if s % delta_t == 0) + int(0 <= final < total_step)


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


# --- What runs log -------------------------------------------------------------------------------------
def lora_params_by_tower(model: nn.Module, adapter_name: str = "default") -> dict[str, int]:
    """LoRA parameters each tower (`models.towers`) holds in a peft model: lora_A + lora_B of LoRA
    layers; for AdaLoRA the kept components only (each r_kept * (in + out + 1))."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    rank_pattern = {}
    if hasattr(model, "peft_config"):
        rank_pattern = getattr(model.peft_config[adapter_name], "rank_pattern", None) or {}
    counts: dict[str, int] = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer) or adapter_name not in module.r:
            continue
        if hasattr(module, "lora_E") and adapter_name in module.lora_E:
            kept = rank_pattern.get(f"{name}.lora_E.{adapter_name}")
            rank = int(sum(kept)) if kept is not None else int(module.r[adapter_name])
            layer = module.get_base_layer()
            params = rank * (layer.in_features + layer.out_features + 1)
        else:
            params = sum(
                getattr(p, "ds_numel", p.numel())
                for p in (
                    *module.lora_A[adapter_name].parameters(),
                    *module.lora_B[adapter_name].parameters(),
                )
            )
        tower = tower_of(name) or "other"
        counts[tower] = counts.get(tower, 0) + int(params)
    return counts


def allocation_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """An adapter's report (`.adapter_allocation`) as MLflow metrics: ``allocation/lora_params_<tower>``
    (parameters), ``allocation/rank_<group>`` (the group's rank; AdaLoRA: its mean kept rank) and
    ``allocation/budget_params`` where a budget was set."""
    metrics = {
        f"allocation/lora_params_{tower}": float(n)
        for tower, n in report.get("lora_params_by_tower", {}).items()
    }
    for group, info in report.get("groups", {}).items():
        metrics[f"allocation/rank_{group}"] = float(info.get("rank", info.get("rank_mean", 0.0)))
    if report.get("budget") is not None:
        metrics["allocation/budget_params"] = float(report["budget"])
    return metrics

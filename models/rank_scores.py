"""Scores per module group for the budget rank allocators of `models.rank_allocation`.

Each score is measured on calibration batches (model inputs; pixel_values [B, K, 3, H, W], ...) and
averaged over a group's linears:

    entropy     relative effective rank exp(H) / min(rows, in) of each linear's input activations,
                H = spectral entropy of the singular values^2 (a LoRA update B A x only reaches the
                directions x occupies);
    importance  first-order sensitivity |W ⊙ dL/dW| (Molchanov et al., 2019) of each linear,
                divided by mean |W| * mean |dL/dW| of that linear; dL/dW = sum_rows dy^T x from
                hooks, so 4-bit weights (dequantized for the product) need no weight gradient;
    motion      not measured on the model: the clips' temporal change (consecutive kept frames)
                relative to the change between frames of different clips of the same data.

Each is normalised by a reference taken from the same data and layer, never by a constant, so that
no group wins by its shape, its initialisation scale or the units of a score:

    entropy     relative to the largest effective rank the layer's inputs could have here,
                min(rows, in): 1 = the inputs fill every direction, whatever the width or token count.
    importance  the raw |W ⊙ dL/dW| is in units of |W| * |dL/dW|, which differ by tower (the ViT and
                the LLM are initialised at different scales, gradients shrink with depth, the loss may
                be scaled). Divided by mean |W| * mean |dL/dW| it is dimensionless: 1 when a
                linear's gradient falls on its weights independently of their size, > 1 when the
                loss hinges on its large weights. Rescaling a linear's weights or its gradients by
                any factor leaves it unchanged (`layer_importance`).
    motion      ratio rho = E|f_t - f_{t-1}| / E|f_t - f'_t| of mean-pooled frames f of the
                calibration clips (f' the same frame position of the next clip): the change between
                consecutive frames of a clip relative to the change between unrelated frames of the
                same data set. rho is unchanged by any affine change of the pixel scale (the model's
                normalisation, uint8 vs float) and needs no threshold: rho = 0 for still clips,
                rho -> 1 when consecutive frames are as different as frames of other clips. The
                vision weight is multiplied by the odds rho / (1 - rho), clipped to [1/4, 4]: neutral
                (1) when the temporal change is half of what unrelated frames differ by.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import bitsandbytes as bnb
import torch
import torch.nn.functional as F
from torch import nn

# Frames are compared on a coarse grid (like the selector's motion score): robust to pixel noise.
_MOTION_GRID = 16
# Bounds of the motion factor on the vision weight: neither group is starved by one statistic.
_MOTION_FACTOR_BOUNDS = (0.25, 4.0)


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


def layer_importance(weight: torch.Tensor, grad: torch.Tensor) -> tuple[float, float]:
    """(mean |W ⊙ G|, mean |G|) of one linear and one batch (weight, grad: [out, in]).

    The layer's normalised importance is sum_b mean |W ⊙ G_b| / (mean |W| * sum_b mean |G_b|)
    over batches b (`normalised_importance`): unchanged when W or G is multiplied by any c > 0.
    """
    return (weight * grad).abs().mean().item(), grad.abs().mean().item()


def normalised_importance(product: float, grad_mass: float, weight_mass: float) -> float:
    """sum_b mean |W ⊙ G_b| / (mean |W| * sum_b mean |G_b|): dimensionless, 1 when |W| and |G| are
    unrelated; 0 for a layer no gradient reached."""
    denom = weight_mass * grad_mass
    return product / denom if denom > 0 else 0.0


def importance_scores(
    model: nn.Module, batches: Iterable[Mapping[str, Any]], groups: Mapping[str, Mapping[str, nn.Module]]
) -> dict[str, float]:
    """Mean normalised first-order sensitivity of each group's linears on calibration batches (with labels).

    Per linear: sum_b mean |W ⊙ dL/dW_b| / (mean |W| * sum_b mean |dL/dW_b|) (see the module
    docstring for why); the group's score is the mean over its linears.
    """
    names = [name for linears in groups.values() for name in linears]
    product = dict.fromkeys(names, 0.0)
    grad_mass = dict.fromkeys(names, 0.0)
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
                p, g = layer_importance(_dense_weight(module), grad_w)
                product[name] += p
                grad_mass[name] += g

            output.register_hook(on_grad)

        return hook

    requires_grad = {p: p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    for linears in groups.values():
        for name, module in linears.items():
            handles.append(module.register_forward_hook(hook_for(name, module)))
    try:
        _run_calibration(model, batches, need_grad=True)
    finally:
        for handle in handles:
            handle.remove()
        for param, flag in requires_grad.items():
            param.requires_grad_(flag)
    if not any(grad_mass.values()):
        raise ValueError("importance scores are all zero: do the calibration batches have labels?")
    return {
        g: sum(
            normalised_importance(product[n], grad_mass[n], _dense_weight(mod).abs().mean().item())
            for n, mod in linears.items()
        )
        / len(linears)
        for g, linears in groups.items()
    }


def temporal_change(batches: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The calibration clips' temporal change and its reference from the same data.

    Args:
        batches: model inputs with pixel_values [B, K, 3, H, W] (the kept frames), all of one shape;
            at least 2 clips in all and K >= 2.
    Returns:
        {"within": E|f_t - f_{t-1}|, "across": E|f_t - f'_t|, "ratio": within / across} over the
        channel-mean frames f average-pooled to a 16x16 grid, t >= 1, f' the clip after f's (cyclic)
        at the same frame position.
    """
    clips = [batch["pixel_values"].detach().float() for batch in batches]
    if not clips or len({c.shape[1:] for c in clips}) != 1:
        raise ValueError(
            "motion allocation needs calibration batches of pixel_values [B, K, 3, H, W] of one shape"
        )
    frames = torch.cat(clips)  # [N, K, 3, H, W]
    n, k = frames.shape[:2]
    if n < 2 or k < 2:
        raise ValueError(f"motion allocation needs >= 2 clips of >= 2 frames to compare, got {n} of {k}")
    grid = F.adaptive_avg_pool2d(frames.mean(2), _MOTION_GRID)  # [N, K, g, g]
    within = (grid[:, 1:] - grid[:, :-1]).abs().mean().item()
    across = (grid[:, 1:] - grid.roll(1, dims=0)[:, 1:]).abs().mean().item()
    if across == 0:
        raise ValueError("motion allocation: the calibration clips are all identical, no reference change")
    return {"within": within, "across": across, "ratio": within / across}


def motion_factor(ratio: float) -> float:
    """The vision weight's multiplier: the odds rho / (1 - rho) of the temporal change ratio, in [1/4, 4]."""
    low, high = _MOTION_FACTOR_BOUNDS
    return high if ratio >= 1 else min(max(ratio / (1 - ratio), low), high)


def motion_scores(base_weights: Mapping[str, float], ratio: float) -> dict[str, float]:
    """The base weights with the vision weight multiplied by `motion_factor(ratio)`."""
    if "vision" not in base_weights:
        raise ValueError("motion allocation scales the vision group, which is not among the groups")
    factor = motion_factor(ratio)
    return {g: w * factor if g == "vision" else w for g, w in base_weights.items()}

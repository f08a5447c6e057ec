"""Scores per module group for the budget rank allocators of `models.rank_allocation`.

Each score is measured on calibration batches (model inputs; pixel_values [B, K, 3, H, W], ...) and
averaged over a group's linears:

    entropy     relative effective rank exp(H) / min(rows, in) of each linear's input activations,
                H = spectral entropy of the singular values^2 (a LoRA update B A x only reaches the
                directions x occupies);
    importance  first-order sensitivity mean |W ⊙ dL/dW| (Molchanov et al., 2019); dL/dW =
                sum_rows dy^T x from hooks, so 4-bit weights (dequantized for the product) need no
                weight gradient;
    motion      not measured on the model: the static (or uniform) weights with the vision weight
                scaled by the clips' mean selector motion / a reference motion (clipped to [1/4, 4]).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import bitsandbytes as bnb
import torch
from torch import nn

from batch_contract import MOTION


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

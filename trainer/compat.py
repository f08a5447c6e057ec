"""Refuse configurations that cannot work, before any weight is loaded.

A combination that fails deep inside DeepSpeed or bitsandbytes after minutes of loading (or,
worse, trains silently wrong) is caught here with a message that says what to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from models.method_spec import INT8_BASE, AdapterMethod
from models.methods import METHODS
from models.towers import checkpointed_towers
from models.weight_formats import FULL_PRECISION, Quantization, canonical, describe, tower_formats
from trainer.config import ConfigError, RunConfig
from trainer.ds_config import zero_stage
from trainer.evaluation.frame_views import CONTROLS
from trainer.optimizers import check_optimizer

# What model.quantization=auto becomes for each adapter.method: its declaration's weight format.
METHOD_QUANTIZATION = {name: method.weight_format for name, method in METHODS.items()}


def _method(cfg: RunConfig) -> AdapterMethod:
    method = METHODS.get(cfg.adapter.method)
    if method is None:
        raise ConfigError(
            f"adapter.method must be one of {', '.join(sorted(METHODS))}; got {cfg.adapter.method!r}"
        )
    return method


def resolve_quantization(cfg: RunConfig) -> Quantization:
    """model.quantization with "auto" replaced by the method's own; a contradiction is a ConfigError.

    A mapping over the towers ({vision: int8, llm: nf4}, `models.weight_formats`) has its towers left
    out (or "auto") set to the method's own format, and becomes the one format when every tower holds
    the same. The trainer writes the result back into the config before anything reads it, so the
    run config that is logged and saved next to the adapter names the real weight format.
    """
    quant, method = cfg.model.quantization, _method(cfg)
    formats = _tower_formats(quant, default=method.weight_format)
    # A method named for one weight format (qlora8) contradicts any other explicit one.
    if method.base is INT8_BASE and not method.base.admits(formats.values()):
        raise ConfigError(
            f"adapter.method={method.name} is {method.summary} but model.quantization={describe(formats)}: "
            f"set model.quantization={method.weight_format} or auto (or use adapter.method={method.counterpart} "
            "for NF4)"
        )
    return canonical(formats)


def _tower_formats(quant: Quantization, default: str | None = None) -> dict[str, str]:
    """model.quantization's format per tower; a ConfigError naming the key otherwise."""
    try:
        return tower_formats(quant, default)
    except ValueError as err:
        auto = (
            "auto, "
            if default is not None
            else "(auto is resolved by resolve_quantization before this check) "
        )
        raise ConfigError(
            f"model.{err}; model.quantization takes {auto}one format or {{tower: format}}"
        ) from None


def check_compatibility(cfg: RunConfig, ds: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None:
    """Raise ConfigError naming the keys of the first impossible combination found."""
    quant = cfg.model.quantization
    method = _method(cfg)
    stage = zero_stage(ds)
    zero = ds.get("zero_optimization", {})
    formats = _tower_formats(quant)
    held = set(formats.values())
    if not method.base.admits(held):
        hint = (
            f"use adapter.method={method.counterpart}"
            if method.counterpart is not None and METHODS[method.counterpart].base.admits(held)
            else f"set model.quantization={method.weight_format}"
        )
        raise ConfigError(
            f"adapter.method={method.name} needs a {method.base.label} base but "
            f"model.quantization={describe(formats)}: {hint}"
        )
    if cfg.train.gate_lr is not None and not method.frame_gates:
        gated = ", ".join(sorted(n for n, m in METHODS.items() if m.frame_gates))
        raise ConfigError(
            f"train.gate_lr is the rate of the temporal gates, which adapter.method={method.name} has "
            f"none of: use a frame-gated method ({gated}) or train.gate_lr=null"
        )
    try:
        checkpointed_towers(cfg.model.gradient_checkpointing)
    except ValueError as err:
        raise ConfigError(f"model.{err}") from None
    unknown_views = sorted(set(cfg.eval.controls) - set(CONTROLS))
    if unknown_views:
        raise ConfigError(
            f"eval.controls: unknown view(s) {unknown_views}; choose from {list(CONTROLS)} (or [])"
        )
    check_optimizer(cfg, ds)
    int8 = [name for name, fmt in formats.items() if fmt == "int8"]
    if stage == 3 and int8:
        keys = (
            ", ".join(f"model.quantization.{name}" for name in int8) if isinstance(quant, Mapping) else None
        )
        raise ConfigError(
            "ZeRO-3 cannot partition bitsandbytes int8 weights (Int8Params keep their own layout): "
            f"{keys or 'model.quantization'}=int8 with deepspeed.config={cfg.deepspeed.config} (ZeRO stage 3); "
            f"use nf4 or none for {keys or 'model.quantization'}, or a ZeRO-2 config"
        )
    if stage == 3 and held != {FULL_PRECISION} and "offload_param" in zero:
        raise ConfigError(
            "ZeRO-3 parameter offload moves the packed 4-bit weights without their quantization state: "
            "offload the optimizer only (ds_configs/zero3_offload.json)"
        )
    if method.step_update is not None and stage > 0:
        raise ConfigError(
            f"adapter.method={method.name} updates itself from the full gradients after every backward, "
            "which ZeRO stages 1-3 keep in their partitions: use deepspeed.config=ds_configs/zero0.json"
        )
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError("model.dtype=float16 needs a CUDA device; use float32 or bfloat16 here")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("model.dtype=bfloat16 but this GPU has no bf16 support: use float16 or auto")
    if cfg.selector.k > cfg.data.num_candidate_frames:
        raise ConfigError(
            f"selector.k={cfg.selector.k} frames cannot be chosen from "
            f"data.num_candidate_frames={cfg.data.num_candidate_frames}"
        )

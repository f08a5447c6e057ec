"""Refuse configurations that cannot work, before any weight is loaded.

A combination that fails deep inside DeepSpeed or bitsandbytes after minutes of loading (or,
worse, trains silently wrong) is caught here with a message that says what to change.
"""

from __future__ import annotations

from typing import Any

import torch

from models.adapters import FULL_PRECISION_METHODS, QUANTIZED_METHODS
from trainer.config import ConfigError, RunConfig
from trainer.ds_config import zero_stage

QUANTIZATIONS = ("nf4", "nf4-nodq", "int8", "none")
# What model.quantization=auto becomes for each adapter.method. prefix and adapter take any base; NF4
# is their default because they are compared with QLoRA at the same base memory. frozen (zero-shot)
# evaluates the base as it was trained: 16-bit.
METHOD_QUANTIZATION = {
    **{m: "nf4" for m in QUANTIZED_METHODS},
    "qlora8": "int8",
    **{m: "none" for m in FULL_PRECISION_METHODS},
    "frozen": "none",
    "prefix": "nf4",
    "adapter": "nf4",
    "adalora": "nf4",
}


def resolve_quantization(cfg: RunConfig) -> str:
    """model.quantization with "auto" replaced by the method's own; a contradiction is a ConfigError.

    The trainer writes the result back into the config before anything reads it, so the run config
    that is logged and saved next to the adapter names the real weight format.
    """
    quant, method = cfg.model.quantization, cfg.adapter.method
    if method not in METHOD_QUANTIZATION:
        raise ConfigError(
            f"adapter.method must be one of {', '.join(sorted(METHOD_QUANTIZATION))}; got {method!r}"
        )
    if quant == "auto":
        return METHOD_QUANTIZATION[method]
    if method == "qlora8" and quant != "int8":
        raise ConfigError(
            f"adapter.method=qlora8 is LoRA on an int8 base but model.quantization={quant}: "
            "set model.quantization=int8 or auto (or use adapter.method=qlora for NF4)"
        )
    return quant


def check_compatibility(cfg: RunConfig, ds: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None:
    """Raise ConfigError naming the keys of the first impossible combination found."""
    quant = cfg.model.quantization
    method = cfg.adapter.method
    stage = zero_stage(ds)
    zero = ds.get("zero_optimization", {})
    if quant not in QUANTIZATIONS:
        raise ConfigError(
            f"model.quantization must be auto or one of {', '.join(QUANTIZATIONS)} (auto is resolved by "
            f"trainer.compat.resolve_quantization before this check); got {quant!r}"
        )
    if method in QUANTIZED_METHODS and quant == "none":
        raise ConfigError(
            f"adapter.method={method} trains on a quantized base: set model.quantization=nf4 (or int8)"
        )
    if method in FULL_PRECISION_METHODS and quant != "none":
        hint = "use adapter.method=qlora" if method == "lora" else "set model.quantization=none"
        raise ConfigError(
            f"adapter.method={method} needs a 16/32-bit base but model.quantization={quant}: {hint}"
        )
    if stage == 3 and quant == "int8":
        raise ConfigError(
            "ZeRO-3 cannot partition bitsandbytes int8 weights (Int8Params keep their own layout): "
            "use model.quantization=nf4 or a ZeRO-2 config"
        )
    if stage == 3 and quant != "none" and "offload_param" in zero:
        raise ConfigError(
            "ZeRO-3 parameter offload moves the packed 4-bit weights without their quantization state: "
            "offload the optimizer only (ds_configs/zero3_offload.json)"
        )
    if method == "adalora" and stage > 0:
        raise ConfigError(
            "adapter.method=adalora reallocates ranks from the full gradients, which ZeRO stages 1-3 keep "
            "in their partitions: use deepspeed.config=ds_configs/zero0.json"
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

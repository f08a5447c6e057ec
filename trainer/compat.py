"""Refuse configurations that cannot work, before any weight is loaded.

A combination that fails deep inside DeepSpeed or bitsandbytes after minutes of loading (or,
worse, trains silently wrong) is caught here with a message that says what to change.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.config import ConfigError, RunConfig
from trainer.ds_config import zero_stage

QUANTIZATIONS = ("nf4", "nf4-nodq", "int8", "none")
# Methods that train adapters on a quantized base vs on a 16/32-bit base.
QUANTIZED_METHODS = {"qlora", "temporal_qlora", "ranked_qlora", "temporal_ranked_qlora"}
FULL_PRECISION_METHODS = {"lora", "temporal_lora", "full"}


def check_compatibility(cfg: RunConfig, ds: dict[str, Any], device: torch.device, dtype: torch.dtype) -> None:
    """Raise ConfigError naming the keys of the first impossible combination found."""
    quant = cfg.model.quantization
    method = cfg.adapter.method
    stage = zero_stage(ds)
    zero = ds.get("zero_optimization", {})
    if quant not in QUANTIZATIONS:
        raise ConfigError(f"model.quantization must be one of {', '.join(QUANTIZATIONS)}; got {quant!r}")
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

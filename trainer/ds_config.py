"""Fill a DeepSpeed JSON's ``"auto"`` values from the run configuration, in one place.

The JSON files in ``ds_configs/`` describe *how* to shard and offload; batch sizes, learning
rate, schedule length and precision come from the run config so that they are never written
twice. A value that is not ``"auto"`` in the JSON is left as the user wrote it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from trainer.config import ConfigError, RunConfig


def load_ds_config(
    cfg: RunConfig, world_size: int, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """Read ``cfg.deepspeed.config`` and return it with every ``"auto"`` resolved."""
    path = Path(cfg.deepspeed.config)
    if not path.is_file():
        raise ConfigError(f"deepspeed.config: file not found: {path}")
    ds = json.loads(path.read_text())
    train = cfg.train
    values = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.micro_batch_size * train.grad_accum * world_size,
        "gradient_clipping": train.grad_clip,
        "optimizer.params.lr": train.lr,
        "optimizer.params.weight_decay": train.weight_decay,
        "bf16.enabled": dtype == torch.bfloat16,
        "fp16.enabled": dtype == torch.float16,
        # Pinned host memory only helps (and only exists) with a CUDA device.
        "zero_optimization.offload_optimizer.pin_memory": device.type == "cuda",
        "zero_optimization.offload_param.pin_memory": device.type == "cuda",
    }
    if ds.get("scheduler", {}).get("type") == "auto":
        ds["scheduler"] = scheduler_block(
            train.schedule, train.lr, train.steps, train.warmup_steps, train.min_lr_ratio
        )
    _fill_auto(ds, values, prefix="")
    leftover = [key for key in _find_auto(ds) if key not in BUCKET_KEYS]
    if leftover:
        raise ConfigError(f'{path}: no rule fills these "auto" values: {", ".join(leftover)}')
    return ds


# ZeRO's gradient buckets, in elements, as "auto": sized to what is trained (`size_buckets`), which
# only the built model knows. Under contiguous_gradients ZeRO allocates a whole bucket each step
# (fp32 on bf16 runs): at DeepSpeed's 5e7 that is 190 MiB of device memory for an adapter of 14.7 M
# parameters (the 1b preset's QLoRA) that fills 56 MiB of it.
BUCKET_KEYS = ("zero_optimization.reduce_bucket_size", "zero_optimization.allgather_bucket_size")
MAX_BUCKET_ELEMENTS = 50_000_000
# ZeRO-2 asserts the allgather bucket is a multiple of its NCCL start alignment (2 elements); a
# multiple of 256 satisfies that and any alignment up to 512 bytes.
BUCKET_ALIGNMENT = 256


def size_buckets(ds: dict[str, Any], trainable_elements: int) -> dict[str, Any]:
    """`ds` with its "auto" bucket sizes (`BUCKET_KEYS`) filled: the trainable parameters' element
    count rounded up to a multiple of `BUCKET_ALIGNMENT`, at most `MAX_BUCKET_ELEMENTS` (the size
    the ds_configs held before, for full fine-tuning)."""
    aligned = math.ceil(max(1, int(trainable_elements)) / BUCKET_ALIGNMENT) * BUCKET_ALIGNMENT
    size = min(aligned, MAX_BUCKET_ELEMENTS)
    sized = json.loads(json.dumps(ds))
    _fill_auto(sized, dict.fromkeys(BUCKET_KEYS, size), prefix="")
    return sized


def scheduler_block(schedule: str, lr: float, steps: int, warmup: int, min_lr_ratio: float) -> dict[str, Any]:
    """DeepSpeed's scheduler entry for ``train.schedule``: a linear warm-up, then the decay.

    On an engine that `start_schedule` has started, step s (1-based) of a ``warmup``-step warm-up
    trains at lr·s/warmup: the first step already trains; ``warmup`` 0 or 1 trains at the full rate
    from step 1. ``constant`` and ``linear`` are at lr from step ``warmup`` on; ``linear`` then
    decays towards 0 (lr/(steps+1-max(warmup, 2)) at the last step). ``cosine`` starts its decay at
    step ``warmup`` (DeepSpeed's cosine takes its first decay iteration at progress
    1/(steps+1-warmup): 0.99999·lr at 600 steps, warm-up 5) and ends at lr·min_lr_ratio on the last
    step. transformers' get_*_schedule_with_warmup give step 1 lr 0 and the peak at step warmup+1.

    How: DeepSpeed's iteration k is the rate after k steps of its ramp (iteration 0 is the ramp's
    start, lr 0). `start_schedule` puts the scheduler at iteration 1 before the first step, so step s
    trains at iteration s, and the decays get one step more so that the last step trains at their
    end. DeepSpeed ramps over at least 2 iterations; a 0- or 1-step warm-up is its 2-iteration log
    ramp, log(k+1)/log(2), which is 1 from iteration 1 on.
    """
    if warmup >= 2:
        ramp: dict[str, Any] = {"warmup_num_steps": warmup, "warmup_type": "linear"}
    else:
        ramp = {"warmup_num_steps": 2, "warmup_type": "log"}
    if schedule == "cosine":
        params = {
            "total_num_steps": steps + 1,
            **ramp,
            "warmup_min_ratio": 0.0,
            "cos_min_ratio": min_lr_ratio,
        }
        return {"type": "WarmupCosineLR", "params": params}
    # WarmupDecayLR decays towards warmup_min_lr: the ramp starts where the decay ends, at 0.
    warmup_params = {"warmup_min_lr": 0.0, "warmup_max_lr": lr, **ramp}
    if schedule == "linear":
        return {"type": "WarmupDecayLR", "params": {"total_num_steps": steps + 1, **warmup_params}}
    if schedule == "constant":
        return {"type": "WarmupLR", "params": warmup_params}
    raise ConfigError(f"train.schedule must be one of cosine, linear, constant; got {schedule!r}")


# DeepSpeed's schedulers that `scheduler_block` writes (and a JSON may name): each sets the rate of
# iteration last_batch_iteration, which is -1 until its first step.
WARMUP_SCHEDULERS = ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR")


def start_schedule(scheduler: Any) -> None:
    """Put a fresh DeepSpeed warm-up scheduler at iteration 1, so that step s trains at iteration s.

    DeepSpeed gives the first step the rate from before iteration 0 (WarmupCosineLR: 0 whatever
    its warmup_min_ratio; WarmupLR / WarmupDecayLR: warmup_min_lr) and step s that of iteration
    s-2, so the ramp's start was trained at twice, at lr 0 in `scheduler_block`'s schedules. A
    resumed run then loads the checkpoint's iteration over this one. Other schedulers are left alone.
    """
    if type(scheduler).__name__ in WARMUP_SCHEDULERS and scheduler.last_batch_iteration == -1:
        scheduler.step(1)


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def _fill_auto(node: dict[str, Any], values: dict[str, Any], prefix: str) -> None:
    for key, value in node.items():
        dotted = prefix + key
        if isinstance(value, dict):
            _fill_auto(value, values, dotted + ".")
        elif value == "auto" and dotted in values:
            node[key] = values[dotted]


def _find_auto(node: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, value in node.items():
        if isinstance(value, dict):
            found += _find_auto(value, f"{prefix}{key}.")
        elif value == "auto":
            found.append(prefix + key)
    return found

"""The run's optimizer (`train.optimizer`): DeepSpeed's AdamW from the JSON, or a bitsandbytes one.

The names are those of the HF Trainer's ``optim``:

- ``adamw``: the DeepSpeed JSON's ``optimizer`` section, as before (DeepSpeedCPUAdam with optimizer
  offload, DeepSpeed's FusedAdam otherwise);
- ``adamw_8bit``, ``paged_adamw``, ``paged_adamw_8bit``: ``bnb.optim.AdamW8bit`` / ``PagedAdamW`` /
  ``PagedAdamW8bit``, built here over the same parameter groups with the JSON's betas, eps, lr and
  weight decay, and handed to ``deepspeed.initialize`` as a client optimizer; the JSON's
  ``optimizer`` section is dropped so that DeepSpeed does not build its own as well.

8-bit keeps each Adam moment as uint8 codes with one fp32 absmax per 256-element block (~2 B per
trained parameter instead of 8; tensors under bitsandbytes' ``min_8bit_size``, 4096 elements, keep
fp32 moments). Paged state lives in CUDA unified memory, which the driver moves to the host when
the GPU runs short; on CPU bitsandbytes warns "Paged optimizers are not supported on CPU. Falling
back to non-paged optimizer behavior." and allocates plain tensors.

Everything else works as with DeepSpeed's AdamW: the scheduler of the JSON is built by DeepSpeed on
whichever optimizer it wraps, and the optimizer's ``state_dict`` (bitsandbytes packs its quantization
state into it) is saved and loaded by DeepSpeed's checkpoints. Loaded state is ordinary device
memory, not paged: bitsandbytes pages only the state it creates itself.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.config import ConfigError, RunConfig, TrainConfig
from trainer.ds_config import zero_stage

# train.optimizer → the bitsandbytes class (None: DeepSpeed's own from the JSON).
OPTIMIZERS: dict[str, str | None] = {
    "adamw": None,
    "adamw_8bit": "AdamW8bit",
    "paged_adamw": "PagedAdamW",
    "paged_adamw_8bit": "PagedAdamW8bit",
}
# torch's and DeepSpeed's AdamW defaults, for a JSON without an optimizer section.
DEFAULT_BETAS = (0.9, 0.999)
DEFAULT_EPS = 1e-8


def check_optimizer(cfg: RunConfig, ds: dict[str, Any]) -> None:
    """Raise ConfigError for an unknown ``train.optimizer`` or one the DeepSpeed config cannot run."""
    name = cfg.train.optimizer
    if name not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
    if OPTIMIZERS[name] is None:
        return
    offload = ds.get("zero_optimization", {}).get("offload_optimizer")
    if offload is not None and offload.get("device", "none") != "none":
        # ZeRO-Offload runs the optimizer step on the host with its own CPU Adam; DeepSpeed refuses
        # a client optimizer there unless zero_force_ds_cpu_optimizer=false, and then bitsandbytes
        # would step fp32 host partitions where paging means nothing.
        raise ConfigError(
            f"train.optimizer={name} (bitsandbytes) cannot run under "
            f"zero_optimization.offload_optimizer (device={offload.get('device')}) of "
            f"deepspeed.config={cfg.deepspeed.config}: use a config without optimizer offload "
            "(ds_configs/zero2.json, zero3.json, zero0.json) or train.optimizer=adamw"
        )
    section = ds.get("optimizer")
    if section is not None and str(section.get("type", "")).lower() != "adamw":
        raise ConfigError(
            f"train.optimizer={name} replaces an AdamW, but the optimizer section of "
            f"deepspeed.config={cfg.deepspeed.config} is {section.get('type')!r}: set its type to AdamW "
            "or use train.optimizer=adamw"
        )


def client_optimizer(
    train: TrainConfig, model_parameters: list[torch.nn.Parameter] | list[dict[str, Any]], ds: dict[str, Any]
) -> tuple[torch.optim.Optimizer | None, dict[str, Any]]:
    """The optimizer to hand to ``deepspeed.initialize`` and the DeepSpeed config to go with it.

    Args:
        train: the run's train section; `train.optimizer` checked by `check_optimizer`.
        model_parameters: the trainable parameters, or `trainer.param_groups` dicts with their "lr".
        ds: the filled DeepSpeed config (`trainer.ds_config.load_ds_config`).

    Returns:
        (None, ``ds``) for ``adamw``; otherwise the bitsandbytes optimizer with the lr, betas, eps
        and weight decay of the JSON's optimizer section (without one: train.lr, train.weight_decay
        and AdamW's defaults), and ``ds`` without its optimizer section and, under ZeRO, with
        ``zero_allow_untested_optimizer`` (DeepSpeed's ZeRO wrappers accept only the optimizers they
        list unless told so).
    """
    class_name = OPTIMIZERS[train.optimizer]
    if class_name is None:
        return None, ds
    import bitsandbytes as bnb

    params = ds.get("optimizer", {}).get("params", {})
    optimizer = getattr(bnb.optim, class_name)(
        model_parameters,
        lr=params.get("lr", train.lr),
        betas=tuple(params.get("betas", DEFAULT_BETAS)),
        eps=params.get("eps", DEFAULT_EPS),
        # Always given: bitsandbytes' own default is 1e-2, DeepSpeed's AdamW here gets train.weight_decay.
        weight_decay=params.get("weight_decay", train.weight_decay),
    )
    ds = {key: value for key, value in ds.items() if key != "optimizer"}
    if zero_stage(ds) > 0:
        ds["zero_allow_untested_optimizer"] = True
    return optimizer, ds

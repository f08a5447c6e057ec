"""Building a run's parts from its config: what happens before the process group exists, the frame
selector, the adapter's keywords, the training stream and the DeepSpeed engine.

The `Trainer` owns the parts once built; `python -m trainer.evaluation` builds the same ones for a
trained adapter. Nothing here keeps state.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import deepspeed
import torch

from data.decoders import check_decoder
from data.frame_selector import FrameSelector
from data.loader import build_loader
from data.pipeline import VideoDataPipeline, build_dataset
from models.methods import adapter_method
from models.parameters import trainable_parameter_count
from models.processor import VideoLlamaProcessor
from trainer.assets import Asset, resolve_assets
from trainer.caption_language import check_language_key
from trainer.compat import resolve_quantization
from trainer.config import ConfigError, RunConfig
from trainer.ds_config import size_buckets, start_schedule
from trainer.jit_ops import check_jit_locks
from trainer.optimizers import client_optimizer
from trainer.param_groups import learning_rate_groups, scaled_schedule
from trainer.threads import ThreadSetting, apply_threads, local_world_size, resolve_threads


def before_process_group(
    cfg: RunConfig, splits: tuple[str, ...] = ("train", "eval", "test")
) -> tuple[ThreadSetting, list[Asset]]:
    """Everything a rank does before the process group and the model, in the order it must happen.

    1. Intra-op threads, before any parallel work (model load, quantization) starts a team.
    2. ``model.quantization=auto`` becomes the method's weight format, before anything reads it.
    3. The paths the config names are checked (a missing one stops the run here) and its null ones
       resolved to generated assets; the missing ones are returned for rank 0 to write.
    4. A DeepSpeed JIT build's stale lock is named, not waited on: `init_distributed` loads the
       shm op next.
    5. ``data.caption_language`` has the form of a language code (what the shards hold is checked
       once the processor is loaded, `trainer.caption_language`).
    6. ``data.decoder`` names a decoder that is installed, ``data.decode_timeout_s`` is not negative.
    """
    threads = resolve_threads(
        cfg.train.num_threads, num_workers=cfg.data.num_workers, local_world_size=local_world_size()
    )
    apply_threads(threads)
    cfg.model.quantization = resolve_quantization(cfg)
    missing_assets = resolve_assets(cfg, splits)
    check_jit_locks(cfg.deepspeed.config)
    check_language_key(cfg)
    check_decoder_keys(cfg)
    return threads, missing_assets


def check_decoder_keys(cfg: RunConfig) -> None:
    """``data.decoder`` can be imported and ``data.decode_timeout_s`` is null or >= 0 (before anything loads)."""
    try:
        check_decoder(cfg.data.decoder)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.data.decode_timeout_s is not None and cfg.data.decode_timeout_s < 0:
        raise ConfigError(
            f"data.decode_timeout_s must be null, 0 (no limit) or > 0 seconds, got {cfg.data.decode_timeout_s}"
        )


def build_selector(cfg: RunConfig) -> FrameSelector:
    """The run's frame selector (it works on the device of the frames it is given)."""
    sel = cfg.selector
    return FrameSelector(
        sel.k, sel.policy, sel.bits, weights=tuple(sel.weights), coverage=sel.coverage, seed=sel.seed
    )


def train_dataset(cfg: RunConfig, processor: VideoLlamaProcessor, **options: Any) -> VideoDataPipeline:
    """The training shards, decoded and tokenized as the model needs them (``options``: ordering)."""
    return build_dataset(
        cfg.data.train_shards,
        num_frames=cfg.data.num_candidate_frames,
        frame_size=(cfg.data.frame_size, cfg.data.frame_size),
        batch_size=cfg.train.micro_batch_size,
        text_fn=processor.training_example,
        pad_token_id=processor.tokenizer.pad_token_id,
        sample_fps=cfg.data.sample_fps,
        caption_language=cfg.data.caption_language,
        decoder=cfg.data.decoder,
        decode_timeout_s=cfg.data.decode_timeout_s,
        **options,
    )


def adapter_options(
    cfg: RunConfig, calibration: Callable[[int], list[dict[str, torch.Tensor]]]
) -> dict[str, Any]:
    """``apply_adapter`` keywords from the ``adapter`` section; ``calibration(count)`` gives the
    rank allocators their batches (called only for a budget allocation)."""
    a = cfg.adapter
    kwargs: dict[str, Any] = {
        "r": a.r,
        "alpha": a.alpha,
        "rslora": a.rslora,
        "dropout": a.dropout,
        "target_modules": a.target_modules,
        "modules_to_save": a.modules_to_save,
        "gradient_checkpointing": cfg.model.gradient_checkpointing,
        "ranks": a.ranks,
        "alphas": a.alphas,
        "allocation": a.allocation,
        "budget": a.budget,
        "group_patterns": a.group_patterns,
        "total_steps": cfg.train.steps,
    }
    # The sections every config holds (gate, adalora, ...) go only to the methods that read them.
    for key in adapter_method(a.method).settings:
        value = getattr(a, key)
        kwargs[key] = _set_fields(value) if dataclasses.is_dataclass(value) else value
    if a.placement is not None:
        kwargs["placement"] = a.placement
    if a.allocation != "static":
        kwargs["calibration_batches"] = calibration(a.calibration_batches)
    return kwargs


def analytic_memory(cfg: RunConfig, allocation: dict[str, Any] | None) -> dict[str, float]:
    """The run's method at ``tracking.analytic_memory_preset`` (`models.train_state`), as GiB metrics
    ``memory/analytic_<preset>_{frozen_weights,trainable_weights,gradients,optimizer,train_state}_gib``;
    {} when the preset is null. A budget allocation is counted with the ranks it chose (``allocation``,
    the adapter's report)."""
    preset = cfg.tracking.analytic_memory_preset
    if preset is None:
        return {}
    from models.train_state import train_state

    options = adapter_options(cfg, lambda count: [])
    options.pop("calibration_batches", None)
    if cfg.adapter.allocation != "static":
        options.update(
            allocation="static", budget=None, ranks={g: v["rank"] for g, v in allocation["groups"].items()}
        )
    state = train_state(preset, cfg.adapter.method, options, quantization=cfg.model.quantization)
    names = {
        "frozen_weights": "frozen_weight_bytes",
        "trainable_weights": "trainable_weight_bytes",
        "gradients": "gradient_bytes",
        "optimizer": "optimizer_bytes",
        "train_state": "total_bytes",
    }
    return {f"memory/analytic_{preset}_{name}_gib": state[key] / 2**30 for name, key in names.items()}


def calibration_batches(
    cfg: RunConfig,
    processor: VideoLlamaProcessor,
    selector: FrameSelector,
    device: torch.device,
    dtype: torch.dtype,
    count: int,
) -> list[dict[str, torch.Tensor]]:
    """The first ``count`` training batches as model inputs (frames selected), for the rank allocators."""
    batches = []
    for batch in itertools.islice(build_loader(train_dataset(cfg, processor), 0), count):
        batch = batch.to(device)
        selected = selector(batch.frames, dtype=dtype)
        batches.append(
            {
                "pixel_values": selected.frames,
                "frame_scores": selected.scores,
                "input_ids": batch.input_ids,
                "attention_mask": batch.attention_mask,
                "labels": batch.labels,
            }
        )
    return batches


def build_engine(model: Any, cfg: RunConfig, ds_config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``deepspeed.initialize`` over the trainable parameters, in per-tower learning-rate groups when
    the ViT / aligner / gates have rates of their own, with `train.optimizer`'s bitsandbytes optimizer as the
    client optimizer when it names one. Returns (engine, the DeepSpeed config it got)."""
    train = cfg.train
    trainable = learning_rate_groups(model, train.lr, train.vit_lr, train.aligner_lr, train.gate_lr)
    if trainable and isinstance(trainable[0], dict):
        ds_config = scaled_schedule(ds_config, [g["lr"] for g in trainable], train.lr)
    ds_config = size_buckets(ds_config, trainable_parameter_count(model)[0])
    optimizer = None
    if trainable:
        optimizer, ds_config = client_optimizer(train, trainable, ds_config)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=trainable or None,
        optimizer=optimizer,
        # Nothing to train (frozen, the zero-shot baseline): an engine without optimizer, which
        # DeepSpeed refuses to build on an empty parameter list.
        config=ds_config if trainable else _without_optimizer(ds_config),
    )
    start_schedule(engine.lr_scheduler)  # the first step trains at the schedule's first rate, not 0
    engine.train()
    return engine, ds_config


def _without_optimizer(ds_config: dict[str, Any]) -> dict[str, Any]:
    """The DeepSpeed config of a model that only runs forward: no optimizer, scheduler or ZeRO."""
    dropped = ("optimizer", "scheduler", "zero_optimization")
    return {k: v for k, v in ds_config.items() if k not in dropped}


def _set_fields(section: Any) -> dict[str, Any]:
    """A config dataclass as a dict without its unset (None) fields, which keep the callee's defaults."""
    return {k: v for k, v in dataclasses.asdict(section).items() if v is not None}

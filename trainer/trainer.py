"""The training loop: one object that owns every piece of mutable state of a run.

``Trainer(cfg)`` builds the run (process group, assets, model + adapter, DeepSpeed engine,
data, tracker) and resumes from the latest checkpoint when there is one; :meth:`fit` trains
until the step budget or a preemption signal; :meth:`evaluate` captions held-out clips and
scores them; :meth:`close` writes ``summary.json`` and ends the MLflow run. ``train.py`` only
calls these.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import deepspeed
import numpy as np
import torch
import torch.distributed as tdist
from tqdm import tqdm

from data.batch import VideoBatch
from data.frame_selector import FrameSelector
from data.loader import build_loader
from data.pipeline import VideoDataPipeline, build_dataset
from models.adapters import apply_adapter, trainable_parameter_count
from models.loading import load_model
from models.methods import adapter_method, uses_frame_gates
from models.processor import VideoLlamaProcessor
from models.retrieval_head import caption_tokens
from models.temporal_lora import gate_summary
from trainer import checkpoint
from trainer.assets import generate, resolve_assets
from trainer.compat import check_compatibility, resolve_quantization
from trainer.config import RunConfig, changed_settings
from trainer.distributed import all_reduce_sum, barrier, init_distributed, resolve_dtype
from trainer.ds_config import load_ds_config, zero_stage
from trainer.evaluation.eval_pass import evaluate as run_evaluation
from trainer.flops import count_flops, peak_tflops
from trainer.jit_ops import check_jit_locks
from trainer.metrics import PhaseTimer, ThroughputMeter, peak_memory
from trainer.param_groups import learning_rate_groups, scaled_schedule
from trainer.preemption import PreemptionHandler
from trainer.system_info import device_name, git_commit, library_versions
from trainer.threads import apply_threads, local_world_size, resolve_threads
from trainer.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Too many consecutive steps had a NaN/inf loss."""


class Trainer:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        # First, before any parallel work (model load, quantization): one intra-op team per rank
        # that leaves the rank's data workers their cores (trainer/threads.py).
        self.threads = resolve_threads(
            cfg.train.num_threads, num_workers=cfg.data.num_workers, local_world_size=local_world_size()
        )
        apply_threads(self.threads)
        # Before anything reads it: "auto" becomes the method's weight format (qlora8 → int8, ...).
        cfg.model.quantization = resolve_quantization(cfg)
        # Before anything loads: a missing path the config names stops the run here.
        missing_assets = resolve_assets(cfg)
        # Before init_distributed, which loads DeepSpeed's shm op: a JIT build's stale lock is named,
        # not waited on forever (nothing to check where set-up prebuilt the ops).
        check_jit_locks(cfg.deepspeed.config)
        self.dist = init_distributed(cfg.deepspeed.dist_backend)
        self.device = self.dist.device
        self.dtype = resolve_dtype(cfg.model.dtype, self.device)
        self.ds_config = load_ds_config(cfg, self.dist.world_size, self.device, self.dtype)
        check_compatibility(cfg, self.ds_config, self.device, self.dtype)
        self.output_dir = Path(cfg.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.adapter_dir = self.output_dir / "adapter"

        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            generate(missing_assets)
        barrier()

        # Same seed on every rank: the adapter's random init must be identical everywhere.
        _seed_everything(cfg.seed)
        self.processor = VideoLlamaProcessor.from_pretrained(cfg.model.name_or_path)
        model = load_model(
            cfg.model.name_or_path,
            quantization=cfg.model.quantization,
            compute_dtype=self.dtype,
            device=self.device,
            # The adapter then trains the head and saves it (models.retrieval_head).
            retrieval_dim=cfg.train.retrieval_dim,
        )
        sel = cfg.selector
        self.selector = FrameSelector(
            sel.k, sel.policy, sel.bits, weights=tuple(sel.weights), coverage=sel.coverage, seed=sel.seed
        )
        model = apply_adapter(model, cfg.adapter.method, **self._adapter_kwargs(model))
        self.adapter_allocation: dict[str, Any] | None = getattr(model, "adapter_allocation", None)
        self.trainable_params, self.total_params = trainable_parameter_count(model)
        train = cfg.train
        trainable = learning_rate_groups(model, train.lr, train.vit_lr, train.aligner_lr)
        if trainable and isinstance(trainable[0], dict):
            self.ds_config = scaled_schedule(self.ds_config, [g["lr"] for g in trainable], train.lr)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=trainable or None,
            # Nothing to train (frozen, the zero-shot baseline): an engine without optimizer, which
            # DeepSpeed refuses to build on an empty parameter list.
            config=self.ds_config if trainable else _without_optimizer(self.ds_config),
        )
        self.engine.train()
        self.train_loader = build_loader(
            self._train_dataset(
                shuffle_buffer=cfg.data.shuffle_buffer,
                seed=cfg.seed,
                resampled=cfg.data.resampled,
                epoch_samples=cfg.data.epoch_samples,
            ),
            cfg.data.num_workers,
        )

        # Mutable run state: everything below goes into the checkpoint's client_state.
        self.step = 0
        self.samples_seen = 0
        self.bad_samples: Counter[str] = Counter()
        self.nonfinite_steps = 0
        self.losses: list[float] = []
        self.contrastive_losses: list[float] = []  # this rank's InfoNCE values since the last log
        self.mlflow_run_id: str | None = None

        self.eval_scores: dict[str, float] = {}
        self.run_throughput: dict[str, float] = {}
        self.flops_per_step: int | None = None
        self.preempted = False
        self.nonfinite_in_a_row = 0
        self.meter = ThroughputMeter()  # per logging window
        self.run_meter = ThroughputMeter()  # this process's whole training, evaluation left out
        self.timer = PhaseTimer(self.device)
        self.started_at = time.time()

        resume_from = self._resume_source()
        if resume_from is not None:
            self._restore(checkpoint.load_checkpoint(self.engine, *resume_from))
        self.tracker = self._start_tracking() if self.dist.is_main else NullTracker()

    def _group_learning_rates(self) -> dict[str, float]:
        """train/lr_<group> of each named group when the ViT / aligner have their own rates."""
        optimizer = self.engine.optimizer
        groups = optimizer.param_groups if optimizer is not None else []
        return {f"train/lr_{g['name']}": g["lr"] for g in groups if "name" in g}

    def _adapter_kwargs(self, model: Any) -> dict[str, Any]:
        """``apply_adapter`` keywords from the ``adapter`` config section."""
        cfg, a = self.cfg, self.cfg.adapter
        kwargs: dict[str, Any] = {
            "r": a.r,
            "alpha": a.alpha,
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
            kwargs["calibration_batches"] = self._calibration_batches(model, a.calibration_batches)
        return kwargs

    def _calibration_batches(self, model: Any, count: int) -> list[dict[str, torch.Tensor]]:
        """The first ``count`` training batches as model inputs, for the rank allocators."""
        batches = []
        for batch in itertools.islice(build_loader(self._train_dataset(), 0), count):
            batch = batch.to(self.device)
            selected = self.selector(batch.frames, dtype=self.dtype)
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

    def _train_dataset(self, **options: Any) -> VideoDataPipeline:
        """The training shards, decoded and tokenized as the model needs them (``options``: ordering)."""
        cfg = self.cfg
        return build_dataset(
            cfg.data.train_shards,
            num_frames=cfg.data.num_candidate_frames,
            frame_size=(cfg.data.frame_size, cfg.data.frame_size),
            batch_size=cfg.train.micro_batch_size,
            text_fn=self.processor.training_example,
            pad_token_id=self.processor.tokenizer.pad_token_id,
            sample_fps=cfg.data.sample_fps,
            **options,
        )

    # ------------------------------------------------------------------ training
    def fit(self) -> None:
        """Train until ``train.steps`` optimizer steps are done or a stop signal arrives."""
        cfg = self.cfg.train
        if self.trainable_params == 0:
            log.warning(
                "adapter.method=%s trains nothing: no steps, evaluation only", self.cfg.adapter.method
            )
            return
        batches = self._batches()
        bar = tqdm(
            total=cfg.steps, initial=self.step, desc="train", disable=not self.dist.is_main, unit="step"
        )
        self.selector.train()
        self.run_meter.restart()
        with PreemptionHandler() as preemption:
            while self.step < cfg.steps:
                self.train_step(batches)
                bar.update(1)
                bar.set_postfix(loss=f"{self.losses[-1]:.3f}" if self.losses else "-")
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    start = time.perf_counter()
                    self.evaluate()
                    paused = time.perf_counter() - start
                    for meter in (self.meter, self.run_meter):  # evaluation time is not training time
                        meter.exclude(paused)
                if self._agree(preemption.requested):
                    self.preempted = True
                    log.warning(
                        "stopping at step %d on request; the run resumes from this checkpoint", self.step
                    )
                    break
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save()
        bar.close()
        self._log_run_throughput()
        self.save()

    def _log_run_throughput(self) -> None:
        """Rates over this process's whole training: every rank's work over this rank's training time
        (evaluation pauses left out), in summary.json and as ``throughput/run_*`` / ``time/run_*``.

        A mean of the per-window rates would weigh a short slow window like a long fast one (the
        demo's read 51 samples/s next to 0.45 s per step of 8); totals over time cannot.
        """
        meter, steps = self.run_meter, self.run_meter.steps
        if steps == 0:
            return
        meter.samples, meter.frames, meter.tokens = (
            int(c) for c in all_reduce_sum([meter.samples, meter.frames, meter.tokens])
        )
        rates = meter.read()
        self.run_throughput = {**rates, "time/train_s": rates["time/step_s"] * steps}
        self.tracker.log(
            {k.replace("/", "/run_", 1): v for k, v in self.run_throughput.items()}, step=self.step
        )

    def train_step(self, batches: Iterator[VideoBatch]) -> float | None:
        """One optimizer step (``grad_accum`` micro-batches from ``batches``) and its metrics.

        Returns this rank's mean loss, or None when every micro-batch was NaN/inf and skipped (a
        skipped step still counts towards ``train.steps``; the learning-rate schedule does not move).
        """
        cfg = self.cfg.train
        loss = self._optimizer_step(batches)
        self.step += 1
        self.nonfinite_in_a_row = 0 if loss is not None else self.nonfinite_in_a_row + 1
        if self.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self.nonfinite_in_a_row} steps in a row had a NaN/inf loss (last at step {self.step}); "
                "lower train.lr, check the data, or raise train.max_nonfinite_steps"
            )
        if self.step % cfg.log_every == 0 or self.step == cfg.steps:
            self._log_step(loss)
        return loss

    def _optimizer_step(self, batches: Iterator[VideoBatch]) -> float | None:
        """``grad_accum`` micro-batches and one update. Returns the mean loss, None if it was skipped.

        A micro-batch whose loss is NaN/inf on any rank is skipped on every rank (no backward), so
        the ranks stay in step; the update then uses the micro-batches that were finite.
        """
        losses = []
        for _ in range(self.cfg.train.grad_accum):
            t0 = time.perf_counter()
            batch = next(batches).to(self.device)
            wait = time.perf_counter() - t0
            self.samples_seen += batch.batch_size
            self.bad_samples.update(batch.bad_samples)
            for meter in (self.meter, self.run_meter):
                meter.add(
                    batch.batch_size,
                    batch.batch_size * self.cfg.selector.k,
                    int(batch.attention_mask.sum()),
                    wait,
                )
            if self.cfg.train.count_flops and self.flops_per_step is None:
                # Counted once: FlopCounterMode slows the step it watches.
                flops, loss = count_flops(partial(self._forward_backward, batch))
                self.flops_per_step = flops * self.cfg.train.grad_accum
            else:
                loss = self._forward_backward(batch)
            losses.append(loss)
        self.meter.end_step()
        self.run_meter.end_step()
        finite = [x for x in losses if x is not None]
        if not finite:
            self.nonfinite_steps += 1
            return None
        return sum(finite) / len(finite)

    def _forward_backward(self, batch: VideoBatch) -> float | None:
        start = self.timer.start()
        # Only the temporal adapters' gates read the frame scores; other methods skip computing them.
        needs_scores = uses_frame_gates(self.cfg.adapter.method)
        selected = self.selector(batch.frames, dtype=self.dtype, with_scores=needs_scores)
        weight = self.cfg.train.contrastive_weight
        text = {}
        if weight > 0:  # the caption alone, for the retrieval head's text side
            ids, mask = caption_tokens(batch.input_ids, batch.labels, self.processor.tokenizer.pad_token_id)
            text = {"text_input_ids": ids, "text_attention_mask": mask}
        out = self.engine(
            pixel_values=selected.frames,
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            labels=batch.labels,
            frame_scores=selected.scores,
            **text,
        )
        self.timer.stop("forward", start)
        loss = out.loss
        if weight > 0:
            self.contrastive_losses.append(out.contrastive_loss.item())
            loss = loss + weight * out.contrastive_loss
        if self._agree(not bool(torch.isfinite(loss.detach()))):
            return None
        start = self.timer.start()
        self.engine.backward(loss)
        self.timer.stop("backward", start)
        start = self.timer.start()
        step_update = adapter_method(self.cfg.adapter.method).step_update
        if step_update is not None and self.engine.is_gradient_accumulation_boundary():
            step_update(self.engine.module, self.step)  # reads .grad: before the step clears it
        self.engine.step()
        self.timer.stop("optimizer", start)
        return loss.item()

    def _agree(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any rank (one scalar all-reduce)."""
        if self.dist.world_size == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device if tdist.get_backend() == "nccl" else "cpu")
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item())

    def _batches(self) -> Iterator[VideoBatch]:
        """Endless stream of training batches; the loader starts a new data epoch after each pass."""
        while True:
            yielded = False
            for batch in self.train_loader:
                yielded = True
                yield batch
            if not yielded:
                raise RuntimeError(f"no training samples could be read from {self.cfg.data.train_shards}")

    @property
    def data_epoch(self) -> int:
        return self.train_loader.state.epoch

    def _log_step(self, local_loss: float | None) -> None:
        world = self.dist.world_size
        loss_sum, n_finite, *counts = all_reduce_sum(
            [
                local_loss or 0.0,
                float(local_loss is not None),
                self.meter.samples,
                self.meter.frames,
                self.meter.tokens,
            ]
        )
        # Rates use global counts: every rank's work over this rank's wall time.
        self.meter.samples, self.meter.frames, self.meter.tokens = (int(c) for c in counts)
        rates = self.meter.read()
        metrics: dict[str, float] = {
            "train/lr": self.engine.get_lr()[0],
            **self._group_learning_rates(),
            "train/samples_seen": self.samples_seen * world,
            "train/nonfinite_steps": self.nonfinite_steps,
            **rates,
            **self.timer.read(),
            **peak_memory(self.device),
            **{f"data/bad_samples_{reason}": n for reason, n in self.bad_samples.items()},
        }
        if uses_frame_gates(self.cfg.adapter.method):
            metrics.update(gate_summary(self.engine.module))
        if self.contrastive_losses:
            metrics["train/contrastive_loss"] = sum(self.contrastive_losses) / len(self.contrastive_losses)
            self.contrastive_losses = []
        if n_finite:
            metrics["train/loss"] = loss_sum / n_finite
            self.losses.append(metrics["train/loss"])
        if self.flops_per_step:
            metrics["flops/per_step_tflop"] = self.flops_per_step * world / 1e12
            peak = peak_tflops(self.device, self.cfg.train.peak_tflops)
            if peak:
                metrics["flops/mfu"] = self.flops_per_step / rates["time/step_s"] / (peak * 1e12)
        self.tracker.log(metrics, step=self.step)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The trainer's own state, stored in DeepSpeed's client_state."""
        return {
            "step": self.step,
            "samples_seen": self.samples_seen,
            "data": self.train_loader.state_dict(),
            "bad_samples": dict(self.bad_samples),
            "nonfinite_steps": self.nonfinite_steps,
            "losses": self.losses,
            "mlflow_run_id": self.tracker.run_id,
            "rng": _rng_state(),
            "selector": self.selector.state_dict(),
            # Kept so a resumed run does not count again: a step under FlopCounterMode can round
            # differently in the last bit, which would break bit-exact resume.
            "flops_per_step": self.flops_per_step,
            # What the run was started with, to tell a resumed run with other settings what changed.
            "config": self.cfg.flat(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.samples_seen = state["samples_seen"]
        self.train_loader.load_state_dict(state["data"])
        self.bad_samples = Counter(state["bad_samples"])
        self.nonfinite_steps = state.get("nonfinite_steps", 0)
        self.losses = list(state["losses"])
        self.mlflow_run_id = state.get("mlflow_run_id")
        _set_rng_state(state["rng"])
        self.selector.load_state_dict(state["selector"])
        self.flops_per_step = state.get("flops_per_step")
        if self.dist.is_main:
            log.info("resumed from %s at step %d", self.checkpoint_dir, self.step)
            # Checkpoints from before the config was stored have nothing to compare with.
            changes = changed_settings(state["config"], self.cfg.flat()) if "config" in state else {}
            if changes:
                log.warning(
                    "resuming with %d setting(s) other than the checkpointed run's: %s",
                    len(changes),
                    "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items()),
                )

    def _resume_source(self) -> tuple[Path, str] | None:
        """(checkpoint root, tag) to continue from, per ``train.resume``."""
        mode = self.cfg.train.resume
        if mode == "none":
            return None
        if mode == "auto":
            tag = checkpoint.latest_tag(self.checkpoint_dir)
            return (self.checkpoint_dir, tag) if tag else None
        folder = Path(mode)
        if not folder.is_dir():
            raise FileNotFoundError(f"train.resume: checkpoint folder {folder} does not exist")
        return folder.parent, folder.name

    def save(self) -> Path:
        """DeepSpeed checkpoint (atomic) + peft adapter export with the processor and run config."""
        path = checkpoint.save_checkpoint(
            self.engine, self.checkpoint_dir, self.step, self.state_dict(), self.cfg.train.keep_last
        )
        trainable = [p for p in self.engine.module.parameters() if p.requires_grad]
        # Under ZeRO-3 each rank holds a slice of every parameter: gather the adapter to export it.
        with deepspeed.zero.GatheredParameters(trainable, enabled=zero_stage(self.ds_config) == 3):
            if self.dist.is_main:
                checkpoint.export_adapter(self.engine.module, self.adapter_dir)
                self.processor.save_pretrained(self.adapter_dir)
                (self.adapter_dir / "run_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
                # Lets `python -m trainer.evaluation` log into this run.
                run_info = {"mlflow_run_id": self.tracker.run_id, "tracking_uri": self.tracker.tracking_uri}
                (self.adapter_dir / "run_info.json").write_text(json.dumps({**run_info, "step": self.step}))
        barrier()
        return path

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Caption (and, with a retrieval head, retrieve) held-out clips on every rank, score them on
        rank 0, log to MLflow."""
        if self.cfg.eval.num_samples <= 0:
            return {}
        result = run_evaluation(
            self.engine.module,
            self.processor,
            self.selector,
            self.cfg,
            self.dist,
            self.dtype,
            sharded_params=zero_stage(self.ds_config) == 3,
        )
        if result is not None:
            self.eval_scores = {f"eval/{k}": v for k, v in result.scores.items()}
            self.tracker.log(self.eval_scores, step=self.step)
            self.tracker.log_dict(
                {
                    k: {"prediction": c.prediction, "references": c.references}
                    for k, c in result.clips.items()
                },
                f"eval/captions_step{self.step}.json",
            )
        barrier()
        return self.eval_scores

    # ------------------------------------------------------------------ tracking and summary
    def _start_tracking(self) -> Tracker:
        cfg = self.cfg
        tracker = Tracker(
            cfg.tracking.uri,
            cfg.tracking.experiment,
            cfg.tracking.run_name,
            spool_path=self.output_dir / "mlflow_spool.jsonl",
            flush_interval_s=cfg.tracking.flush_interval_s,
            tags={"adapter.method": cfg.adapter.method, "model.quantization": cfg.model.quantization},
            artifact_location=cfg.tracking.artifact_location,
            resume_run_id=self.mlflow_run_id,
        )
        tracker.log_params(
            {
                **cfg.flat(),
                "world_size": self.dist.world_size,
                "model.trainable_params": self.trainable_params,
                "model.total_params": self.total_params,
                "model.compute_dtype": str(self.dtype).removeprefix("torch."),
                "deepspeed.zero_stage": zero_stage(self.ds_config),
                "sys.num_threads": self.threads.num_threads,
                "sys.num_threads_source": self.threads.source,
            }
        )
        tracker.set_tags(self._system_info())
        tracker.log_dict(cfg.to_dict(), "config/run_config.json")
        tracker.log_dict(self.ds_config, "config/deepspeed.json")
        if self.adapter_allocation is not None:
            tracker.log_dict(self.adapter_allocation, "adapter/allocation.json")
        return tracker

    def _system_info(self) -> dict[str, str]:
        return {
            **{f"sys.{k}": v for k, v in library_versions().items()},
            "sys.device": str(self.device),
            "sys.device_name": device_name(self.device),
            "sys.world_size": str(self.dist.world_size),
            "sys.git_commit": git_commit(),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.tracker.run_id,
            "tracking_uri": self.tracker.tracking_uri,
            "experiment": self.cfg.tracking.experiment,
            "output_dir": str(self.output_dir),
            "steps": self.step,
            "data_epoch": self.data_epoch,
            "preempted": self.preempted,
            "world_size": self.dist.world_size,
            "first_loss": self.losses[0] if self.losses else None,
            "last_loss": self.losses[-1] if self.losses else None,
            "nonfinite_steps": self.nonfinite_steps,
            "eval": {k.removeprefix("eval/"): v for k, v in self.eval_scores.items()},
            "throughput": self.run_throughput,
            "flops_per_step_tflop": self.flops_per_step * self.dist.world_size / 1e12
            if self.flops_per_step
            else None,
            "memory": peak_memory(self.device),
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "bad_samples": dict(self.bad_samples),
            "checkpoint": str(self.checkpoint_dir / (checkpoint.latest_tag(self.checkpoint_dir) or "")),
            "adapter": str(self.adapter_dir),
            "wall_time_s": time.time() - self.started_at,
        }

    def close(self, status: str = "FINISHED") -> dict[str, Any] | None:
        """Write summary.json (rank 0), flush and end the MLflow run. Safe to call after a crash."""
        if not self.dist.is_main:
            return None
        summary = self.summary()
        path = self.output_dir / "summary.json"
        path.write_text(json.dumps(summary, indent=2))
        self.tracker.log_artifact(path)
        self.tracker.close("KILLED" if self.preempted and status == "FINISHED" else status)
        return summary


def _without_optimizer(ds_config: dict[str, Any]) -> dict[str, Any]:
    """The DeepSpeed config of a model that only runs forward: no optimizer, scheduler or ZeRO."""
    dropped = ("optimizer", "scheduler", "zero_optimization")
    return {k: v for k, v in ds_config.items() if k not in dropped}


def _set_fields(section: Any) -> dict[str, Any]:
    """A config dataclass as a dict without its unset (None) fields, which keep the callee's defaults."""
    return {k: v for k, v in dataclasses.asdict(section).items() if v is not None}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

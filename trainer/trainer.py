"""The training loop: one object that owns every piece of mutable state of a run.

``Trainer(cfg)`` builds the run (process group, assets, model + adapter, DeepSpeed engine,
data, tracker) and resumes from the latest checkpoint when there is one; :meth:`fit` trains
until the step budget or a preemption signal; :meth:`evaluate` captions held-out clips and
scores them; :meth:`close` writes ``summary.json`` and ends the MLflow run. ``train.py`` only
calls these.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import deepspeed
import torch
from tqdm import tqdm

from data.batch import VideoBatch
from data.loader import build_loader
from models.adapters import apply_adapter, trainable_parameter_count
from models.loading import load_model
from models.methods import adapter_method, uses_frame_gates
from models.processor import VideoLlamaProcessor
from models.rank_allocation import allocation_metrics, lora_params_by_tower
from models.retrieval_head import caption_tokens
from models.temporal_lora import gate_summary, load_shuffle_state, shuffle_state
from trainer import checkpoint
from trainer.assets import generate
from trainer.caption_language import check_caption_language
from trainer.compat import check_compatibility
from trainer.config import RunConfig, changed_settings
from trainer.distributed import any_rank, barrier, init_distributed, resolve_dtype
from trainer.ds_config import load_ds_config, zero_stage
from trainer.evaluation.eval_pass import evaluate as run_evaluation
from trainer.evaluation.eval_pass import log_eval_result
from trainer.flops import count_flops, flops_metrics, peak_tflops
from trainer.metrics import TrainingMetrics, peak_memory
from trainer.model_card import write_model_card
from trainer.preemption import PreemptionHandler
from trainer.rng_state import rng_state, seed_everything, set_rng_state
from trainer.run_setup import (
    adapter_options,
    analytic_memory,
    before_process_group,
    build_engine,
    build_selector,
    calibration_batches,
    train_dataset,
)
from trainer.system_info import system_tags
from trainer.tracking import NullTracker, Tracker, start_run

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Too many consecutive steps had a NaN/inf loss."""


class Trainer:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.threads, missing_assets = before_process_group(cfg)
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

        self._build_model()
        self.train_loader = build_loader(
            train_dataset(
                cfg,
                self.processor,
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
        self.mlflow_run_id: str | None = None

        self.eval_scores: dict[str, float] = {}
        self.eval_chance: dict[str, float] = {}  # eval/<metric> → its chance level, where known
        self.eval_step: int | None = None
        self.run_throughput: dict[str, float] = {}
        self.flops_per_step: int | None = None
        self.preempted = False
        self.nonfinite_in_a_row = 0
        self.metrics = TrainingMetrics(self.device, cfg.selector.k)
        self.started_at = time.time()

        resume_from = checkpoint.resume_source(cfg.train.resume, self.checkpoint_dir)
        if resume_from is not None:
            self._restore(
                checkpoint.load_checkpoint(self.engine, *resume_from, optimizer=self.cfg.train.optimizer)
            )
        self.tracker = self._start_tracking() if self.dist.is_main else NullTracker()

    def _build_model(self) -> None:
        """Processor, frame selector, base model + adapter, and the DeepSpeed engine around them."""
        cfg = self.cfg
        # Same seed on every rank: the adapter's random init must be identical everywhere.
        seed_everything(cfg.seed)
        self.processor = VideoLlamaProcessor.from_pretrained(cfg.model.name_or_path)
        check_caption_language(cfg, self.processor.tokenizer)  # before the model loads
        model = load_model(
            cfg.model.name_or_path,
            quantization=cfg.model.quantization,
            compute_dtype=self.dtype,
            device=self.device,
            # The adapter then trains the head and saves it (models.retrieval_head).
            retrieval_dim=cfg.train.retrieval_dim,
        )
        self.selector = build_selector(cfg)
        calibration = partial(
            calibration_batches, cfg, self.processor, self.selector, self.device, self.dtype
        )
        model = apply_adapter(model, cfg.adapter.method, **adapter_options(cfg, calibration))
        self.adapter_allocation: dict[str, Any] | None = getattr(model, "adapter_allocation", None)
        self.trainable_params, self.total_params = trainable_parameter_count(model)
        self.engine, self.ds_config = build_engine(model, cfg, self.ds_config)

    def _group_learning_rates(self) -> dict[str, float]:
        """train/lr_<group> of each named group when the ViT / aligner have their own rates."""
        optimizer = self.engine.optimizer
        groups = optimizer.param_groups if optimizer is not None else []
        return {f"train/lr_{g['name']}": g["lr"] for g in groups if "name" in g}

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
        self.metrics.start_training()
        with PreemptionHandler() as preemption:
            while self.step < cfg.steps:
                self.train_step(batches)
                bar.update(1)
                bar.set_postfix(loss=f"{self.losses[-1]:.3f}" if self.losses else "-")
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    start = time.perf_counter()
                    self.evaluate()
                    self.metrics.pause(time.perf_counter() - start)  # evaluation is not training time
                if any_rank(preemption.requested):
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
        """The whole training's rates: in summary.json and as ``throughput/run_*`` / ``time/run_*``."""
        self.run_throughput = self.metrics.whole_training()
        if self.run_throughput:
            run_names = {k.replace("/", "/run_", 1): v for k, v in self.run_throughput.items()}
            self.tracker.log(run_names, step=self.step)

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
            self.metrics.count(batch.batch_size, int(batch.attention_mask.sum()), wait)
            if self.cfg.train.count_flops and self.flops_per_step is None:
                # Counted once: FlopCounterMode slows the step it watches.
                flops, loss = count_flops(partial(self._forward_backward, batch))
                self.flops_per_step = flops * self.cfg.train.grad_accum
            else:
                loss = self._forward_backward(batch)
            losses.append(loss)
        self.metrics.end_step()
        finite = [x for x in losses if x is not None]
        if not finite:
            self.nonfinite_steps += 1
            return None
        return sum(finite) / len(finite)

    def _forward_backward(self, batch: VideoBatch) -> float | None:
        start = self.metrics.phases.start()
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
        self.metrics.phases.stop("forward", start)
        loss = out.loss
        if weight > 0:
            self.metrics.contrastive_losses.append(out.contrastive_loss.item())
            loss = loss + weight * out.contrastive_loss
        if any_rank(not bool(torch.isfinite(loss.detach()))):
            return None
        start = self.metrics.phases.start()
        self.engine.backward(loss)
        self.metrics.phases.stop("backward", start)
        start = self.metrics.phases.start()
        step_update = adapter_method(self.cfg.adapter.method).step_update
        if step_update is not None and self.engine.is_gradient_accumulation_boundary():
            step_update(self.engine.module, self.step)  # reads .grad: before the step clears it
        self.engine.step()
        self.metrics.phases.stop("optimizer", start)
        return loss.item()

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
        loss, metrics = self.metrics.window(local_loss)
        metrics.update(
            {
                "train/lr": self.engine.get_lr()[0],
                **self._group_learning_rates(),
                "train/samples_seen": self.samples_seen * self.dist.world_size,
                "train/nonfinite_steps": self.nonfinite_steps,
                **{f"data/bad_samples_{reason}": n for reason, n in self.bad_samples.items()},
            }
        )
        if uses_frame_gates(self.cfg.adapter.method):
            metrics.update(gate_summary(self.engine.module))
        if adapter_method(self.cfg.adapter.method).step_update is not None:
            # AdaLoRA moves its ranks while it trains: the latest allocation/* values are the final ones.
            metrics.update(
                allocation_metrics({"lora_params_by_tower": lora_params_by_tower(self.engine.module)})
            )
        if loss is not None:
            metrics["train/loss"] = loss
            self.losses.append(loss)
        if self.flops_per_step:
            peak = peak_tflops(self.device, self.cfg.train.peak_tflops)
            metrics.update(
                flops_metrics(self.flops_per_step, self.dist.world_size, metrics["time/step_s"], peak)
            )
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
            "rng": rng_state(),
            "selector": self.selector.state_dict(),
            "gate_shuffle": shuffle_state(self.engine.module),
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
        set_rng_state(state["rng"])
        self.selector.load_state_dict(state["selector"])
        if "gate_shuffle" in state:
            load_shuffle_state(self.engine.module, state["gate_shuffle"])
        elif shuffle_state(self.engine.module) is not None:
            log.warning("the checkpoint predates the saved shuffled-gate stream: its permutations restart")
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

    def save(self) -> Path:
        """DeepSpeed checkpoint (atomic) + peft adapter export with the processor and run config."""
        path = checkpoint.save_checkpoint(
            self.engine, self.checkpoint_dir, self.step, self.state_dict(), self.cfg.train.keep_last
        )
        trainable = [p for p in self.engine.module.parameters() if p.requires_grad]
        # Under ZeRO-3 each rank holds a slice of every parameter: gather the adapter to export it.
        with deepspeed.zero.GatheredParameters(trainable, enabled=zero_stage(self.ds_config) == 3):
            if self.dist.is_main:
                checkpoint.export_adapter(
                    self.engine.module, self.processor, self.adapter_dir, self.cfg.to_dict(), self._run_info()
                )
                self._write_model_card()
        barrier()
        return path

    def _run_info(self) -> dict[str, Any]:
        """What the adapter folder's run_info.json (and its model card) name: the MLflow run and the step."""
        tracker = self.tracker
        return {"mlflow_run_id": tracker.run_id, "tracking_uri": tracker.tracking_uri, "step": self.step}

    def _write_model_card(self) -> None:
        write_model_card(
            self.adapter_dir,
            self.cfg.to_dict(),
            self._run_info(),
            eval_scores=self.eval_scores,
            eval_chance=self.eval_chance,
            eval_step=self.eval_step,
            trainable_params=self.trainable_params,
            total_params=self.total_params,
            allocation=self.adapter_allocation,
        )

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
            self.eval_scores = log_eval_result(self.tracker, result, self.step)
            self.eval_chance = {f"eval/{k}": v for k, v in result.chance.items()}
            self.eval_step = self.step
        barrier()
        return self.eval_scores

    # ------------------------------------------------------------------ tracking and summary
    def _start_tracking(self) -> Tracker:
        artifacts = {"config/run_config.json": self.cfg.to_dict(), "config/deepspeed.json": self.ds_config}
        if self.adapter_allocation is not None:
            artifacts["adapter/allocation.json"] = self.adapter_allocation
        derived = {
            "world_size": self.dist.world_size,
            "model.trainable_params": self.trainable_params,
            "model.total_params": self.total_params,
            "model.compute_dtype": str(self.dtype).removeprefix("torch."),
            "deepspeed.zero_stage": zero_stage(self.ds_config),
            "sys.num_threads": self.threads.num_threads,
            "sys.num_threads_source": self.threads.source,
        }
        tracker = start_run(
            self.cfg,
            spool_path=self.output_dir / "mlflow_spool.jsonl",
            resume_run_id=self.mlflow_run_id,
            derived_params=derived,
            tags=system_tags(self.device, self.dist.world_size),
            artifacts=artifacts,
        )
        tracker.log(analytic_memory(self.cfg, self.adapter_allocation), step=0)
        if self.adapter_allocation is not None:  # the ranks per group and LoRA parameters per tower
            tracker.log(allocation_metrics(self.adapter_allocation), step=0)
        return tracker

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
        # The card saved with the adapter (run_info.json is written with it), now with the final scores.
        if status == "FINISHED" and self.eval_scores and (self.adapter_dir / "run_info.json").is_file():
            self._write_model_card()
        path = self.output_dir / "summary.json"
        path.write_text(json.dumps(summary, indent=2))
        self.tracker.log_artifact(path)
        self.tracker.close("KILLED" if self.preempted and status == "FINISHED" else status)
        return summary

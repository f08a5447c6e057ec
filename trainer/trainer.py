"""The training loop: one object that owns every piece of mutable state of a run.

``Trainer(cfg)`` builds the run (process group, assets, model + adapter, DeepSpeed engine,
data, tracker); :meth:`fit` trains; :meth:`evaluate` captions held-out clips and scores them;
:meth:`close` writes ``summary.json`` and ends the MLflow run. ``train.py`` only calls these.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import deepspeed
import torch
from tqdm import tqdm

from data.frame_selector import FrameSelector
from data.pipeline import VideoBatch, build_dataset, build_loader
from models.adapters import apply_adapter, trainable_parameter_count
from models.loading import load_model
from models.processor import VideoLlamaProcessor
from trainer import checkpoint
from trainer.assets import prepare_assets
from trainer.caption_metrics import score_captions
from trainer.config import RunConfig
from trainer.distributed import all_reduce_sum, barrier, gather_to_main, init_distributed, resolve_dtype
from trainer.ds_config import load_ds_config
from trainer.metrics import ThroughputMeter, peak_memory
from trainer.system_info import device_name, git_commit, library_versions
from trainer.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.dist = init_distributed(cfg.deepspeed.dist_backend)
        self.device = self.dist.device
        self.dtype = resolve_dtype(cfg.model.dtype, self.device)
        self.output_dir = Path(cfg.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.adapter_dir = self.output_dir / "adapter"

        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            prepare_assets(cfg)
        barrier()

        # Same seed on every rank: the adapter's random init must be identical everywhere.
        torch.manual_seed(cfg.seed)
        self.processor = VideoLlamaProcessor.from_pretrained(cfg.model.name_or_path)
        model = load_model(
            cfg.model.name_or_path,
            quantization=cfg.model.quantization,
            compute_dtype=self.dtype,
            device=self.device,
        )
        model = apply_adapter(
            model,
            cfg.adapter.method,
            r=cfg.adapter.r,
            alpha=cfg.adapter.alpha,
            dropout=cfg.adapter.dropout,
            target_modules=cfg.adapter.target_modules,
            modules_to_save=cfg.adapter.modules_to_save,
            gradient_checkpointing=cfg.model.gradient_checkpointing,
        )
        self.trainable_params, self.total_params = trainable_parameter_count(model)
        self.selector = FrameSelector(k=cfg.selector.k, policy=cfg.selector.policy, bits=cfg.selector.bits)

        self.ds_config = load_ds_config(cfg, self.dist.world_size, self.device, self.dtype)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=self.ds_config,
        )

        self.train_data = build_dataset(
            cfg.data.train_shards,
            num_frames=cfg.data.num_candidate_frames,
            frame_size=(cfg.data.frame_size, cfg.data.frame_size),
            batch_size=cfg.train.micro_batch_size,
            text_fn=self.processor.training_example,
            pad_token_id=self.processor.tokenizer.pad_token_id,
            shuffle_buffer=cfg.data.shuffle_buffer,
            seed=cfg.seed,
        )
        self.train_loader = build_loader(self.train_data, cfg.data.num_workers)

        # Mutable run state (what a checkpoint's client_state carries).
        self.step = 0
        self.samples_seen = 0
        self.data_epoch = 0
        self.bad_samples: Counter[str] = Counter()
        self.losses: list[float] = []
        self.eval_scores: dict[str, float] = {}
        self.throughput_history: list[dict[str, float]] = []
        self.started_at = time.time()

        self.tracker = self._start_tracking() if self.dist.is_main else NullTracker()
        if cfg.train.resume and checkpoint.latest_tag(self.checkpoint_dir):
            self._restore(checkpoint.load_checkpoint(self.engine, self.checkpoint_dir))

    # ------------------------------------------------------------------ training
    def fit(self) -> None:
        """Train until ``train.steps`` optimizer steps are done."""
        cfg = self.cfg.train
        meter = ThroughputMeter()
        batches = self._batches()
        bar = tqdm(
            total=cfg.steps, initial=self.step, desc="train", disable=not self.dist.is_main, unit="step"
        )
        self.engine.train()
        while self.step < cfg.steps:
            step_loss = 0.0
            for _ in range(cfg.grad_accum):
                t0 = time.perf_counter()
                batch = next(batches).to(self.device)
                wait = time.perf_counter() - t0
                loss = self._forward(batch)
                self.engine.backward(loss)
                self.engine.step()
                step_loss += loss.item() / cfg.grad_accum
                self.samples_seen += batch.batch_size
                self.bad_samples.update(batch.bad_samples)
                meter.add(
                    batch.batch_size,
                    batch.batch_size * self.cfg.selector.k,
                    int(batch.attention_mask.sum()),
                    wait,
                )
            self.step += 1
            if not math.isfinite(step_loss):
                raise FloatingPointError(f"loss is {step_loss} at step {self.step}")
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._log_step(step_loss, meter)
            bar.update(1)
            bar.set_postfix(loss=f"{self.losses[-1]:.3f}" if self.losses else "-")
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save()
        bar.close()
        self.save()

    def _forward(self, batch: VideoBatch) -> torch.Tensor:
        selected = self.selector(batch.frames, dtype=self.dtype)
        out = self.engine(
            pixel_values=selected.frames,
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            labels=batch.labels,
            frame_scores=selected.scores,
        )
        return out.loss

    def _batches(self):
        """Endless stream of training batches; a new pass over the shards is a new data epoch."""
        while True:
            yielded = False
            for batch in self.train_loader:
                yielded = True
                yield batch
            if not yielded:
                raise RuntimeError(f"no training samples could be read from {self.cfg.data.train_shards}")
            self.data_epoch += 1

    def _log_step(self, local_loss: float, meter: ThroughputMeter) -> None:
        world = self.dist.world_size
        loss_sum, *counts = all_reduce_sum([local_loss, meter.samples, meter.frames, meter.tokens])
        loss = loss_sum / world
        # Rates use global counts: every rank's work over this rank's wall time.
        meter.samples, meter.frames, meter.tokens = (int(c) for c in counts)
        rates = meter.read()
        self.losses.append(loss)
        self.throughput_history.append(rates)
        metrics = {
            "train/loss": loss,
            "train/lr": self.engine.get_lr()[0],
            "train/samples_seen": self.samples_seen * world,
            **rates,
            **peak_memory(self.device),
            **{f"data/bad_samples_{reason}": n for reason, n in self.bad_samples.items()},
        }
        self.tracker.log(metrics, step=self.step)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The trainer's own state, stored in DeepSpeed's client_state."""
        return {
            "step": self.step,
            "samples_seen": self.samples_seen,
            "data_epoch": self.data_epoch,
            "bad_samples": dict(self.bad_samples),
            "losses": self.losses,
            "rng_cpu": torch.get_rng_state(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.samples_seen = state["samples_seen"]
        self.data_epoch = state["data_epoch"]
        self.bad_samples = Counter(state["bad_samples"])
        self.losses = list(state["losses"])
        torch.set_rng_state(state["rng_cpu"])
        if self.dist.is_main:
            log.info("resumed from %s at step %d", self.checkpoint_dir, self.step)

    def save(self) -> Path:
        """DeepSpeed checkpoint (atomic) + peft adapter export."""
        path = checkpoint.save_checkpoint(
            self.engine, self.checkpoint_dir, self.step, self.state_dict(), self.cfg.train.keep_last
        )
        if self.dist.is_main:
            checkpoint.export_adapter(self.engine.module, self.adapter_dir)
            self.processor.save_pretrained(self.adapter_dir)
        barrier()
        return path

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Caption held-out clips on every rank, gather them on rank 0, score with pycocoevalcap."""
        cfg = self.cfg.eval
        if cfg.num_samples <= 0:
            return {}
        # Each rank captions the eval shards split_by_node gives it; CIDEr needs the whole set at once.
        per_rank = math.ceil(cfg.num_samples / self.dist.world_size)
        gathered = gather_to_main(self._generate_captions(per_rank))
        if self.dist.is_main:
            captions = {key: pair for part in gathered for key, pair in part.items()}
            keep = sorted(captions)[: cfg.num_samples]
            predictions = {k: captions[k][0] for k in keep}
            references = {k: captions[k][1] for k in keep}
            self.eval_scores = {f"eval/{k}": v for k, v in score_captions(predictions, references).items()}
            self.tracker.log(self.eval_scores, step=self.step)
            self.tracker.log_dict(
                {k: {"prediction": predictions[k], "references": references[k]} for k in keep},
                "eval/captions.json",
            )
        barrier()
        return self.eval_scores

    def _generate_captions(self, limit: int) -> dict[str, tuple[str, list[str]]]:
        """Greedy/beam captions for up to ``limit`` clips of this rank's eval shards: key → (prediction, refs)."""
        cfg = self.cfg
        data = build_dataset(
            cfg.data.eval_shards,
            num_frames=cfg.data.num_candidate_frames,
            frame_size=(cfg.data.frame_size, cfg.data.frame_size),
            batch_size=cfg.eval.batch_size,
            text_fn=None,
        )
        model = self.engine.module
        model.eval()
        captions: dict[str, tuple[str, list[str]]] = {}
        bar = tqdm(total=limit, desc="eval", unit="clip", disable=not self.dist.is_main)
        for batch in build_loader(data, 0):
            batch = batch.to(self.device)
            selected = self.selector(batch.frames, dtype=self.dtype)
            prompt = {
                k: v.to(self.device) for k, v in self.processor.generation_inputs(batch.batch_size).items()
            }
            generated = model.generate(
                pixel_values=selected.frames,
                frame_scores=selected.scores,
                max_new_tokens=cfg.eval.max_new_tokens,
                num_beams=cfg.eval.num_beams,
                do_sample=False,
                **prompt,
            )
            for key, text, ref in zip(
                batch.keys, self.processor.decode(generated), batch.captions, strict=True
            ):
                captions[key] = (text, [ref])
            bar.update(batch.batch_size)
            if len(captions) >= limit:
                break
        bar.close()
        model.train()
        return dict(sorted(captions.items())[:limit])

    # ------------------------------------------------------------------ tracking and summary
    def _start_tracking(self) -> Tracker:
        cfg = self.cfg
        tracker = Tracker(
            cfg.tracking.uri,
            cfg.tracking.experiment,
            cfg.tracking.run_name,
            spool_path=self.output_dir / "mlflow_spool.jsonl",
            flush_interval_s=cfg.tracking.flush_interval_s,
            artifact_location=cfg.tracking.artifact_location,
            tags={"adapter.method": cfg.adapter.method, "model.quantization": cfg.model.quantization},
        )
        tracker.log_params(
            {
                **cfg.flat(),
                "world_size": self.dist.world_size,
                "model.trainable_params": self.trainable_params,
                "model.total_params": self.total_params,
                "model.compute_dtype": str(self.dtype).removeprefix("torch."),
                "deepspeed.zero_stage": self.ds_config.get("zero_optimization", {}).get("stage", 0),
            }
        )
        tracker.set_tags(self._system_info())
        tracker.log_dict(cfg.to_dict(), "config/run_config.json")
        tracker.log_dict(self.ds_config, "config/deepspeed.json")
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
        rates = self.throughput_history[1:] or self.throughput_history  # first window includes warm-up
        mean = {k: sum(r[k] for r in rates) / len(rates) for k in rates[0]} if rates else {}
        return {
            "run_id": self.tracker.run_id,
            "tracking_uri": self.tracker.tracking_uri,
            "experiment": self.cfg.tracking.experiment,
            "output_dir": str(self.output_dir),
            "steps": self.step,
            "world_size": self.dist.world_size,
            "first_loss": self.losses[0] if self.losses else None,
            "last_loss": self.losses[-1] if self.losses else None,
            "eval": {k.removeprefix("eval/"): v for k, v in self.eval_scores.items()},
            "throughput": mean,
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
        self.tracker.close(status)
        return summary

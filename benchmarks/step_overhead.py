"""Our training step vs a bare DeepSpeed + peft + bitsandbytes loop on the same model and batch.

``python -m benchmarks.step_overhead --device cpu [--quick]``

Every variant drives the *same* DeepSpeed engine (tiny NF4 Video-LLaMA, QLoRA, ZeRO-2 + CPU
offload) on the same decoded batch of candidate frames, in alternating blocks so drift in machine
load hits all of them alike:

- bare: what a hand-written loop does: take K frames uniformly, normalize them,
  ``engine(**inputs)``, ``engine.backward(loss)``, ``engine.step()``;
- ours: ``Trainer.train_step`` with ``selector.policy=uniform`` (the same frames): the NaN/inf
  guard, phase timers, throughput/memory metrics every step, a null tracker;
- ours + MLflow (http): the same with the real buffered tracker sending to a real
  ``mlflow server`` on 127.0.0.1 (its cost over "ours" is the tracking overhead);
- ours + MLflow (sqlite): the tracker writing a local sqlite store in this process instead.

The wall-time overheads include the server's own work when it shares this machine's cores; the
``tracking_cpu_share`` ratios count only the uploader thread's CPU time in the training process,
which is what remains when the server runs elsewhere (as it does for real runs). The uploader
sends every ``flush_interval_s`` of wall time, so in the alternating blocks each upload carries
fewer steps than in a run that logs without pause, and its fixed HTTP cost (~3-5 ms of CPU) weighs
more per step: ``tracking_cpu_share_steady`` is the same share over a stretch of consecutive
http-tracked steps, as a training run logs them.

The learned selectors' own cost is measured against decoding in ``benchmarks.frame_selection``.
Goals (issue 7): ours/bare ≤ 1.05, tracking overhead ≤ 1% of step time.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks.harness import parse_args, time_call, write_result
from data.batch import VideoBatch
from data.frame_selector import CLIP_MEAN, CLIP_STD, uniform_positions
from tests.mlflow_server import MlflowServer
from trainer.config import load_config
from trainer.tracking import NullTracker, Tracker
from trainer.trainer import Trainer


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    steps, blocks = (5, 3) if args.quick else (20, 8)
    tmp = Path(tempfile.mkdtemp(prefix="step_overhead-"))
    (tmp / "server").mkdir()
    server = MlflowServer(tmp / "server").start()
    cfg = load_config(
        "configs/demo.yaml",
        [
            f"output_dir={tmp / 'run'}",
            f"tracking.uri={server.uri}",
            "selector.policy=uniform",
            "train.count_flops=false",
            "train.resume=none",
            "data.num_workers=0",
            f"train.steps={10**6}",
        ],
    )
    trainer = Trainer(cfg)
    try:
        trackers = {
            "ours": NullTracker(),
            "ours_mlflow_http": trainer.tracker,
            "ours_mlflow_sqlite": Tracker(
                f"sqlite:///{tmp / 'mlflow.db'}",
                cfg.tracking.experiment,
                None,
                spool_path=tmp / "spool.jsonl",
                flush_interval_s=cfg.tracking.flush_interval_s,
                artifact_location=str(tmp / "artifacts"),
            ),
        }
        batch = next(iter(trainer.train_loader)).to(trainer.device)
        times, upload_cpu = _alternate(trainer, batch, trackers, steps, blocks)
        steady_upload_cpu = _steady_upload_cpu(trainer, batch, trackers["ours_mlflow_http"], steps * blocks)
    finally:
        trainer.tracker = trackers["ours_mlflow_http"]
        trainer.close()
        trackers["ours_mlflow_sqlite"].close()
        server.stop()

    per_step = {k: statistics.median(v) / steps for k, v in times.items()}
    figures = {f"{k}_step_s": v for k, v in per_step.items()}
    figures.update({f"{k}_upload_cpu_per_step_s": v for k, v in upload_cpu.items()})
    figures["ours_mlflow_http_steady_upload_cpu_per_step_s"] = steady_upload_cpu
    figures["block_spread"] = {k: (min(v) / steps, max(v) / steps) for k, v in times.items()}
    ratios = {
        "ours_vs_bare": per_step["ours"] / per_step["bare"],
        "tracking_overhead": per_step["ours_mlflow_http"] / per_step["ours"] - 1.0,
        "tracking_overhead_sqlite": per_step["ours_mlflow_sqlite"] / per_step["ours"] - 1.0,
        # The uploader's CPU time in the training process over the step time: the cost that
        # remains when the tracking server runs elsewhere (here it shares the same 2 cores).
        "tracking_cpu_share": upload_cpu["ours_mlflow_http"] / per_step["ours"],
        "tracking_cpu_share_sqlite": upload_cpu["ours_mlflow_sqlite"] / per_step["ours"],
        "tracking_cpu_share_steady": steady_upload_cpu / per_step["ours"],
    }
    config = {
        "steps_per_block": steps,
        "blocks": blocks,
        "model": "tiny",
        "adapter": cfg.adapter.method,
        "deepspeed": cfg.deepspeed.config,
        "micro_batch": cfg.train.micro_batch_size,
        "candidate_frames": cfg.data.num_candidate_frames,
        "k": cfg.selector.k,
        "log_every": cfg.train.log_every,
        "flush_interval_s": cfg.tracking.flush_interval_s,
        "threads": torch.get_num_threads(),
    }
    write_result("step_overhead", trainer.device, config, figures, ratios, args.out)


def _alternate(
    trainer: Trainer, batch: VideoBatch, trackers: dict[str, NullTracker], steps: int, blocks: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per block of ``steps`` steps on ``batch`` for each variant, the variants taking turns;
    and the uploader's CPU seconds per step for each variant with a real tracker."""
    engine, k = trainer.engine, trainer.cfg.selector.k
    rows = torch.arange(batch.batch_size, device=trainer.device)[:, None]
    positions = uniform_positions(batch.num_frames, k, trainer.device).expand(batch.batch_size, k)
    mean = torch.tensor(CLIP_MEAN, device=trainer.device).view(1, 1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=trainer.device).view(1, 1, 3, 1, 1)

    def bare() -> None:
        for _ in range(steps):
            frames = ((batch.frames[rows, positions].float() / 255 - mean) / std).to(trainer.dtype)
            out = engine(
                pixel_values=frames,
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                labels=batch.labels,
            )
            engine.backward(out.loss)
            engine.step()

    variants = {
        "bare": bare,
        **{name: (lambda t=t: _train_steps(trainer, batch, t, steps)) for name, t in trackers.items()},
    }
    for run in variants.values():  # warm-up, not counted: allocator, optimizer state, first upload
        run()
    uploads = {name: t for name, t in trackers.items() if isinstance(t, Tracker)}
    for tracker in uploads.values():
        tracker.flush()
    cpu_before = {name: t.upload_cpu_s for name, t in uploads.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(blocks):
        for name, run in variants.items():
            times[name] += time_call(run, trainer.device, repeats=1, warmup=0)
    for tracker in uploads.values():
        tracker.flush()
    upload_cpu = {name: (t.upload_cpu_s - cpu_before[name]) / (blocks * steps) for name, t in uploads.items()}
    return times, upload_cpu


def _steady_upload_cpu(trainer: Trainer, batch: VideoBatch, tracker: Tracker, steps: int) -> float:
    """The uploader's CPU seconds per step over ``steps`` consecutive steps on ``batch`` logged to
    ``tracker``, the last partial upload included."""
    tracker.flush()
    before = tracker.upload_cpu_s
    _train_steps(trainer, batch, tracker, steps)
    tracker.flush()
    return (tracker.upload_cpu_s - before) / steps


def _train_steps(trainer: Trainer, batch: VideoBatch, tracker: NullTracker, steps: int) -> None:
    """``steps`` of the trainer's own steps on ``batch``, logging to ``tracker``."""
    trainer.tracker = tracker
    batches = itertools.repeat(batch)
    for _ in range(steps):
        trainer.train_step(batches)


if __name__ == "__main__":
    main()

"""Our training step vs a bare DeepSpeed + peft + bitsandbytes loop on the same model and batch.

``python -m benchmarks.step_overhead --device cpu [--quick]``

Both loops drive the *same* DeepSpeed engine (tiny NF4 Video-LLaMA, QLoRA, ZeRO-2 + CPU offload)
on the same decoded batch, in alternating blocks so drift in machine load hits both alike:

- bare: ``engine(**inputs)``, ``engine.backward(loss)``, ``engine.step()`` on pre-selected frames;
- ours: ``Trainer.train_step``: frame selection on the device, the NaN/inf guard, phase timers,
  throughput/memory metrics and tracking;
- ours + MLflow: the same with the real buffered tracker (a local sqlite store) instead of a
  null one: its cost is the tracking overhead.

Goals (issue 7): ours/bare ≤ 1.05, tracking overhead ≤ 1% of step time.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks.harness import parse_args, time_call, write_result
from trainer.config import load_config
from trainer.tracking import NullTracker
from trainer.trainer import Trainer


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    steps, blocks = (5, 3) if args.quick else (20, 6)
    tmp = Path(tempfile.mkdtemp(prefix="step_overhead-"))
    data = Path("outputs/data/synthvid")
    cfg = load_config(
        "configs/demo.yaml",
        [
            f"output_dir={tmp / 'run'}",
            f"model.name_or_path={tmp / 'base'}",
            f"data.train_shards={data / 'train'}",
            f"data.eval_shards={data / 'eval'}",
            f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
            f"tracking.artifact_location={tmp / 'artifacts'}",
            "tracking.flush_interval_s=0.5",
            "train.count_flops=false",
            "train.resume=none",
            "data.num_workers=0",
            f"train.steps={10**6}",
        ],
    )
    trainer = Trainer(cfg)
    batch = next(iter(trainer.train_loader)).to(trainer.device)
    batches = itertools.repeat(batch)
    selected = trainer.selector(batch.frames, dtype=trainer.dtype)
    engine = trainer.engine
    tracker = trainer.tracker

    def bare() -> None:
        for _ in range(steps):
            out = engine(
                pixel_values=selected.frames,
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                labels=batch.labels,
            )
            engine.backward(out.loss)
            engine.step()

    def ours(with_tracking: bool) -> None:
        trainer.tracker = tracker if with_tracking else NullTracker()
        for _ in range(steps):
            trainer.train_step(batches)

    times: dict[str, list[float]] = {"bare": [], "ours": [], "ours_mlflow": []}
    bare(), ours(False), ours(True)  # warm-up, not counted: allocator, optimizer state, first log
    for _ in range(blocks):  # alternate so slow phases of the machine hit every variant
        times["bare"] += time_call(bare, trainer.device, repeats=1, warmup=0)
        times["ours"] += time_call(lambda: ours(False), trainer.device, repeats=1, warmup=0)
        times["ours_mlflow"] += time_call(lambda: ours(True), trainer.device, repeats=1, warmup=0)
    trainer.tracker = tracker
    trainer.close()

    per_step = {k: statistics.median(v) / steps for k, v in times.items()}
    figures = {f"{k}_step_s": v for k, v in per_step.items()}
    figures["batch"] = {"clips": batch.batch_size, "candidate_frames": batch.num_frames, "k": cfg.selector.k}
    ratios = {
        "ours_vs_bare": per_step["ours"] / per_step["bare"],
        "tracking_overhead": per_step["ours_mlflow"] / per_step["ours"] - 1.0,
    }
    config = {
        "steps_per_block": steps,
        "blocks": blocks,
        "model": "tiny",
        "adapter": cfg.adapter.method,
        "deepspeed": cfg.deepspeed.config,
        "threads": torch.get_num_threads(),
    }
    write_result("step_overhead", trainer.device, config, figures, ratios, args.out)


if __name__ == "__main__":
    main()

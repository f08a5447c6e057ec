"""Step time of the demo config with the trainer's default intra-op threads against 1 and 2 threads
per process.

    python -m benchmarks.threads --device cpu [--rounds 3] [--steps 100] [--via env|config] [--quick]

Every run is a whole ``python train.py --config configs/demo.yaml`` process (QLoRA on the tiny NF4
Video-LLaMA, ZeRO-2 + CPU offload, one DataLoader worker decoding SynthVid), because the thread
count is fixed when a process starts and what it competes with (the data worker, DeepSpeed's CPU
Adam) only exists in a real run. Variants: ``threads_1`` and ``threads_2`` pin the count, by
``OMP_NUM_THREADS`` (``--via env``, torch's own convention, which works with or without
`trainer.threads`) or by ``train.num_threads`` (``--via config``); ``default`` sets neither, so it
runs whatever the trainer picks by itself (`trainer.threads`' auto value). The variants take turns
in rounds, each round in a rotated order (A B C, B C A, C A B, ...), so drift in machine load hits
all of them alike and none always runs first or last.

A run's figure is the median of its per-step ``time/step_s`` (the trainer's metric: wall time per
optimizer step, data waiting included) from its MLflow store, leaving out the first ``--skip`` steps:
the first counts FLOPs and the next few fill the shuffle buffer and grow the allocator, and a median
ignores a stall that a busy machine puts into one step, which the mean in ``summary.json`` would
carry. A variant's figure is the median over its rounds. An untimed warm-up run before the rounds
makes the demo's shared assets (its tiny base model and SynthVid shards, `trainer.assets`) if they
are missing and builds DeepSpeed's CPU Adam extension on first use, so no timed run pays for either.

Cost: each run spends ~17 s starting up and shutting down (imports, model load, DeepSpeed set-up,
the final checkpoint) besides its steps, so the defaults (3 rounds x 3 variants x 100 steps) take
about 4-5 minutes on 2 cores; ``--quick`` (1 round of 20 steps) about 1.5 minutes once the assets
exist. Only the steps are measured; the runs' whole-process wall times are kept as figures.

Goal (issue 17): default / best of {threads_1, threads_2} ≤ 1.05.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import parse_args, write_result
from trainer.config import load_config
from trainer.threads import available_cores, resolve_threads

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/demo.yaml"
VARIANTS: dict[str, int | None] = {"threads_1": 1, "threads_2": 2, "default": None}
PINNED = ("threads_1", "threads_2")
# Set by launchers or by an enclosing test / benchmark process: a child run must not inherit them
# (it would try to join that process group), nor a thread count this script did not choose.
DROPPED_ENV = (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "TORCHELASTIC_RUN_ID", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
)  # fmt: skip


def _extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=None, help="runs per variant; default 3 (--quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run; default 100 (--quick 20)")
    parser.add_argument("--skip", type=int, default=None, help="first steps left out; default 10 (--quick 5)")
    parser.add_argument(
        "--via",
        choices=("env", "config"),
        default="env",
        help="pin the thread count by OMP_NUM_THREADS (default) or by train.num_threads",
    )


def run_order(variants: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, variant) in running order: every round runs each variant once, rotated by one per
    round, so across rounds each variant runs in every position."""
    n = len(variants)
    return [(r, variants[(r + i) % n]) for r in range(rounds) for i in range(n)]


def steady_step_s(step_times: dict[int, float], skip: int) -> float:
    """Median of the per-step seconds after the first `skip` steps (steps are 1-based)."""
    kept = [s for step, s in sorted(step_times.items()) if step > skip]
    if not kept:
        raise ValueError(f"no steps after the first {skip} (got steps {sorted(step_times)})")
    return statistics.median(kept)


def summarize(runs: list[dict[str, Any]], skip: int) -> tuple[dict[str, Any], dict[str, float]]:
    """(figures, ratios) from the runs: each a dict with ``variant``, ``round``, ``step_times``
    ({step: seconds}), ``wall_s``, and ``threads`` / ``source`` (what the run logged as
    sys.num_threads / sys.num_threads_source, or None).

    figures: per variant the median over its rounds of each run's steady step time (``<v>_step_s``),
    the per-round values (``<v>_run_step_s``, in round order), the thread counts and sources its runs
    logged, and which pinned count was faster. ratios: ``default_over_best`` (the goal's ratio) and
    ``threads_2_over_threads_1``.
    """
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    missing = [v for v in (*PINNED, "default") if v not in variants]
    if missing:
        raise ValueError(f"no runs of {', '.join(missing)}")
    per_run: dict[str, list[float]] = {v: [] for v in variants}
    threads: dict[str, list[int | None]] = {v: [] for v in variants}
    sources: dict[str, list[str | None]] = {v: [] for v in variants}
    wall: dict[str, list[float]] = {v: [] for v in variants}
    for run in sorted(runs, key=lambda r: r["round"]):
        per_run[run["variant"]].append(steady_step_s(run["step_times"], skip))
        threads[run["variant"]].append(run.get("threads"))
        sources[run["variant"]].append(run.get("source"))
        wall[run["variant"]].append(run["wall_s"])
    step_s = {v: statistics.median(times) for v, times in per_run.items()}
    best = min(PINNED, key=lambda v: step_s[v])
    figures: dict[str, Any] = {}
    for v in variants:
        figures[f"{v}_step_s"] = step_s[v]
        figures[f"{v}_run_step_s"] = per_run[v]
        figures[f"{v}_logged_threads"] = threads[v]
        figures[f"{v}_logged_source"] = sources[v]
        figures[f"{v}_process_wall_s"] = wall[v]
    figures["best_pinned"] = best
    ratios = {
        "default_over_best": step_s["default"] / step_s[best],
        "threads_2_over_threads_1": step_s["threads_2"] / step_s["threads_1"],
    }
    return figures, ratios


def child_env(device: str, threads: int | None, via: str) -> dict[str, str]:
    """The environment of one run: this one's, less `DROPPED_ENV`, with the accelerator fixed and,
    for a pinned run via env, OMP_NUM_THREADS."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env["DS_ACCELERATOR"] = torch.device(device).type
    env["PYTHONUNBUFFERED"] = "1"
    if threads is not None and via == "env":
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def train_command(output_dir: Path, tracking_uri: str, steps: int, name: str, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "--config",
        CONFIG,
        f"output_dir={output_dir}",
        f"train.steps={steps}",
        "train.resume=none",
        "eval.num_samples=0",
        f"tracking.uri={tracking_uri}",
        f"tracking.artifact_location={output_dir.parent / 'mlartifacts'}",
        "tracking.experiment=bench-threads",
        f"tracking.run_name={name}",
        *extra,
    ]


def train(cmd: list[str], env: dict[str, str], log_path: Path) -> float:
    """Run one training process to the end; its wall seconds. Fails with the log's tail."""
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
    return time.perf_counter() - start


def read_run(output_dir: Path, tracking_uri: str) -> tuple[dict[int, float], dict[str, str]]:
    """({step: time/step_s}, params) of the MLflow run that `output_dir`'s summary.json names."""
    from trainer.tracking import tracking_client  # here: importing mlflow takes seconds

    run_id = json.loads((output_dir / "summary.json").read_text())["run_id"]
    client = tracking_client(tracking_uri)
    history = {m.step: m.value for m in client.get_metric_history(run_id, "time/step_s")}
    return history, dict(client.get_run(run_id).data.params)


def _logged_threads(params: dict[str, str]) -> int | None:
    value = params.get("sys.num_threads")
    return int(value) if value is not None and value.isdigit() else None


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _extra_args)
    rounds = args.rounds or (1 if args.quick else 3)
    steps = args.steps or (20 if args.quick else 100)
    skip = args.skip if args.skip is not None else (5 if args.quick else 10)
    if steps <= skip:
        raise SystemExit(f"--steps {steps} leaves nothing after --skip {skip}")
    demo = load_config(REPO / CONFIG)
    workers = demo.data.num_workers
    order = run_order(list(VARIANTS), rounds)

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp_name:
        tmp = Path(tmp_name)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        warmup_s = train(
            train_command(tmp / "warmup", uri, 3, "warmup", []),
            child_env(args.device, None, args.via),
            tmp / "warmup.log",
        )
        print(f"warm-up run (assets, CPU Adam build, MLflow store): {warmup_s:.0f} s", flush=True)
        load_before = os.getloadavg()
        for n, (round_, variant) in enumerate(order, start=1):
            threads = VARIANTS[variant]
            name = f"{variant}-r{round_}"
            extra = [f"train.num_threads={threads}"] if threads is not None and args.via == "config" else []
            out = tmp / name
            wall = train(
                train_command(out, uri, steps, name, extra),
                child_env(args.device, threads, args.via),
                tmp / f"{name}.log",
            )
            history, params = read_run(out, uri)
            logged, source = _logged_threads(params), params.get("sys.num_threads_source")
            if threads is not None and logged not in (None, threads):
                raise SystemExit(f"{name}: asked for {threads} threads, the trainer logged {logged}")
            if threads is not None and source not in (None, args.via):
                raise SystemExit(f"{name}: pinned via {args.via}, the trainer logged source {source!r}")
            if threads is not None and args.via == "config" and logged is None:
                raise SystemExit(
                    f"{name}: train.num_threads={threads} has no effect until the trainer applies it "
                    "(no sys.num_threads param logged); use --via env"
                )
            runs.append(
                {
                    "variant": variant,
                    "round": round_,
                    "step_times": history,
                    "wall_s": wall,
                    "threads": logged,
                    "source": source,
                }
            )
            print(
                f"[{n}/{len(order)}] {name}: {steady_step_s(history, skip):.4f} s/step "
                f"(threads logged: {logged if logged is not None else 'none'}, {source or '-'}), {wall:.0f} s",
                flush=True,
            )
        load_after = os.getloadavg()

    figures, ratios = summarize(runs, skip)
    figures["load_average_1_5_15_before"] = list(load_before)
    figures["load_average_1_5_15_after"] = list(load_after)
    figures["warmup_process_wall_s"] = warmup_s
    if all(t is None for t in figures["default_logged_threads"]):
        print(
            "note: the trainer logged no sys.num_threads: 'default' ran torch's own default "
            "(one thread per core), not trainer.threads",
            flush=True,
        )
    config = {
        "quick": args.quick,
        "config": CONFIG,
        "steps": steps,
        "skipped_steps": skip,
        "rounds": rounds,
        "order": [f"{v}-r{r}" for r, v in order],
        "pinned_via": "OMP_NUM_THREADS" if args.via == "env" else "train.num_threads",
        "cores": available_cores(),
        "num_workers": workers,
        "micro_batch": demo.train.micro_batch_size,
        # What trainer.threads decides for the default runs' environment: one rank, no OMP_NUM_THREADS.
        "auto_threads": resolve_threads(
            None, num_workers=workers, local_world_size=1, environ=child_env(args.device, None, args.via)
        ).num_threads,
    }
    write_result("threads", torch.device(args.device), config, figures, ratios, args.out)


if __name__ == "__main__":
    main()

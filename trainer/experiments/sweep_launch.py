"""Launching: the runs of a sweep one after the other (or a few side by side, taking the next run
from a shared queue, longest first), each in a forked child or a subprocess.

Finished runs are skipped and failed ones recorded (see ``trainer.experiments.sweep``); a stop
signal (SIGTERM, SIGUSR1) is passed to the running child and ends the sweep after it.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.experiments.sweep_grid import SweepRun

# Child exit codes of the fork launcher.
_SKIPPED, _PREEMPTED = 3, 4


@dataclass
class Settings:
    experiment: str
    config: str
    out_root: Path
    tracking_uri: str
    launcher: str = "fork"
    num_gpus: int = 1


def run_overrides(run: SweepRun, settings: Settings) -> list[str]:
    """The run's ``key=value`` list as ``train.py`` gets it: the sweep's, then where it writes."""
    return [
        *run.overrides,
        f"output_dir={run_dir(run, settings)}",
        f"tracking.uri={settings.tracking_uri}",
        f"tracking.experiment={settings.experiment}",
        f"tracking.run_name={run.name}",
    ]


def run_dir(run: SweepRun, settings: Settings) -> Path:
    return settings.out_root / settings.experiment / run.name


def train_command(run: SweepRun, settings: Settings) -> list[str]:
    """The command a subprocess launcher runs (also what ``--dry-run`` prints)."""
    bin_dir = Path(sys.executable).parent
    if settings.launcher == "deepspeed":
        launcher = [str(bin_dir / "deepspeed"), "--num_gpus", str(settings.num_gpus)]
    else:
        launcher = [sys.executable]
    return [*launcher, "train.py", "--config", settings.config, *run_overrides(run, settings)]


def is_finished(client: Any, experiment: str, run_name: str) -> bool:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return False
    found = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`sweep.run` = '{run_name}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return len(found) > 0


def record_outcome(client: Any, run: SweepRun, settings: Settings, error: str | None) -> str | None:
    """Tag the run's MLflow run; a run that died before it had one gets a FAILED run of its own."""
    summary = run_dir(run, settings) / "summary.json"
    run_id = json.loads(summary.read_text())["run_id"] if summary.is_file() else None
    tags = run.tags(settings.experiment)
    if error is not None:
        tags["sweep.error"] = error[-4000:]
    if run_id is None:
        from trainer.tracking import experiment_id_for

        run_id = client.create_run(
            experiment_id_for(client, settings.experiment), run_name=run.name
        ).info.run_id
        client.set_terminated(run_id, status="FAILED")
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    return run_id


def _execute(run: SweepRun, settings: Settings, train: Any) -> int:
    """Skip if finished, else train (``train(run) -> error text or None``) and record. Returns an exit code."""
    from trainer.tracking import tracking_client

    client = tracking_client(settings.tracking_uri)
    if is_finished(client, settings.experiment, run.name):
        return _SKIPPED
    (run_dir(run, settings) / "summary.json").unlink(missing_ok=True)  # a stale one names an older run
    error = train(run)
    record_outcome(client, run, settings, error)
    if error is None:
        summary = json.loads((run_dir(run, settings) / "summary.json").read_text())
        return _PREEMPTED if summary.get("preempted") else 0
    return 1


def _train_in_process(settings: Settings) -> Any:
    def train(run: SweepRun) -> str | None:
        import train as entry  # the repository's train.py: exactly what `python train.py` runs

        try:
            entry.main(["--config", settings.config, *run_overrides(run, settings)])
        except Exception:
            traceback.print_exc()
            return traceback.format_exc()
        return None

    return train


def _train_subprocess(settings: Settings) -> Any:
    def train(run: SweepRun) -> str | None:
        log_path = run_dir(run, settings) / "sweep.log"
        with log_path.open("ab") as log:
            proc = subprocess.run(train_command(run, settings), stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode == 0:
            return None
        tail = log_path.read_text(errors="replace")[-4000:]
        return f"exit code {proc.returncode}\n{tail}"

    return train


def execute(run: SweepRun, settings: Settings) -> str:
    """Run one sweep run with the configured launcher; returns FINISHED | SKIPPED | FAILED | PREEMPTED."""
    folder = run_dir(run, settings)
    folder.mkdir(parents=True, exist_ok=True)
    if settings.launcher == "fork":
        code = _fork(lambda: _execute(run, settings, _train_in_process(settings)), folder / "sweep.log")
    else:
        code = _execute(run, settings, _train_subprocess(settings))
    return {0: "FINISHED", _SKIPPED: "SKIPPED", _PREEMPTED: "PREEMPTED"}.get(code, "FAILED")


_child_pid: int | None = None


def _spawn(job: Any) -> int:
    """Fork a child that runs ``job()`` and exits with its return code (1 if it raises); its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = job()
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def _fork(job: Any, log_path: Path) -> int:
    """Run ``job()`` in a forked child with stdout/stderr appended to ``log_path``; its exit code."""
    global _child_pid

    def child() -> int:
        # The sweep's forwarding handler is inherited: a signal sent to the child itself must act
        # as on a plain `python train.py` (the trainer's PreemptionHandler during fit, else exit).
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        # The parent's sys.stdout may not be fd 1 (a test's capture): write where the fds now point.
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        return job()

    pid = _spawn(child)
    _child_pid = pid
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        _child_pid = None
    return os.waitstatus_to_exitcode(status)


def run_sweep(runs: list[SweepRun], settings: Settings, queue: Path | None = None) -> list[dict[str, Any]]:
    """Run ``runs`` one after the other; a stop signal is passed to the running child and ends the sweep.

    With ``queue`` (a file holding the position of the next run, see `run_in_parts`), each run is
    taken from the queue instead: processes that share it never run the same one, and none idles
    while runs are left.
    """
    if settings.launcher == "fork":
        import train  # noqa: F401  heavy imports once, inherited by every forked run

    stop = {"requested": False}

    def forward(signum: int, frame: Any) -> None:
        stop["requested"] = True
        if _child_pid is not None:
            os.kill(_child_pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    results = []
    try:
        for position, run in _taken(runs, queue) if queue is not None else enumerate(runs):
            start = time.perf_counter()
            status = execute(run, settings)
            seconds = time.perf_counter() - start
            results.append(
                {"index": run.index, "name": run.name, "status": status, "seconds": round(seconds, 1)}
            )
            print(f"[{position + 1}/{len(runs)}] {run.name}: {status} in {seconds:.1f} s", flush=True)
            if stop["requested"] or status == "PREEMPTED":
                print("stop requested: the sweep ends here; run it again to continue", flush=True)
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _write_status(results, settings)
    return results


def _taken(runs: list[SweepRun], queue: Path) -> Iterator[tuple[int, SweepRun]]:
    """(position, run) for each run this process takes from ``queue``, until none is left."""
    while True:
        with queue.open("r+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            position = int(handle.read())
            handle.seek(0)
            handle.write(str(position + 1))
            handle.truncate()
        if position >= len(runs):
            return
        yield position, runs[position]


def launch_order(runs: list[SweepRun]) -> list[SweepRun]:
    """The order `run_in_parts` starts runs in: longest (``train.steps``) first, the sweep's order
    within one length."""
    return sorted(runs, key=lambda run: -run.train_steps)


def prepare_data(runs: list[SweepRun], settings: Settings) -> int:
    """Write the SynthVid shards ``runs`` will generate, in the order they will need them; the
    number of shard folders written. Their base model need not exist yet: ``make experiments`` runs
    this beside the pretraining, on the core its one thread leaves (each data seed's 512 clips
    cost the first run that needs them ~22 s of x264 on 2 cores)."""
    from tqdm import tqdm

    from trainer.assets import generate, resolve_assets
    from trainer.config import load_config

    written = 0
    for run in tqdm(launch_order(runs), desc="sweep data", unit="run"):
        pending = resolve_assets(load_config(settings.config, run_overrides(run, settings)), base_model=False)
        generate(pending)
        written += len(pending)
    return written


def run_in_parts(runs: list[SweepRun], settings: Settings, jobs: int) -> list[dict[str, Any]]:
    """``run_sweep`` in ``jobs`` forked processes side by side (on a small machine several
    single-threaded runs use the cores better than one run's threads do), each taking its next run
    from one queue, longest first (``train.steps``). Long runs first leave the short ones to even out
    the ends: in the SynthVid sweep split into fixed halves, with the 400-step curve runs last, one
    process ran alone for the last 109 s. A stop signal is passed to every part."""
    if jobs <= 1:
        return run_sweep(runs, settings)
    if settings.launcher == "fork":
        import train  # noqa: F401  imported once, before the parts fork
    from trainer.experiments.sweep_slurm import prepare_store

    prepare_store(settings)  # the store and the experiment exist before the parts start
    folder = settings.out_root / settings.experiment
    folder.mkdir(parents=True, exist_ok=True)
    longest_first = launch_order(runs)
    queue = folder / f".queue-{os.getpid()}"
    queue.write_text("0")

    def part_job(result_file: Path) -> int:
        result_file.write_text(json.dumps(run_sweep(longest_first, settings, queue)))
        return 0

    parts = {}
    for part in range(jobs):
        result_file = folder / f".part{part}-{os.getpid()}.json"
        parts[_spawn(lambda f=result_file: part_job(f))] = result_file

    def forward(signum: int, frame: Any) -> None:
        for pid in parts:
            os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        for pid in parts:
            os.waitpid(pid, 0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        queue.unlink(missing_ok=True)
    results = []
    for result_file in parts.values():
        if result_file.is_file():
            results += json.loads(result_file.read_text())
            result_file.unlink()
    return sorted(results, key=lambda r: r["index"])


def _write_status(results: list[dict[str, Any]], settings: Settings) -> None:
    """Merge this invocation's outcomes into <out_root>/<experiment>/sweep_status.json (under a lock:
    the parts of `run_in_parts` finish at their own times)."""
    path = settings.out_root / settings.experiment / "sweep_status.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / ".sweep_status.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        status = json.loads(path.read_text()) if path.is_file() else {}
        status.update({r["name"]: r for r in results})
        path.write_text(json.dumps(dict(sorted(status.items(), key=lambda kv: kv[1]["index"])), indent=2))

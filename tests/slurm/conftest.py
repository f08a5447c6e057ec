"""A real two-node SLURM cluster for the session, and helpers to submit ``slurm/*.sbatch`` to it."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, training_env
from tests.slurm.cluster import ClusterError, LocalCluster

# Job states after which a job does not run again by itself (see `squeue --help`, JOB STATE CODES).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}


@pytest.fixture(scope="session")
def slurm_cluster():
    """munged + slurmctld + slurmd node1/node2, stopped by pid when the session ends.

    Fails (does not skip) when the SLURM packages are missing: CI must run these tests.
    """
    # munged wants every folder above its socket searchable by all: not pytest's 0700 tmp folders.
    root = Path(tempfile.mkdtemp(prefix="slurm-cluster-"))
    cluster = LocalCluster(root)
    try:
        cluster.up()
    except ClusterError as e:
        pytest.fail(f"cannot start the local SLURM cluster: {e}", pytrace=False)
    yield cluster
    cluster.down()


class Job:
    """A submitted batch job: its id, its state from ``scontrol show job`` and its log files."""

    def __init__(self, cluster: LocalCluster, job_id: str, log_dir: Path, output: Path) -> None:
        self.cluster, self.id, self.log_dir, self.output = cluster, job_id, log_dir, output

    def tasks(self) -> list[dict[str, str]]:
        """``scontrol show job``'s fields, one dict per array task (one for a plain job)."""
        proc = subprocess.run(
            ["scontrol", "show", "job", "-o", self.id],
            env=self.cluster.env(),
            capture_output=True,
            text=True,
            check=True,
        )
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in proc.stdout.splitlines() if line.strip()]

    def info(self) -> dict[str, str]:
        return self.tasks()[0]

    def wait_all(self, timeout_s: float = 600.0) -> list[dict[str, str]]:
        """Block until every task of an array job reached a final state."""
        deadline = time.time() + timeout_s
        tasks: list[dict[str, str]] = []
        while time.time() < deadline:
            tasks = self.tasks()
            if all(t["JobState"] in FINAL_STATES for t in tasks):
                return tasks
            time.sleep(1.0)
        raise TimeoutError(
            f"array job {self.id}: {[t['JobState'] for t in tasks]} after {timeout_s}s{self.logs()}"
        )

    def wait(self, timeout_s: float = 600.0, restarts: int = 0) -> dict[str, str]:
        """Block until the job reached a final state after ``restarts`` requeues; returns its info."""
        deadline = time.time() + timeout_s
        info: dict[str, str] = {}
        while time.time() < deadline:
            info = self.info()
            if info["JobState"] in FINAL_STATES and int(info["Restarts"]) >= restarts:
                return info
            time.sleep(1.0)
        raise TimeoutError(f"job {self.id} still {info.get('JobState')} after {timeout_s}s{self.logs()}")

    def rank_log(self, rank: int) -> str:
        path = self.log_dir / f"rank-{rank}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self, tail: int = 3000) -> str:
        """The batch output, every rank log and the daemons' logs, ends only: for failure messages."""
        parts = []
        outputs = sorted(self.output.parent.glob("sbatch*.out"))
        for path in [*outputs, *sorted(self.log_dir.glob("rank-*.log"))]:
            if path.exists():
                parts.append(f"\n--- {path.name}:\n{path.read_text(errors='replace')[-tail:]}")
        return "".join(parts) + self.cluster.logs()


def submit(
    cluster: LocalCluster,
    tmp: Path,
    script: str,
    *args: str,
    sbatch_options: tuple[str, ...] = (),
    output: str = "sbatch.out",
) -> Job:
    """``sbatch <options> slurm/<script> <args>`` from the repository root, as a user would.

    ``output``: the batch output's file name in ``tmp`` (``sbatch-%a.out`` for an array job).
    """
    log_dir, output_path = tmp / "logs", tmp / output
    env = cluster.env(training_env())
    # The machine has 2 cores for both "nodes": one thread per rank. PYTHON: the venv running pytest.
    env.update(OMP_NUM_THREADS="1", PYTHON=sys.executable, RANK_LOG_DIR=str(log_dir))
    env.pop("SLURM_JOB_ID", None)
    proc = subprocess.run(
        ["sbatch", "--parsable", f"--output={output_path}", *sbatch_options, f"slurm/{script}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"sbatch failed: {proc.stderr}{cluster.logs()}"
    return Job(cluster, proc.stdout.strip().split(";")[0], log_dir, output_path)


def progress(log: str) -> int:
    """Highest step that tqdm's ``train`` bar shows in a rank log (0 before the first)."""
    done = [int(m) for m in re.findall(r"train:.*?\| *(\d+)/\d+", log)]
    return max(done, default=0)


def wait_for_step(job: Job, step: int, timeout_s: float = 600.0) -> int:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        done = progress(job.rank_log(0))
        if done >= step:
            return done
        state = job.info()["JobState"]
        assert state in {"PENDING", "CONFIGURING", "RUNNING"}, f"job {job.id} {state}{job.logs()}"
        time.sleep(0.3)
    raise TimeoutError(f"job {job.id}: step {step} not reached in {timeout_s}s{job.logs()}")

"""SLURM submission: a whole sweep as one array job, a task per run (``slurm/sweep.sbatch``)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from trainer.experiments.sweep_launch import Settings

SBATCH_SCRIPT = Path("slurm/sweep.sbatch")


def prepare_store(settings: Settings) -> str:
    """Create the tracking store's tables and the sweep's experiment before the array's tasks start,
    so that they find both (`trainer.tracking.tracking_client` opens a new sqlite store under a lock,
    `experiment_id_for` is safe against a concurrent create). Returns the experiment id."""
    from trainer.tracking import experiment_id_for, tracking_client

    return experiment_id_for(tracking_client(settings.tracking_uri), settings.experiment)


def submit_array(sweep_args: list[str], sbatch_args: list[str], count: int, dry_run: bool) -> int:
    """``sbatch --array=0-(n-1) [sbatch args] slurm/sweep.sbatch <sweep args>``; each task adds --index."""
    if not SBATCH_SCRIPT.is_file():
        raise SystemExit(f"{SBATCH_SCRIPT} not found: run from the repository root")
    sweep_args = [a for a in sweep_args if a != "--dry-run"]
    cmd = ["sbatch", f"--array=0-{count - 1}", *sbatch_args, str(SBATCH_SCRIPT), *sweep_args]
    print(shlex.join(cmd), flush=True)
    if dry_run:
        return 0
    return subprocess.run(cmd).returncode

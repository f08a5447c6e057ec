"""``slurm/sweep.sbatch`` as a real array job: one sweep run per task, all in one MLflow experiment."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import asset_overrides
from tests.slurm.conftest import submit

# One SLURM cluster for the session: under `pytest -n` (make test) these tests share a worker.
pytestmark = pytest.mark.xdist_group("slurm")


def test_array_job_runs_one_sweep_point_per_task(slurm_cluster, demo_assets, mlflow_server, tmp_path):
    out_root = tmp_path / "sweeps"
    sweep_args = [
        "--config",
        "configs/demo.yaml",
        "--grid",
        "train.steps=1,2",
        "--experiment",
        "slurm-sweep",
        "--tracking-uri",
        mlflow_server.uri,
        "--out-root",
        str(out_root),
        "--set",
        *asset_overrides(demo_assets),
        "train.micro_batch_size=4",
        "train.count_flops=false",
        "eval.num_samples=0",
        "tracking.flush_interval_s=0.5",
    ]
    job = submit(
        slurm_cluster,
        tmp_path,
        "sweep.sbatch",
        *sweep_args,
        sbatch_options=("--array=0-1",),
        output="sbatch-%a.out",
    )
    tasks = job.wait_all()
    assert sorted(t["ArrayTaskId"] for t in tasks) == ["0", "1"], job.logs()
    assert all(t["JobState"] == "COMPLETED" and t["ExitCode"] == "0:0" for t in tasks), job.logs()

    summaries = [json.loads(p.read_text()) for p in sorted(out_root.glob("slurm-sweep/*/summary.json"))]
    assert sorted(s["steps"] for s in summaries) == [1, 2], job.logs()
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("slurm-sweep")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.params["train.steps"] for r in runs) == ["1", "2"]
    assert all(r.info.status == "FINISHED" and "sweep.run" in r.data.tags for r in runs)

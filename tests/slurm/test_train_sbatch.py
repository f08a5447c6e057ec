"""``slurm/train.sbatch`` on a real two-node SLURM cluster: 2 CPU ranks (gloo), one per node.

The demo config trains against a real MLflow server; the job is signalled mid-run the way SLURM
does before a time limit, requeues itself and finishes from its checkpoint in the same MLflow run.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import asset_overrides
from tests.slurm.conftest import Job, submit, wait_for_step
from trainer.checkpoint import latest_tag

# One SLURM cluster for the session: under `pytest -n` (make test) these tests share a worker.
pytestmark = pytest.mark.xdist_group("slurm")


def train_args(assets: Path, out: Path, tracking_uri: str, *overrides: str) -> list[str]:
    return [
        "configs/demo.yaml",
        f"output_dir={out}",
        *asset_overrides(assets),
        "train.micro_batch_size=4",
        f"tracking.uri={tracking_uri}",
        "tracking.flush_interval_s=0.5",
        "train.count_flops=false",
        *overrides,
    ]


def run_ids(rank0_log: str) -> list[str]:
    """The MLflow run id each attempt printed (rank 0's last line), in order."""
    return re.findall(r"\| MLflow run (\w+) at ", rank0_log)


def assert_both_nodes_trained(job: Job) -> None:
    for rank, node in ((0, "node1"), (1, "node2")):
        log = job.rank_log(rank)
        assert f"rank {rank}/2 (local 0) on " in log and node in log.splitlines()[0], job.logs()
        assert "Traceback" not in log, job.logs()


def test_two_node_job_is_preempted_requeued_and_resumed(slurm_cluster, demo_assets, mlflow_server, tmp_path):
    """One job covers the whole life cycle (a separate plain run would cost another minute of CI).

    Steps take ~0.2 s here: 40 leave the signal several seconds to land before the end.
    """
    out, steps = tmp_path / "run", 40
    args = train_args(
        demo_assets,
        out,
        mlflow_server.uri,
        f"train.steps={steps}",
        "tracking.experiment=slurm-preemption",
        "eval.num_samples=8",
        "eval.batch_size=4",
        "eval.max_new_tokens=4",
    )
    job = submit(slurm_cluster, tmp_path, "train.sbatch", *args, sbatch_options=("-N", "2"))
    wait_for_step(job, 2)
    # What SLURM does --signal=USR1@120 before the time limit: SIGUSR1 to every process of the steps.
    subprocess.run(["scancel", "--signal=USR1", job.id], env=slurm_cluster.env(), check=True)
    info = job.wait(restarts=1)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", job.logs()
    assert info["NumNodes"] == "2" and info["Restarts"] == "1"
    assert_both_nodes_trained(job)

    rank0 = job.rank_log(0)
    stopped = int(re.search(r"stopping at step (\d+) on request", rank0).group(1))
    assert 2 <= stopped < steps, job.logs()
    assert (job.log_dir / "preempted.0").read_text() == f"stopped at step {stopped}\n"
    assert (
        "attempt 1" in job.output.read_text()
        and f"resumed from {out / 'checkpoints'} at step {stopped}" in rank0
    )
    for rank in (0, 1):
        assert job.rank_log(rank).count(f"rank {rank}/2 (local 0) on ") == 2  # one header per attempt

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == steps and summary["preempted"] is False and summary["world_size"] == 2
    assert latest_tag(out / "checkpoints") == f"global_step{steps}"
    # ZeRO-2 shards the optimizer: each rank (each node) wrote its own part of the checkpoint.
    shards = sorted(p.name for p in (out / f"checkpoints/global_step{steps}").glob("*optim_states.pt"))
    assert len(shards) == 2 and "rank_0" in shards[0] and "rank_1" in shards[1], shards
    assert (out / "adapter/adapter_model.safetensors").is_file()
    first, second = run_ids(rank0)
    assert first == second == summary["run_id"]  # the requeued job continued the same MLflow run

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("slurm-preemption")
    assert len(client.search_runs([experiment.experiment_id])) == 1
    history = client.get_metric_history(summary["run_id"], "train/loss")
    assert sorted({m.step for m in history}) == list(range(1, steps + 1))
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    # Evaluation ran once, at the end of the resumed attempt: the preempted one skipped it.
    assert any(k.startswith("eval/") for k in run.data.metrics), run.data.metrics
    files = [a.path for a in client.list_artifacts(run.info.run_id, "eval")]
    assert files == [f"eval/captions_step{steps}.json", f"eval/per_clip_step{steps}.json"], files

"""The demo config end to end, through the real ``deepspeed`` launcher on 2 CPU ranks (gloo).

One run trains, checkpoints, evaluates and reports to a real MLflow server; the tests below
check what it left behind. A second run resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.e2e

STEPS = 30


def launch(tmp: Path, tracking_uri: str, *overrides: str, timeout: int = 900) -> subprocess.CompletedProcess:
    deepspeed = Path(sys.executable).parent / "deepspeed"
    cmd = [
        str(deepspeed),
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        "train.py",
        "--config",
        "configs/demo.yaml",
        f"output_dir={tmp / 'run'}",
        f"model.name_or_path={tmp / 'base'}",
        f"data.train_shards={tmp / 'data/train'}",
        f"data.eval_shards={tmp / 'data/eval'}",
        "data.synthvid.num_train=128",
        "data.synthvid.num_eval=16",
        "data.synthvid.samples_per_shard=8",
        f"train.steps={STEPS}",
        "train.micro_batch_size=4",
        "eval.num_samples=16",
        f"tracking.uri={tracking_uri}",
        "tracking.experiment=e2e-demo",
        *overrides,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    (tmp / f"launch-{len(list(tmp.glob('launch-*.log')))}.log").write_text(log)
    assert proc.returncode == 0, log[-6000:]
    return proc


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, mlflow_server):
    tmp = tmp_path_factory.mktemp("demo")
    proc = launch(tmp, mlflow_server.uri)
    summary = json.loads((tmp / "run/summary.json").read_text())
    return tmp, proc, summary


def test_two_ranks_trained_and_loss_fell(demo_run):
    _, proc, summary = demo_run
    assert summary["world_size"] == 2
    assert summary["steps"] == STEPS
    assert summary["last_loss"] < 0.7 * summary["first_loss"], summary
    assert "MLflow run" in proc.stdout and summary["run_id"] in proc.stdout


def test_summary_is_complete(demo_run):
    _, _, summary = demo_run
    for key in ("run_id", "tracking_uri", "steps", "first_loss", "last_loss", "eval", "throughput", "memory"):
        assert summary[key] not in (None, {}, ""), key
    assert set(summary["eval"]) >= {"bleu4", "meteor", "rouge_l", "cider"}
    assert summary["throughput"]["throughput/samples_per_s"] > 0
    assert summary["throughput"]["throughput/frames_per_s"] == pytest.approx(
        4 * summary["throughput"]["throughput/samples_per_s"]
    )
    assert summary["memory"]["memory/peak_rss_gib"] > 0


def test_mlflow_run_holds_params_metrics_and_artifacts(demo_run, mlflow_server):
    _, _, summary = demo_run
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["adapter.method"] == "qlora"
    assert run.data.params["world_size"] == "2"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(1, STEPS + 1))
    for name in (
        "throughput/samples_per_s",
        "throughput/frames_per_s",
        "throughput/tokens_per_s",
        "memory/peak_rss_gib",
        "eval/cider",
        "eval/bleu4",
        "eval/meteor",
        "eval/rouge_l",
    ):
        assert client.get_metric_history(run.info.run_id, name), name
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "config", "eval"} <= artifacts


def test_checkpoint_and_adapter_reload(demo_run):
    tmp, _, summary = demo_run
    from peft import PeftModel

    from models.loading import load_model

    ckpt = Path(summary["checkpoint"])
    assert ckpt.name == f"global_step{STEPS}" and (ckpt.parent / "latest").read_text() == ckpt.name
    states = torch.load(ckpt / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    assert states["step"] == STEPS

    adapter = Path(summary["adapter"])
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    base = load_model(tmp / "base", quantization="nf4", compute_dtype=torch.float32, device="cpu")
    model = PeftModel.from_pretrained(base, adapter)
    reloaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert reloaded
    saved = {k.removeprefix("module."): v for k, v in states["module"].items() if "lora_" in k}
    # The exported adapter holds exactly the weights of the DeepSpeed checkpoint.
    for name, value in reloaded.items():
        assert torch.equal(value, saved[name]), name


def test_resume_continues_from_the_checkpoint(demo_run, mlflow_server):
    tmp, _, first = demo_run
    launch(tmp, mlflow_server.uri, f"train.steps={STEPS + 4}", "train.resume=true", "eval.num_samples=0")
    summary = json.loads((tmp / "run/summary.json").read_text())
    assert summary["steps"] == STEPS + 4
    # The loss history carried in the checkpoint continues instead of restarting.
    assert summary["first_loss"] == first["first_loss"]
    assert Path(summary["checkpoint"]).name == f"global_step{STEPS + 4}"

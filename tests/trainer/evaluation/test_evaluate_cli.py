"""`python -m trainer.evaluation` on a tiny checkpoint trained for a few steps with the retrieval head."""

import json
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, run_training, train_command, training_env
from trainer.config import load_config
from trainer.evaluation.cli import load_for_eval

EVAL_CLIPS = 8


@pytest.fixture(scope="module")
def trained(demo_assets, mlflow_server, tmp_path_factory):
    """A temporal QLoRA adapter with a retrieval head, 3 steps, evaluated once at the end of training."""
    out = tmp_path_factory.mktemp("eval_run")
    cmd = train_command(
        demo_assets,
        out,
        mlflow_server.uri,
        "adapter.method=temporal_qlora",
        "train.steps=3",
        "train.contrastive_weight=1.0",
        "train.count_flops=false",
        f"eval.num_samples={EVAL_CLIPS}",
        "eval.batch_size=4",
        "eval.max_new_tokens=6",
    )
    run_training(cmd, out / "train.log", timeout=600)
    return out, cmd


def test_evaluate_writes_json_report_and_mlflow_metrics(trained, mlflow_server):
    out, train_cmd = trained
    overrides = train_cmd[train_cmd.index("configs/demo.yaml") + 1 :]
    cmd = [sys.executable, "-m", "trainer.evaluation", "--config", "configs/demo.yaml"]
    cmd += [
        "--checkpoint",
        str(out / "adapter"),
        "--out",
        str(out / "ev"),
        *overrides,
        "eval.report_samples=2",
        "eval.rerank_top_k=5",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=training_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    results = json.loads((out / "ev/eval_results.json").read_text())
    assert results["num_clips"] == EVAL_CLIPS and len(results["clips"]) == EVAL_CLIPS
    scores = results["scores"]
    for name in ("bleu4", "meteor", "rouge_l", "cider", "t2v_r1_pct", "v2t_r5_pct", "t2v_medr", "v2t_mnr"):
        assert name in scores
    assert results["retrieval_chance"]["t2v_r1_pct"] == pytest.approx(100 / EVAL_CLIPS)
    # Re-ranking reorders each caption's top 5 by caption likelihood: who is in the top 5 (and 10)
    # cannot change, the order inside can.
    for k in (5, 10):
        assert scores[f"rerank_t2v_r{k}_pct"] == pytest.approx(scores[f"t2v_r{k}_pct"])
    assert 0 <= scores["rerank_t2v_r1_pct"] <= scores["t2v_r5_pct"]
    clip = next(iter(results["clips"].values()))
    assert len(clip["selected_frames"]) == 4 and len(clip["retrieval_top5"]) == 5

    report = (out / "ev/report.html").read_text()
    assert report.count("<div class='clip'>") == 2
    assert "temporal gates" in report and "retrieval top-5" in report
    assert report.count("<img alt='attention'") == 2
    assert report.count("data:image/png;base64,") == 6  # frame strip + gate and attention heatmaps per clip

    # Logged into the training run (its id is recorded in the adapter folder), next to the
    # in-training evaluation of the same adapter on the same clips: the figures must agree.
    run_id = json.loads((out / "adapter/run_info.json").read_text())["mlflow_run_id"]
    assert results["mlflow_run_id"] == run_id
    client = MlflowClient(mlflow_server.uri)
    history = client.get_metric_history(run_id, "eval/cider")
    assert len(history) == 2  # end of training, then the CLI
    assert history[0].value == pytest.approx(history[1].value, abs=1e-6)
    r1 = client.get_metric_history(run_id, "eval/t2v_r1_pct")
    assert len(r1) == 2 and r1[0].value == pytest.approx(r1[1].value, abs=1e-6)
    artifacts = {a.path for a in client.list_artifacts(run_id, "eval_report")}
    assert {"eval_report/eval_results.json", "eval_report/report.html"} <= artifacts


def test_a_deepspeed_checkpoint_folder_is_refused_with_the_fix(trained):
    out, _ = trained
    cfg = load_config(REPO / "configs/demo.yaml")
    with pytest.raises(
        FileNotFoundError, match=r"not a peft adapter folder.*use the adapter folder <output_dir>/adapter"
    ):
        load_for_eval(cfg, out / "checkpoints", torch.device("cpu"), torch.float32)

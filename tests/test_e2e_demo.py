"""The demo config end to end, through the real ``deepspeed`` launcher on 2 CPU ranks (gloo).

One run trains, checkpoints, evaluates and reports to a real MLflow server; the tests below
check what it left behind. A second run resumes from its checkpoint.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import run_training, train_command

pytestmark = pytest.mark.e2e

STEPS = 30


def launch(assets: Path, tmp: Path, tracking_uri: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = train_command(
        assets,
        tmp / "run",
        tracking_uri,
        f"train.steps={STEPS}",
        "eval.num_samples=16",
        "tracking.experiment=e2e-demo",
        *overrides,
        ranks=2,
    )
    return run_training(cmd, tmp / f"launch-{len(list(tmp.glob('launch-*.log')))}.log")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, mlflow_server, demo_assets):
    tmp = tmp_path_factory.mktemp("demo")
    proc = launch(demo_assets, tmp, mlflow_server.uri)
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
    # Run-level rates are totals over the training time: per step, the micro-batch of 4 on 2 ranks.
    rates = summary["throughput"]
    assert rates["throughput/samples_per_s"] * rates["time/step_s"] == pytest.approx(4 * 2)
    assert rates["time/train_s"] == pytest.approx(STEPS * rates["time/step_s"])
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
        "throughput/run_samples_per_s",
        "time/run_step_s",
        "memory/peak_rss_gib",
        "memory/analytic_1b_train_state_gib",
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
    base_path = json.loads((adapter / "run_config.json").read_text())["model"]["name_or_path"]
    base = load_model(base_path, quantization="nf4", compute_dtype=torch.float32, device="cpu")
    model = PeftModel.from_pretrained(base, adapter)
    reloaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert reloaded
    saved = {k.removeprefix("module."): v for k, v in states["module"].items() if "lora_" in k}
    # The exported adapter holds exactly the weights of the DeepSpeed checkpoint.
    for name, value in reloaded.items():
        assert torch.equal(value, saved[name]), name


def test_adapter_carries_a_filled_model_card(demo_run):
    """peft's blank template is replaced by a card the Hub's parser reads, with the final scores."""
    from huggingface_hub import ModelCard

    _, _, summary = demo_run
    card = ModelCard.load(Path(summary["adapter"]) / "README.md")
    assert "[More Information Needed]" not in card.text
    data = card.data
    run_config = json.loads((Path(summary["adapter"]) / "run_config.json").read_text())
    assert data.library_name == "peft" and "qlora" in data.tags
    assert data.base_model == run_config["model"]["name_or_path"]
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results["cider"] == pytest.approx(summary["eval"]["cider"])
    assert summary["run_id"] in card.text and "load_adapter" in card.text


def test_resume_continues_from_the_checkpoint(demo_run, mlflow_server, demo_assets):
    tmp, _, first = demo_run
    launch(demo_assets, tmp, mlflow_server.uri, f"train.steps={STEPS + 4}", "eval.num_samples=0")
    summary = json.loads((tmp / "run/summary.json").read_text())
    assert summary["steps"] == STEPS + 4
    # The loss history carried in the checkpoint continues instead of restarting, in the same MLflow run.
    assert summary["first_loss"] == first["first_loss"]
    assert summary["run_id"] == first["run_id"]
    steps = [
        m.step for m in MlflowClient(mlflow_server.uri).get_metric_history(first["run_id"], "train/loss")
    ]
    assert sorted(steps) == list(range(1, STEPS + 5))
    assert Path(summary["checkpoint"]).name == f"global_step{STEPS + 4}"


def test_merged_export_matches_the_adapter_model(demo_run, tmp_path):
    """dequantize → merge → 16-bit save_pretrained reproduces the QLoRA model's outputs."""
    _, _, summary = demo_run
    from peft import PeftModel

    from models.loading import load_model
    from models.modeling_video_llama import VideoLlamaForConditionalGeneration
    from models.processor import VideoLlamaProcessor
    from trainer.export import main as export_main

    export_main(["--adapter", summary["adapter"], "--out", str(tmp_path / "merged"), "--dtype", "float32"])
    merged = VideoLlamaForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    assert not any("4bit" in type(m).__name__ for m in merged.modules())
    base_path = json.loads((Path(summary["adapter"]) / "run_config.json").read_text())["model"][
        "name_or_path"
    ]
    base = load_model(base_path, quantization="nf4", compute_dtype=torch.float32, device="cpu")
    reference = PeftModel.from_pretrained(base, summary["adapter"]).eval()
    prompt = VideoLlamaProcessor.from_pretrained(tmp_path / "merged").generation_inputs(2)
    pixels = torch.randn(2, 4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = merged(pixel_values=pixels, **prompt).logits
        want = reference(pixel_values=pixels, **prompt).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

"""Whole training runs of the demo config: exact resume, preemption, kills mid-save, NaN guard, ZeRO-3.

Each test starts ``train.py`` in a subprocess (one process, or 2 CPU ranks through the real
``deepspeed`` launcher) on assets made once per session.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from models.towers import FRAME_POSITION_EMBEDDING
from tests.conftest import REPO, run_training, train_command, training_env
from trainer.checkpoint import latest_tag, model_states_files

pytestmark = pytest.mark.e2e


def sqlite_uri(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'mlflow.db'}"


def checkpoint_state(run_dir: Path) -> dict:
    tag = latest_tag(run_dir / "checkpoints")
    assert tag is not None
    return torch.load(model_states_files(run_dir / "checkpoints" / tag)[0], weights_only=False)


def trained_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The latest checkpoint's trainable weights, consolidated by DeepSpeed's zero_to_fp32 (under
    ZeRO-3 the model states hold partitioned tensors empty)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    root = run_dir / "checkpoints"
    return get_fp32_state_dict_from_zero_checkpoint(root, latest_tag(root), exclude_frozen_parameters=True)


def partitioning_everything(tmp: Path, zero3_json: str) -> Path:
    """A ZeRO-3 JSON of ds_configs/ with stage3_param_persistence_threshold 0. Its 1e5 elements would
    keep every LoRA tensor of the tiny preset whole on each rank; at 0 they are all partitioned."""
    ds = json.loads((REPO / "ds_configs" / zero3_json).read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = tmp / f"partitioned_{zero3_json}"
    path.write_text(json.dumps(ds))
    return path


class Training:
    """A training process whose stderr (tqdm's progress) is read as it runs."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=training_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.output = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for chunk in iter(lambda: self.proc.stdout.read1(4096), b""):
            self.output += chunk

    def wait_for_step(self, step: int, timeout: float = 600) -> int:
        deadline = time.time() + timeout
        while time.time() < deadline:
            done = [int(m) for m in re.findall(rb"train:.*?\| *(\d+)/\d+", self.output)]
            if done and max(done) >= step:
                return max(done)
            assert self.proc.poll() is None, self.output.decode(errors="replace")[-4000:]
            time.sleep(0.2)
        raise TimeoutError(f"step {step} not reached in {timeout}s")

    def finish(self, timeout: float = 300) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc


@pytest.mark.parametrize(
    ("zero", "method"),
    [
        ("zero2_offload", "qlora"),
        ("zero3", "qlora"),
        ("zero3_offload", "qlora"),
        # the shuffled control: temporal QLoRA's gates, plus a permutation stream that must resume too
        ("zero2_offload", "temporal_qlora_shuffled"),
    ],
    ids=["zero2_offload", "zero3", "zero3_offload", "zero2_offload-temporal_qlora_shuffled"],
)
def test_resume_reproduces_the_uninterrupted_run(demo_assets, tmp_path, zero, method):
    """Stopped at step 5 and resumed == never stopped, bit for bit (one rank, CPU).

    The same batches, RNG, frame selector and optimizer state; the resumed process also counts
    FLOPs on its first step again (FlopCounterMode must not change the numbers), and DeepSpeed's
    CPU Adam gets its running bias-correction products replayed (trainer/checkpoint.py). Under
    ZeRO-3 every trained tensor is partitioned, and the adapter saved is gathered from the partitions.
    """
    ds_file = f"ds_configs/{zero}.json"
    if "zero3" in zero:
        ds_file = partitioning_everything(tmp_path, f"{zero}.json")
    common = ["eval.num_samples=0", "data.shuffle_buffer=16", "train.log_every=1", "train.keep_last=3"]
    common += [f"deepspeed.config={ds_file}", f"adapter.method={method}"]
    uri = sqlite_uri(tmp_path)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_training(
        train_command(
            demo_assets, straight, uri, "train.steps=10", "train.save_every=5", "train.resume=none", *common
        ),
        tmp_path / "straight.log",
    )
    # The stopped run is the straight run's step-5 checkpoint, resumed with the same config.
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints/global_step5", resumed / "checkpoints/global_step5")
    (resumed / "checkpoints/latest").write_text("global_step5")
    proc = run_training(
        train_command(demo_assets, resumed, uri, "train.steps=10", *common), tmp_path / "resumed.log"
    )
    # told what differs from the checkpointed run (save_every, which leaves the numbers alone)
    assert (
        "resuming with 1 setting(s) other than the checkpointed run's: train.save_every: 5 -> 0"
        in proc.stdout + proc.stderr
    )

    want, got = checkpoint_state(straight), checkpoint_state(resumed)
    assert len(want["losses"]) == len(got["losses"]) == 10
    assert got["losses"] == want["losses"]
    assert got["data"] == want["data"] and got["samples_seen"] == want["samples_seen"]
    assert want["module"].keys() == got["module"].keys()
    for name, value in want["module"].items():
        assert torch.equal(got["module"][name], value), name
    want_weights, got_weights = trained_weights(straight), trained_weights(resumed)
    assert want_weights and want_weights.keys() == got_weights.keys() <= set(got["module"])
    if method.startswith("temporal_qlora"):  # the order pathway is checkpointed and resumed with the adapter
        assert any(FRAME_POSITION_EMBEDDING in name for name in want_weights)
    for name, value in want_weights.items():
        assert torch.equal(got_weights[name], value), name
    if "zero3" in zero:
        partitioned = [name for name, value in got["module"].items() if value.numel() == 0]
        assert sorted(partitioned) == sorted(got_weights)

    # The adapter folder, loaded on a fresh base, holds the trained values (gathered under ZeRO-3).
    from models.adapters import load_adapter
    from models.loading import load_model

    model = json.loads((resumed / "adapter/run_config.json").read_text())["model"]
    path, quantization = model["name_or_path"], model["quantization"]
    base = load_model(path, quantization=quantization, compute_dtype=torch.float32, device="cpu")
    loaded = dict(load_adapter(base, resumed / "adapter").named_parameters())
    for name, value in got_weights.items():
        assert torch.equal(loaded[name], value), name


def test_sigterm_checkpoints_stops_and_resumes(demo_assets, tmp_path):
    run_dir = tmp_path / "run"
    uri = sqlite_uri(tmp_path)
    training = Training(train_command(demo_assets, run_dir, uri, "train.steps=100000", "eval.num_samples=0"))
    training.wait_for_step(3)
    training.proc.send_signal(signal.SIGTERM)
    assert training.finish() == 0, training.output.decode(errors="replace")[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    stopped = summary["steps"]
    assert summary["preempted"] is True and 3 <= stopped < 100000
    assert latest_tag(run_dir / "checkpoints") == f"global_step{stopped}"

    run_training(
        train_command(demo_assets, run_dir, uri, f"train.steps={stopped + 3}", "eval.num_samples=0"),
        tmp_path / "resume.log",
    )
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert "setting(s) other than the checkpointed run's" not in (tmp_path / "resume.log").read_text()
    assert resumed["steps"] == stopped + 3 and resumed["preempted"] is False
    assert resumed["run_id"] == summary["run_id"]  # the same MLflow run continues


def test_kill_during_checkpointing_leaves_the_last_complete_checkpoint(demo_assets, tmp_path):
    run_dir = tmp_path / "run"
    uri = sqlite_uri(tmp_path)
    cmd = train_command(
        demo_assets, run_dir, uri, "train.steps=100000", "train.save_every=1", "eval.num_samples=0"
    )
    training = Training(cmd)
    training.wait_for_step(4)
    time.sleep(random.uniform(0.0, 0.5))  # anywhere in a step, most likely inside a save
    training.proc.send_signal(signal.SIGKILL)
    training.finish()

    tag = latest_tag(run_dir / "checkpoints")
    assert tag is not None
    step = int(tag.removeprefix("global_step"))
    assert (run_dir / "checkpoints" / tag / "mp_rank_00_model_states.pt").is_file()
    run_training(
        train_command(demo_assets, run_dir, uri, f"train.steps={step + 2}", "eval.num_samples=0"),
        tmp_path / "resume.log",
    )
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == step + 2


def test_nonfinite_losses_are_skipped_then_stop_the_run(demo_assets, tmp_path):
    run_dir = tmp_path / "run"
    cmd = train_command(
        demo_assets,
        run_dir,
        sqlite_uri(tmp_path),
        "train.steps=40",
        "eval.num_samples=0",
        "train.lr=1e30",
        "train.warmup_steps=0",
        "train.grad_clip=0",
        "train.max_nonfinite_steps=3",
    )
    proc = run_training(cmd, tmp_path / "nan.log", expect_rc=1)
    assert "3 steps in a row had a NaN/inf loss" in proc.stdout + proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["nonfinite_steps"] == 3 and summary["steps"] < 40
    assert summary["first_loss"] is not None  # the finite steps before were trained and logged


def test_zero3_qlora_on_two_ranks(demo_assets, tmp_path):
    run_dir = tmp_path / "run"
    cmd = train_command(
        demo_assets,
        run_dir,
        sqlite_uri(tmp_path),
        "deepspeed.config=ds_configs/zero3.json",
        "train.steps=6",
        "eval.num_samples=8",
        "eval.batch_size=4",
        ranks=2,
    )
    run_training(cmd, tmp_path / "zero3.log")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6
    port = cmd[cmd.index("--master_port") + 1]  # DeepSpeed's CPU all-reduce workspaces are gone
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    assert summary["last_loss"] < summary["first_loss"]
    assert set(summary["eval"]) >= {"cider", "bleu4"}
    from safetensors.torch import load_file

    adapter = load_file(run_dir / "adapter/adapter_model.safetensors")
    # Gathered from the ZeRO-3 shards: full shapes, and the trained B matrices are no longer zero.
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.numel() > 0 for v in adapter.values())
    assert any(v.abs().sum() > 0 for v in lora_b)


def test_zero3_on_two_ranks_resumes_the_uninterrupted_run(demo_assets, tmp_path):
    """Two ranks, every trained tensor split between them: one zero_pp_rank_<r> file pair per rank.
    Resumed at step 5, where a missing CPU FusedAdam replay would show (trainer/checkpoint.py)."""
    ds_file = partitioning_everything(tmp_path, "zero3.json")
    common = ["eval.num_samples=0", "train.log_every=1", "train.steps=7", f"deepspeed.config={ds_file}"]
    uri = sqlite_uri(tmp_path)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    saving = ["train.save_every=5", "train.keep_last=2"]
    straight_cmd = train_command(demo_assets, straight, uri, *saving, *common, ranks=2)
    run_training(straight_cmd, tmp_path / "straight.log")
    step5 = straight / "checkpoints/global_step5"
    assert [p.name for p in model_states_files(step5)] == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt",
        "zero_pp_rank_1_mp_rank_00_model_states.pt",
    ]
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(step5, resumed / "checkpoints/global_step5")
    (resumed / "checkpoints/latest").write_text("global_step5")
    run_training(train_command(demo_assets, resumed, uri, *common, ranks=2), tmp_path / "resumed.log")

    want, got = checkpoint_state(straight), checkpoint_state(resumed)
    assert len(got["losses"]) == 7 and got["losses"] == want["losses"]
    want_weights, got_weights = trained_weights(straight), trained_weights(resumed)
    assert want_weights and want_weights.keys() == got_weights.keys()
    for name, value in want_weights.items():
        assert torch.equal(got_weights[name], value), name


@pytest.mark.parametrize(
    "overrides",
    [
        ["adapter.method=temporal_qlora", "adapter.gate.mode=rank"],
        [
            "adapter.method=temporal_qlora_shuffled",
            "adapter.gate.inputs=[motion,position,delta]",
            "train.gate_lr=1e-2",
        ],
        ["adapter.method=temporal_qlora_constant"],
        ["adapter.method=ranked_qlora", "adapter.allocation=entropy", "adapter.budget=60000"],
        ["adapter.method=adalora", "deepspeed.config=ds_configs/zero0.json", "adapter.budget=50000"],
        ["adapter.method=qlora8", "train.vit_lr=1e-4", "train.aligner_lr=2e-4", "train.schedule=constant"],
        ["adapter.method=prefix", "adapter.num_virtual_tokens=8"],
        ["adapter.method=adapter", "adapter.placement=both", "adapter.bottleneck.dim=8"],
        ["adapter.method=frozen", "eval.num_samples=4", "eval.batch_size=4"],
        ["adapter.method=qlora", "adapter.placement=fusion"],
        ["adapter.method=qlora", "model.quantization={vision: int8, llm: nf4}"],
        ["adapter.method=qlora", "model.quantization={fusion: nf4}", "adapter.placement=all"],
    ],
    ids=[
        "temporal_qlora",
        "shuffled_gates",
        "constant_gate",
        "ranked_qlora_entropy",
        "adalora",
        "qlora8",
        "prefix",
        "adapter",
        "frozen",
        "qlora_fusion",
        "qlora_int8_vit",
        "qlora_nf4_fusion",
    ],
)
def test_research_methods_train_through_deepspeed(demo_assets, tmp_path, monkeypatch, overrides):
    """Every method trains through the real Trainer + DeepSpeed engine (in this process: `train.main`,
    the code path of ``python train.py``, without a new interpreter per method), and its exported
    adapter loads back onto a fresh base in the run's resolved weight format (bit-for-bit round
    trips: tests/models/test_adapters.py). ``frozen`` is the zero-shot baseline: no step, evaluation only."""
    from mlflow.tracking import MlflowClient

    import train
    from models.adapters import load_adapter
    from models.loading import load_model

    monkeypatch.chdir(REPO)
    run_dir = tmp_path / "run"
    uri = sqlite_uri(tmp_path)
    cmd = train_command(demo_assets, run_dir, uri, "train.steps=8", "eval.num_samples=0", *overrides)
    train.main(cmd[2:])  # past the interpreter and "train.py"
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = MlflowClient(uri).get_run(summary["run_id"]).data.metrics
    if "adapter.method=frozen" in overrides:
        assert summary["steps"] == 0 and summary["trainable_params"] == 0 and summary["first_loss"] is None
        assert "cider" in summary["eval"] and "eval/cider" in metrics
        assert not (run_dir / "adapter").exists()
        return
    assert summary["last_loss"] < summary["first_loss"]
    if "temporal" in overrides[0]:
        assert 0.0 <= metrics["gate/mean"] <= 1.0 and "gate/frame/0/mean" in metrics
        # A constant gate is the same for every frame of a clip; the others differ across frames.
        assert (metrics["gate/spread"] == 0.0) == ("constant" in overrides[0])
    if "train.gate_lr=1e-2" in overrides:
        # Its own group, scaled by the schedule as the others are (configs/demo.yaml: train.lr 3e-3).
        assert metrics["train/lr_gate"] / metrics["train/lr_llm"] == pytest.approx(1e-2 / 3e-3)
    if "train.vit_lr=1e-4" in overrides:  # own rates for the ViT and the aligner, through the schedule
        assert (metrics["train/lr_vit"], metrics["train/lr_aligner"]) == pytest.approx((1e-4, 2e-4))
        assert metrics["train/lr"] == metrics["train/lr_llm"] > metrics["train/lr_aligner"]
    if "budget" in " ".join(overrides) and "adalora" not in overrides[0]:
        assert abs(summary["trainable_params"] - 60000) <= 0.02 * 60000
        # The ranks chosen per group are metrics of the run, for the comparison's allocation plot.
        assert metrics["allocation/budget_params"] == 60000 and metrics["allocation/rank_video_qformer"] >= 1
    if "adalora" in overrides[0]:  # logged as it trains: the last value holds the kept components
        assert 0 < metrics["allocation/lora_params_llm"]
    run_config = json.loads((run_dir / "adapter/run_config.json").read_text())
    quantization = run_config["model"]["quantization"]  # "auto" resolved by the trainer
    expected = {
        "model.quantization={vision: int8, llm: nf4}": {"vision": "int8", "fusion": "none", "llm": "nf4"},
        "model.quantization={fusion: nf4}": {"vision": "nf4", "fusion": "nf4", "llm": "nf4"},
    }
    named = [expected[o] for o in overrides if o in expected]
    assert quantization == (named[0] if named else "int8" if "qlora8" in overrides[0] else "nf4")
    base = load_model(
        run_config["model"]["name_or_path"],
        quantization=quantization,
        compute_dtype=torch.float32,
        device="cpu",
    )
    model = load_adapter(base, run_dir / "adapter")
    assert not any(p.requires_grad for p in model.parameters())  # loaded for inference
    if "temporal" in overrides[0] or "adapter.placement=fusion" in overrides:
        from safetensors.torch import load_file

        from models.towers import tower_of

        weights = load_file(run_dir / "adapter/adapter_model.safetensors")
        checkpointed = trained_weights(run_dir)
        if "temporal" in overrides[0]:  # the order pathway trained, checkpointed and exported alike
            key = next(k for k in checkpointed if FRAME_POSITION_EMBEDDING in k)
            exported = next(v for k, v in weights.items() if FRAME_POSITION_EMBEDDING in k)
            base_value = model.base_model.model.get_submodule(FRAME_POSITION_EMBEDDING).original_module.weight
            assert torch.equal(checkpointed[key].to(exported.dtype), exported)
            assert not torch.equal(exported, base_value.to(exported.dtype))
        else:  # fusion: LoRA on both Q-Formers only, and it trained
            lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
            towers = {tower_of(k.removeprefix("base_model.model.")) for k in lora_b}
            assert towers == {"frame_qformer", "video_qformer"}
            assert all(v.abs().sum() > 0 for v in lora_b.values())
    if overrides[0].split("=")[1] in ("qlora8", "adapter"):
        from safetensors.torch import load_file

        # The factors that start at zero (LoRA B, the bottleneck up-projection) have been trained.
        weights = load_file(run_dir / "adapter/adapter_model.safetensors")
        zero_init = [v for k, v in weights.items() if "lora_B" in k or ".adapter.up." in k]
        assert zero_init and all(v.abs().sum() > 0 for v in zero_init)

"""The same command with the same seed gives the same assets and the same run, whatever the
environment: two processes that differ in TOKENIZERS_PARALLELISM (which changes how the `tokenizers`
library counts) and in Python's hash seed build the demo's base model, tokenizer and SynthVid shards
(plus SynthVid's other tasks) byte for byte alike, and train the same first ten losses on them."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, training_env

pytestmark = pytest.mark.e2e

STEPS = 10
# Enough clips for the ten steps of four (the eval split is built too: it is part of the assets).
DATA = ["data.synthvid.num_train=40", "data.synthvid.num_eval=8", "data.synthvid.samples_per_shard=8"]

BUILD = """
import sys
from data.synthvid import write_synthvid
from trainer.assets import prepare_assets
from trainer.config import load_config

root = sys.argv[1]
prepare_assets(load_config("configs/demo.yaml", [f"assets_dir={root}/assets", *sys.argv[2:]]))
for task in ("order", "retrieval"):
    write_synthvid(f"{root}/synthvid-{task}", task=task, num=24, seed=3, samples_per_shard=12)
"""


def _build_and_train(root: Path, env: dict[str, str]) -> None:
    for cmd in (
        [sys.executable, "-c", BUILD, str(root), *DATA],
        [
            sys.executable, "train.py", "--config", "configs/demo.yaml",
            f"assets_dir={root / 'assets'}", *DATA, f"output_dir={root / 'run'}",
            f"train.steps={STEPS}", "train.micro_batch_size=4", "eval.num_samples=0",
            f"tracking.uri=sqlite:///{root / 'mlflow.db'}", f"tracking.artifact_location={root / 'mlartifacts'}",
        ],
    ):  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def _hashes(root: Path) -> dict[str, str]:
    files = [p for p in sorted(root.rglob("*")) if p.is_file()]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _losses(root: Path) -> list[float]:
    run_id = json.loads((root / "run/summary.json").read_text())["run_id"]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return [m.value for m in sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)]


def test_two_environments_build_identical_assets_and_train_identical_losses(tmp_path):
    base = {k: v for k, v in training_env().items() if k not in ("TOKENIZERS_PARALLELISM", "PYTHONHASHSEED")}
    envs = {
        "a": {**base, "TOKENIZERS_PARALLELISM": "false", "PYTHONHASHSEED": "1"},
        "b": {**base, "PYTHONHASHSEED": "2"},  # tokenizers' default: parallel
    }
    for name, env in envs.items():
        _build_and_train(tmp_path / name, env)
    assets = {name: {} for name in envs}
    for name in envs:
        for folder in ("assets", "synthvid-order", "synthvid-retrieval"):
            assets[name].update({f"{folder}/{k}": v for k, v in _hashes(tmp_path / name / folder).items()})
    tokenizer = [k for k in assets["a"] if k.endswith("tokenizer.json")]
    assert tokenizer and any(k.endswith("model.safetensors") for k in assets["a"])
    assert sum(k.endswith(".tar") for k in assets["a"]) == 5 + 1 + 2 + 2  # train, eval, order, retrieval
    assert assets["a"] == assets["b"]
    losses = {name: _losses(tmp_path / name) for name in envs}
    assert len(losses["a"]) == STEPS
    assert losses["a"] == losses["b"]

"""A training run whose decoder blocks forever on one clip finishes, and MLflow counts the timeout."""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_training, train_command

pytestmark = pytest.mark.e2e

STEPS = 36  # > one epoch of the 128 training clips at 4 per batch: the blocked clip comes up


def _first_train_clip(assets: Path) -> bytes:
    shard = sorted(assets.glob("synthvid/*-train-*/*.tar"))[0]
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".mp4"))
        return tar.extractfile(member).read()


def test_blocked_decode_is_skipped_counted_in_mlflow_and_training_goes_on(
    demo_assets, mlflow_server, tmp_path
):
    blocked = hashlib.sha1(_first_train_clip(demo_assets)).hexdigest()
    out = tmp_path / "run"
    cmd = train_command(
        demo_assets,
        out,
        mlflow_server.uri,
        f"train.steps={STEPS}",
        "train.log_every=4",
        "eval.num_samples=0",
        "data.decode_timeout_s=2",
        "tracking.experiment=decode-timeout",
    )
    # python train.py ... with decord's decode_frames blocking on that clip (in the DataLoader
    # worker and its decoder children, which inherit it through fork).
    cmd = [sys.executable, "-m", "tests.data.blocking_decoder", blocked, *cmd[2:]]
    run_training(cmd, tmp_path / "train.log", timeout=900)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS  # every step ran: the block stalled nothing
    client = MlflowClient(mlflow_server.uri)
    history = client.get_metric_history(summary["run_id"], "data/bad_samples_decode_timeout")
    # once per epoch the clip is reached; the other clips were all decoded
    assert history and max(m.value for m in history) >= 1
    assert "data/bad_samples_decode_error" not in client.get_run(summary["run_id"]).data.metrics

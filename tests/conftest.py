"""Shared fixtures: a real MLflow tracking server on 127.0.0.1 for the tests that track."""

from __future__ import annotations

import os

# tokenizers switches its thread pool off in a process that forked after using it (DataLoader
# workers in the data tests), and its BPE trainer can then break ties between equal pair counts
# differently: the tiny tokenizer, hence the tiny model, would depend on which tests ran first.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mlflow_server import MlflowServer, free_port

REPO = Path(__file__).resolve().parents[1]


# `make test` runs the suite on pytest-xdist workers (-n 2 --dist loadgroup). A module's tests stay
# on one worker, so that its module-scoped fixtures (a trained run, a QUICK sweep, a benchmark's
# children: up to ~5 min each) are built once instead of once per worker; tests marked
# xdist_group("name") share a worker across modules (tests/slurm: one cluster per session). The
# modules that run the launchers go first, so that the last minutes are short unit tests on both
# workers rather than one long run on one. (optionalhook: the suite also runs without pytest-xdist.)
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ModuleOrGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.rfind("@") > nodeid.rfind("]"):  # xdist's "<nodeid>@<group>" under loadgroup
                return nodeid.rsplit("@", 1)[1]
            return nodeid.split("::", 1)[0]

    config.option.loadscopereorder = False  # the order pytest_collection_modifyitems gives
    return ModuleOrGroupScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules holding an ``e2e`` or ``xdist_group`` test first, each module's tests kept together."""
    heavy = {
        item.path
        for item in items
        if item.get_closest_marker("e2e") or item.get_closest_marker("xdist_group")
    }
    items.sort(key=lambda item: item.path not in heavy)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def single_rank_group():
    """This process as a one-rank gloo process group (as `train.py` makes it without a launcher), for
    a module that builds DeepSpeed engines in-process; destroyed, and the environment it set
    restored, when the module ends. Left behind, it would make every later test in this process
    (a pytest-xdist worker runs many modules) see a world of 1 whatever WORLD_SIZE says
    (`data.pipeline` reads the group first)."""
    import deepspeed.comm

    from trainer.distributed import init_distributed

    environ = dict(os.environ)
    yield init_distributed()
    deepspeed.comm.destroy_process_group()
    os.environ.clear()
    os.environ.update(environ)


DEMO_DATA = [
    "data.synthvid.num_train=128",
    "data.synthvid.num_eval=16",
    "data.synthvid.samples_per_shard=8",
]


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory) -> Path:
    """The assets_dir of a tiny base model and SynthVid shards, made once per session the way the
    trainer makes them."""
    from trainer.assets import prepare_assets
    from trainer.config import load_config

    root = tmp_path_factory.mktemp("assets")
    prepare_assets(load_config(REPO / "configs/demo.yaml", asset_overrides(root)))
    return root


def asset_overrides(root: Path) -> list[str]:
    return [f"assets_dir={root}", *DEMO_DATA]


def train_command(
    assets: Path, output_dir: Path, tracking_uri: str, *overrides: str, ranks: int = 0
) -> list[str]:
    """``python train.py`` (ranks=0) or ``deepspeed --num_gpus N train.py`` on the demo config."""
    bin_dir = Path(sys.executable).parent
    launcher = (
        [sys.executable]
        if ranks == 0
        else [str(bin_dir / "deepspeed"), "--num_gpus", str(ranks), "--master_port", str(free_port())]
    )
    return [
        *launcher,
        "train.py",
        "--config",
        "configs/demo.yaml",
        f"output_dir={output_dir}",
        *asset_overrides(assets),
        "train.micro_batch_size=4",
        f"tracking.uri={tracking_uri}",
        "tracking.flush_interval_s=0.5",
        *overrides,
    ]


# Set in this process by tests that start a process group; a child must not inherit them (it would
# try to join, or listen on, this process's rendezvous port).
_DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def training_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_training(
    cmd: list[str], log_path: Path, timeout: int = 900, expect_rc: int = 0
) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=training_env(), capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    log_path.write_text(log)
    assert proc.returncode == expect_rc, log[-6000:]
    return proc

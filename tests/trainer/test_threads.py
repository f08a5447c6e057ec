"""Intra-op thread count per rank: config over explicit OMP_NUM_THREADS over the cores-based auto value."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO
from trainer.config import ConfigError, load_config
from trainer.threads import (
    ThreadSetting,
    apply_threads,
    auto_threads,
    available_cores,
    env_threads,
    local_world_size,
    resolve_threads,
)

# What torchrun's workers carry when it started several of them on this node.
TORCHRUN = {"TORCHELASTIC_RUN_ID": "none", "LOCAL_WORLD_SIZE": "4"}


def resolve(configured=None, environ=None, *, cores=2, workers=1, ranks=1) -> ThreadSetting:
    return resolve_threads(
        configured, num_workers=workers, local_world_size=ranks, environ=environ or {}, cores=cores
    )


@pytest.mark.parametrize(
    ("cores", "ranks", "workers", "expected"),
    [
        (2, 1, 1, 1),  # the demo on 2 cores: the worker decodes on the other core
        (2, 1, 0, 2),  # no workers: the rank decodes between steps and keeps both cores
        (16, 1, 4, 12),
        (96, 8, 4, 8),  # a GPU node: 12 cores per rank, 4 of them for its workers
        (16, 2, 1, 7),
        (7, 2, 0, 3),  # an odd core is not split
        (2, 2, 1, 1),  # more demand than cores: still one thread
        (1, 1, 4, 1),
    ],
)
def test_auto_shares_cores_between_ranks_and_leaves_a_core_per_worker(cores, ranks, workers, expected):
    assert auto_threads(cores, num_workers=workers, local_world_size=ranks) == expected
    setting = resolve(cores=cores, workers=workers, ranks=ranks)
    assert setting == ThreadSetting(expected, "auto", setting.detail)
    assert f"{cores} cores // {ranks} local ranks - {workers} data workers" in setting.detail


@pytest.mark.parametrize(("cores", "ranks", "workers"), [(0, 1, 0), (4, 0, 0), (4, 1, -1)])
def test_auto_rejects_impossible_inputs(cores, ranks, workers):
    with pytest.raises(ValueError, match="auto_threads needs"):
        auto_threads(cores, num_workers=workers, local_world_size=ranks)


def test_config_wins_over_env_and_says_what_it_left_aside():
    setting = resolve(3, {"OMP_NUM_THREADS": "5"})
    assert (setting.num_threads, setting.source) == (3, "config")
    assert "OMP_NUM_THREADS=5" in setting.detail
    assert resolve(3, {"OMP_NUM_THREADS": "3"}).detail == "train.num_threads"
    # An explicit config value is taken as it is, even above the core count.
    assert resolve(8, cores=2).num_threads == 8


@pytest.mark.parametrize("bad", [0, -2, True])
def test_config_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="train.num_threads must be a positive integer"):
        resolve(bad)


@pytest.mark.parametrize(("raw", "expected"), [("4", 4), (" 3 ", 3), ("4,2", 4), ("+2", 2), ("16", 16)])
def test_explicit_env_is_read_as_torch_reads_it(raw, expected):
    assert env_threads({"OMP_NUM_THREADS": raw}) == (expected, "")
    setting = resolve(environ={"OMP_NUM_THREADS": raw}, cores=64)
    assert (setting.num_threads, setting.source) == (expected, "env")


@pytest.mark.parametrize("raw", ["", "0", "-1", "four", "2.5", ","])
def test_unusable_env_falls_back_to_auto_and_is_named(raw):
    value, why = env_threads({"OMP_NUM_THREADS": raw})
    assert value is None and repr(raw) in why
    setting = resolve(environ={"OMP_NUM_THREADS": raw}, cores=4, workers=1)
    assert (setting.num_threads, setting.source) == (3, "auto")
    assert "ignored" in setting.detail


def test_absent_env_is_not_a_problem():
    assert env_threads({}) == (None, "")


def test_torchruns_own_default_is_replaced_by_auto():
    setting = resolve(environ={**TORCHRUN, "OMP_NUM_THREADS": "1"}, cores=48, workers=2, ranks=4)
    assert (setting.num_threads, setting.source) == (10, "auto")
    assert "torchrun" in setting.detail and "train.num_threads=1" in setting.detail


@pytest.mark.parametrize(
    "environ",
    [
        {**TORCHRUN, "OMP_NUM_THREADS": "2"},  # not torchrun's value: someone chose it
        {**TORCHRUN, "LOCAL_WORLD_SIZE": "1", "OMP_NUM_THREADS": "1"},  # torchrun sets nothing for 1 worker
        {"LOCAL_SIZE": "4", "OMP_NUM_THREADS": "1"},  # deepspeed launcher: only set with core binding
    ],
)
def test_other_env_values_under_launchers_are_honoured(environ):
    expected = int(environ["OMP_NUM_THREADS"])
    assert resolve(environ=environ, cores=48, ranks=4) == ThreadSetting(
        expected, "env", f"OMP_NUM_THREADS={expected}"
    )


def test_config_wins_over_torchruns_default_too():
    assert resolve(1, {**TORCHRUN, "OMP_NUM_THREADS": "1"}, cores=48, ranks=4).source == "config"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"LOCAL_WORLD_SIZE": "4", "LOCAL_SIZE": "2"}, 4),  # torchrun's name first
        ({"LOCAL_SIZE": "2"}, 2),  # the deepspeed launcher's
        ({}, 1),
        ({"LOCAL_WORLD_SIZE": "", "LOCAL_SIZE": "x"}, 1),
        ({"LOCAL_WORLD_SIZE": "0", "LOCAL_SIZE": "3"}, 3),
    ],
)
def test_local_world_size_from_the_launchers_variables(environ, expected):
    assert local_world_size(environ) == expected


def test_default_cores_are_this_processs_affinity():
    assert available_cores() == len(os.sched_getaffinity(0))
    assert resolve_threads(None, num_workers=0, local_world_size=1, environ={}).num_threads == len(
        os.sched_getaffinity(0)
    )


def test_apply_sets_torchs_intra_op_threads():
    before = torch.get_num_threads()
    try:
        apply_threads(ThreadSetting(1, "config", "test"))
        assert torch.get_num_threads() == 1
        apply_threads(ThreadSetting(3, "config", "test"))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_apply_governs_parallel_work_and_leaves_the_environment_alone():
    """In a fresh process narrowed to one core after torch started (torch's count is then every core
    of the machine): auto reads the narrowed affinity and gives 1, torch and OpenMP then run 1 thread, and
    OMP_NUM_THREADS stays unset so a later resolve in the process is still auto."""
    script = (
        "import os, torch\n"
        "from trainer.threads import apply_threads, resolve_threads\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "s = resolve_threads(None, num_workers=0, local_world_size=1)\n"
        "apply_threads(s)\n"
        "torch.randn(256, 256) @ torch.randn(256, 256)\n"
        "info = torch.__config__.parallel_info()\n"
        "omp = [l for l in info.splitlines() if 'omp_get_max_threads' in l][0].split(':')[-1].strip()\n"
        "print(s.num_threads, s.source, torch.get_num_threads(), omp, 'OMP_NUM_THREADS' in os.environ)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "auto", "1", "1", "False"], out.stdout


def test_config_key_reads_from_yaml_overrides():
    assert load_config(None).train.num_threads is None
    assert load_config(None, ["train.num_threads=2"]).train.num_threads == 2
    with pytest.raises(ConfigError, match="train.num_threads"):
        load_config(None, ["train.num_threads=two"])

"""trainer.jit_ops: which DeepSpeed ops a run loads, and build locks left by killed JIT builds.

The locks here are real: taken by torch's own FileBaton in a child process (the call torch's JIT
build makes), or by a real JIT build of DeepSpeed's CPU Adam, and left behind by ``kill -9``. The
one thing faked is "is this op prebuilt?": a prebuilt install (``make setup``) never JIT-builds,
so the tests say the op is not prebuilt to reach the lock check.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from trainer import jit_ops
from trainer.jit_ops import StaleJitLockError, check_jit_locks

OFFLOAD = REPO / "ds_configs/zero2_offload.json"

# Takes <argv[1]> the way torch's JIT build does (FileBaton.try_acquire), says so, and holds it.
_HOLD_LOCK = """
import sys, time
from torch.utils.file_baton import FileBaton
baton = FileBaton(sys.argv[1])
assert baton.try_acquire()
print("held", flush=True)
time.sleep(300)
"""

# A real JIT build of DeepSpeed's CPU Adam into $TORCH_EXTENSIONS_DIR (what DeepSpeedCPUAdam does
# in an install without prebuilt ops).
_JIT_BUILD = """
from deepspeed.ops.op_builder.cpu import CPUAdamBuilder
print("loading", flush=True)
CPUAdamBuilder().jit_load(verbose=False)
print("built", flush=True)
"""


@pytest.fixture
def ext_dir(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "torch_extensions"
    root.mkdir()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(root))
    return root


@pytest.fixture
def not_prebuilt(monkeypatch):
    """Every op counts as JIT-built (the only stand-in in these tests)."""
    monkeypatch.setattr(jit_ops, "is_prebuilt", lambda builder: False)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _hold(lock: Path) -> subprocess.Popen:
    lock.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_extensions_root_is_where_torch_builds(tmp_path, monkeypatch):
    from torch.utils.cpp_extension import _get_build_directory

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "env"))
    assert Path(_get_build_directory("probe", verbose=False)).parent == jit_ops.extensions_root()
    # Torch's default: the user's cache folder plus a py<version>_<accelerator> folder.
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    default = jit_ops.extensions_root()
    assert default.parent == (tmp_path / "cache" / "torch_extensions").resolve()
    assert Path(_get_build_directory("probe", verbose=False)).parent == default


def test_ops_follow_deepspeeds_optimizer_choice(tmp_path):
    comm, cpu_adam, fused = jit_ops.COMM_OP, jit_ops.OFFLOAD_ADAM_OP, jit_ops.ADAM_OP
    for name in ("zero2_offload.json", "zero3_offload.json"):
        assert jit_ops.op_classes_for(REPO / "ds_configs" / name) == [comm, cpu_adam]
    for name in ("zero0.json", "zero2.json", "zero3.json"):
        assert jit_ops.op_classes_for(str(REPO / "ds_configs" / name)) == [comm, fused]
    ds = json.loads(OFFLOAD.read_text())
    ds["optimizer"]["params"]["torch_adam"] = True  # torch's Adam: no DeepSpeed op
    assert jit_ops.op_classes_for(ds) == [comm]
    assert jit_ops.op_classes_for({"zero_optimization": {"stage": 0}}) == [comm]  # no optimizer (frozen)
    assert jit_ops.op_classes_for(None) == [comm]
    assert jit_ops.op_classes_for(tmp_path / "missing.json") == [comm]  # the trainer reports that one


def test_a_lock_held_by_a_live_build_is_left_to_torch(ext_dir, not_prebuilt):
    lock = ext_dir / "cpu_adam" / "lock"
    holder = _hold(lock)
    try:
        start = time.monotonic()
        check_jit_locks(OFFLOAD)  # a build in progress: torch waits for it, and so do we not
        assert time.monotonic() - start < 5
        assert jit_ops.lock_holders(lock) == (holder.pid,)
    finally:
        _kill(holder)


def test_a_lock_left_by_a_killed_build_is_named(ext_dir, not_prebuilt):
    lock = ext_dir / "cpu_adam" / "lock"
    _kill(_hold(lock))
    assert lock.exists()  # what torch would wait on forever
    with pytest.raises(StaleJitLockError) as err:
        check_jit_locks(OFFLOAD)
    message = str(err.value)
    assert str(lock) in message and f"rm {lock}" in message
    assert "cpu_adam" in message
    # The run's other op has no lock; a config whose optimizer op is not cpu_adam does not trip.
    check_jit_locks(REPO / "ds_configs/zero2.json")
    lock.unlink()  # what the message says to do
    check_jit_locks(OFFLOAD)


def test_prebuilt_ops_are_not_looked_at(ext_dir, monkeypatch):
    lock = ext_dir / "cpu_adam" / "lock"
    _kill(_hold(lock))
    monkeypatch.setattr(jit_ops, "is_prebuilt", lambda builder: True)
    check_jit_locks(OFFLOAD)  # a prebuilt op is imported, never built: its old lock is harmless


def test_a_lock_released_during_the_check_is_not_stale(ext_dir, not_prebuilt, monkeypatch):
    # FileBaton.release closes its descriptor, then deletes the file: a check that falls between
    # sees a lock without holder. The second look finds it gone.
    lock = ext_dir / "cpu_adam" / "lock"
    _kill(_hold(lock))
    real_sleep = time.sleep

    def release_meanwhile(seconds):
        lock.unlink(missing_ok=True)
        real_sleep(seconds)

    monkeypatch.setattr(jit_ops.time, "sleep", release_meanwhile)
    assert jit_ops.stale_lock(lock) is None
    check_jit_locks(OFFLOAD)


def test_filesystem_type_reads_the_longest_mount():
    mountinfo = (
        "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        "40 22 0:41 / /home rw,relatime shared:20 - nfs4 server:/home rw,vers=4.2\n"
        "41 40 0:42 / /home/scratch\\040space rw - lustre 10.0.0.1@tcp:/scratch rw\n"
    )
    assert jit_ops.filesystem_type(Path("/home/u/.cache/torch_extensions/lock"), mountinfo) == "nfs4"
    assert jit_ops.filesystem_type(Path("/home/scratch space/x"), mountinfo) == "lustre"
    assert jit_ops.filesystem_type(Path("/homes/x"), mountinfo) == "ext4"
    assert jit_ops.filesystem_type(Path("/tmp"), mountinfo) == "ext4"
    assert jit_ops.filesystem_type(Path("/")) != ""  # this machine's own table


def test_a_real_jit_build_killed_midway(ext_dir, not_prebuilt):
    """The issue's failure, reproduced: kill -9 during the JIT build of CPU Adam; the next build
    waits on the lock without a word, and check_jit_locks names it instead."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(ext_dir)}
    folder = ext_dir / "cpu_adam"
    lock = folder / "lock"
    build = subprocess.Popen([sys.executable, "-c", _JIT_BUILD], env=env, cwd=REPO)
    orphans: tuple[tuple[int, str], ...] = ()
    try:
        # Mid-build: the lock is taken and ninja compiles in the op's folder.
        _wait_for(lambda: lock.exists() and jit_ops.processes_in(folder), 120, "the JIT build to start")
        _kill(build)
        # ninja outlives its killed parent; the message points at it while it runs.
        orphans = jit_ops.processes_in(folder)
        with pytest.raises(StaleJitLockError) as err:
            check_jit_locks(OFFLOAD)
        assert f"rm {lock}" in str(err.value)
        running = {pid for pid, _ in jit_ops.processes_in(folder)}
        if running:
            assert any(str(pid) in str(err.value) for pid in running)
    finally:
        if build.poll() is None:
            _kill(build)
        for pid, _ in orphans:  # the build's own ninja and compilers, started by this test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    # The next start waits on the dead build's lock (torch's FileBaton.wait), silently: still
    # there 10 s after its imports, and gone at once when the lock is deleted. (torch then does
    # not build but imports the library the dead build never linked, and fails: hence "start
    # again" in the message.)
    again = subprocess.Popen(
        [sys.executable, "-c", _JIT_BUILD],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while again.stdout.readline().strip() != "loading":  # past DeepSpeed's import-time lines
            assert again.poll() is None, again.stderr.read()[-3000:]
        with pytest.raises(subprocess.TimeoutExpired):
            again.wait(timeout=10)
        lock.unlink()
        again.wait(timeout=30)
    finally:
        if again.poll() is None:
            _kill(again)
    out, err = again.communicate()
    assert again.returncode != 0 and "built" not in out
    assert "_import_module_from_library" in err and "cpu_adam.so" in err, err[-3000:]

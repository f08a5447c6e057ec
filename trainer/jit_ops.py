"""DeepSpeed's C++ ops: which ones a run loads, whether set-up prebuilt them, and stale JIT build locks.

A run loads up to three DeepSpeed ops (names as DeepSpeed and torch's extension folders spell
them):

- ``deepspeed_shm_comm`` (``ShareMemCommBuilder``): the CPU shared-memory collectives, loaded by
  ``deepspeed.init_distributed`` on the CPU accelerator in every run, one rank or many;
- ``cpu_adam`` (``CPUAdamBuilder``): DeepSpeedCPUAdam, the optimizer of ZeRO with
  ``offload_optimizer`` (``ds_configs/*_offload.json``, the demo's config);
- ``fused_adam`` (``FusedAdamBuilder``): FusedAdam, DeepSpeed's Adam/AdamW without offload
  (``ds_configs/zero{0,2,3}.json``; on the CPU accelerator a C++ op too).

``make setup`` builds them into the deepspeed install (``DS_BUILD_*=1``) and then runs
``python -m trainer.jit_ops --require-prebuilt``, which fails unless every op that
``ds_configs/*.json`` can load on this accelerator imports as a prebuilt module. An install
without them (a plain ``pip install deepspeed``) JIT-builds each op on first use under torch's
extensions folder, and there a build killed half-way leaves its ``lock`` behind: every later run
then waits on it forever, without a word. :func:`check_jit_locks` turns that into an error that
names the lock.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Project ops by DeepSpeed builder class name: the accelerator maps each name to its own builder
# (the CPU one for "FusedAdamBuilder" on a CPU machine, the CUDA one on a GPU machine).
COMM_OP = "ShareMemCommBuilder"
OFFLOAD_ADAM_OP = "CPUAdamBuilder"
ADAM_OP = "FusedAdamBuilder"

# Filesystems on which the process holding a lock may run on another host, out of reach of this
# host's /proc (an NFS home shared by the nodes of a cluster, Lustre/GPFS scratch, ...).
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
        "fuse.glusterfs", "fuse.sshfs", "fuse.s3fs", "fuse.juicefs", "fuse.ceph", "afs", "ocfs2",
        "gfs2", "9p",
    }
)  # fmt: skip

# A lock seen without holder is looked at once more after this pause before it is called stale:
# FileBaton.release closes its descriptor a moment before it deletes the file.
RECHECK_S = 0.5


class StaleJitLockError(RuntimeError):
    """A DeepSpeed op must be JIT-built but its build lock was left by a process that is gone."""


def extensions_root() -> Path:
    """The folder under which torch builds JIT extensions, found the way torch finds it.

    ``$TORCH_EXTENSIONS_DIR`` as it is; otherwise torch's default build root (the user's cache,
    ``~/.cache/torch_extensions``) plus a ``py<version><abiflags>_<accelerator>`` folder. This
    repeats ``torch.utils.cpp_extension._get_build_directory``, which is private and creates the
    folders it names (a check should leave the disk as it found it).
    """
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env is not None:
        return Path(env)
    if torch.version.hip is not None:
        accelerator = f"rocm{torch.version.hip.replace('.', '')}"
    elif torch.version.cuda is not None:
        accelerator = f"cu{torch.version.cuda.replace('.', '')}"
    else:
        accelerator = "cpu"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}"


def _read_ds_config(ds_config: Mapping[str, Any] | str | os.PathLike[str]) -> Mapping[str, Any]:
    if isinstance(ds_config, Mapping):
        return ds_config
    try:
        return json.loads(Path(ds_config).read_text())
    except (OSError, ValueError):  # the trainer's own config loading reports it, with its context
        return {}


def op_classes_for(ds_config: Mapping[str, Any] | str | os.PathLike[str] | None) -> list[str]:
    """Builder class names of the ops a run with this DeepSpeed config (a dict or a JSON path) loads.

    The communication op comes with every run on the accelerators that have one; the optimizer op
    follows DeepSpeed's own choice for an ``Adam``/``AdamW`` optimizer block: DeepSpeedCPUAdam with
    ``offload_optimizer`` on ``cpu`` or ``nvme``, FusedAdam otherwise, none with
    ``torch_adam: true`` (torch's own Adam) or without an optimizer block. ``None``: the
    communication op only.
    """
    classes = [COMM_OP]
    ds = _read_ds_config(ds_config) if ds_config is not None else {}
    optimizer = ds.get("optimizer") or {}
    if str(optimizer.get("type", "")).lower() in ("adam", "adamw"):
        if not (optimizer.get("params") or {}).get("torch_adam", False):
            offload = (ds.get("zero_optimization") or {}).get("offload_optimizer") or {}
            classes.append(OFFLOAD_ADAM_OP if offload.get("device") in ("cpu", "nvme") else ADAM_OP)
    return classes


def builders(class_names: Iterable[str]) -> list[Any]:
    """This accelerator's DeepSpeed builders for ``class_names``; names it has no builder for are left out."""
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()
    found = []
    for class_name in class_names:
        builder = accel.create_op_builder(class_name)
        # The CPU accelerator answers an unknown name with a NotImplementedBuilder, CUDA with None.
        if builder is not None and builder.name != "deepspeed_not_implemented":
            found.append(builder)
    return found


def is_prebuilt(builder: Any) -> bool:
    """Whether DeepSpeed will import ``builder``'s op from the install rather than JIT-build it.

    The rule of ``OpBuilder.load``: the install recorded the op as built (``installed_ops``) for
    the accelerator in use.
    """
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import accelerator_name, installed_ops

    return bool(installed_ops.get(builder.name, False)) and accelerator_name == get_accelerator()._name


@dataclass(frozen=True)
class LockState:
    """What /proc says about one ``<extensions dir>/<op>/lock``."""

    path: Path
    holders: tuple[int, ...]  # pids with the lock file open: the live FileBaton owner
    builders: tuple[tuple[int, str], ...]  # (pid, command) working inside the op folder
    inspectable: bool  # False: a holder could be out of this host's sight (see check_jit_locks)
    age_s: float


def _file_id(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def lock_holders(lock: Path) -> tuple[int, ...]:
    """Pids of this host's processes that have ``lock`` open (compared by device and inode).

    Processes whose descriptors cannot be read (another user's, without root) are not seen.
    """
    target = _file_id(lock)
    if target is None:
        return ()
    holders = []
    for pid in _pids():
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        for fd in fds:
            try:
                # procfs answers readlink itself; only a file named like the lock gets a stat,
                # which could block on a hung network mount.
                if not os.readlink(f"{fd_dir}/{fd}").endswith(f"/{lock.name}"):
                    continue
            except OSError:
                continue
            if _file_id(f"{fd_dir}/{fd}") == target:
                holders.append(pid)
                break
    return tuple(holders)


def processes_in(folder: Path) -> tuple[tuple[int, str], ...]:
    """(pid, command) of this host's processes whose working directory is ``folder`` or below.

    ninja and the compilers run there during a JIT build; after the process that owned the lock
    is killed they go on, orphaned, until their build step is done.
    """
    folder = Path(os.path.realpath(folder))
    found = []
    for pid in _pids():
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd == folder or folder in cwd.parents:
            found.append((pid, cmd.strip()))
    return tuple(found)


def filesystem_type(path: Path, mountinfo: str | None = None) -> str:
    """The filesystem type of the mount holding ``path`` (``/proc/self/mountinfo``, longest mount point)."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    real = os.path.realpath(path)
    best, best_type = "", ""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        # Octal escapes (\040 for a space) are how mountinfo writes special characters.
        mount_point = fields[4].encode().decode("unicode_escape")
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, right.split()[0]
    return best_type


def inspect_lock(lock: Path) -> LockState | None:
    """The state of ``lock``, or None when there is no lock file."""
    try:
        st = os.stat(lock)
    except FileNotFoundError:
        return None
    # Only processes on this host that we may inspect can be seen holding the lock: not those of
    # another host (network filesystem), nor another user's unless we are root.
    inspectable = filesystem_type(lock) not in NETWORK_FILESYSTEMS and (
        os.geteuid() == 0 or st.st_uid == os.geteuid()
    )
    return LockState(
        path=lock,
        holders=lock_holders(lock),
        builders=processes_in(lock.parent),
        inspectable=inspectable,
        age_s=time.time() - st.st_mtime,
    )


def stale_lock(lock: Path) -> LockState | None:
    """``lock``'s state if it is stale by the rule of :func:`check_jit_locks`, else None."""
    ident = _file_id(lock)
    first = inspect_lock(lock)
    if first is None or first.holders or not first.inspectable:
        return None
    time.sleep(RECHECK_S)
    second = inspect_lock(lock)
    # Another inode is another lock, made by a build that started meanwhile: not the one judged.
    if second is None or second.holders or _file_id(lock) != ident:
        return None
    return second


def _stale_message(op: str, state: LockState) -> str:
    minutes = state.age_s / 60
    lines = [
        f"DeepSpeed's {op} op is not prebuilt in this install, so this run would JIT-build it, but "
        f"its build lock {state.path} was left by a build that no longer runs (no process has it "
        f"open; it is {minutes:.1f} min old). torch would wait on it forever.",
        f"Delete it and start again: rm {state.path}",
    ]
    if state.builders:
        procs = ", ".join(f"{pid} ({cmd.split(' ')[0]})" for pid, cmd in state.builders)
        lines.append(
            f"Processes of the interrupted build still run in {state.path.parent}: {procs}; "
            "wait for them to end (or kill them) before deleting the lock."
        )
    lines.append(
        "To build no op at run time, reinstall deepspeed with its ops prebuilt: "
        "rm .venv/.installed && make setup (see the Makefile)."
    )
    return "\n".join(lines)


def check_jit_locks(ds_config: Mapping[str, Any] | str | os.PathLike[str] | None = None) -> None:
    """Raise :class:`StaleJitLockError` if an op this run must JIT-build has a stale build lock.

    Call it before ``deepspeed.init_distributed`` (which loads the communication op) with the
    run's DeepSpeed config, a dict or a JSON path (which picks the optimizer op, see
    :func:`op_classes_for`). Ops that the install prebuilt are never built, so their folders are
    not looked at: with ``make setup``'s install this does nothing.

    The rule: torch's ``FileBaton`` creates ``<extensions dir>/<op>/lock`` with ``os.open`` and
    keeps that descriptor open until it deletes the file at the end of the build; it writes no
    pid. So a lock is live exactly while some process has it open, and stale when it exists and
    no process has it open (checked by device and inode through ``/proc/<pid>/fd``; the child
    processes of a build, ninja and the compilers, do not inherit the descriptor). A lock without
    holder is looked at again :data:`RECHECK_S` later, since ``release`` closes the descriptor a
    moment before it deletes the file. The rule can only see this host's processes that we may
    inspect: on a network filesystem (:data:`NETWORK_FILESYSTEMS`, where a rank on another node
    may be building) or for a lock owned by another user while we are not root, it cannot tell a
    live lock from a stale one, and it says so on stderr, naming the lock, instead of raising.
    Processes in another PID namespace (a container sharing the folder) are not seen either.
    """
    root = extensions_root()
    for builder in builders(op_classes_for(ds_config)):
        if is_prebuilt(builder):
            continue
        lock = root / builder.name / "lock"
        state = inspect_lock(lock)
        if state is None or state.holders:
            continue
        if not state.inspectable:
            print(
                f"trainer.jit_ops: {lock} exists ({state.age_s / 60:.1f} min old) and may belong to a "
                f"{builder.name} build on another host or of another user; torch waits until it is "
                "deleted. If no such build runs, delete it.",
                file=sys.stderr,
            )
            continue
        stale = stale_lock(lock)
        if stale is not None:
            raise StaleJitLockError(_stale_message(builder.name, stale))


def _op_classes(config_paths: Iterable[Path]) -> list[str]:
    """The builder class names of all ``config_paths``, each once, in first-seen order."""
    classes: list[str] = []
    for path in config_paths:
        classes += [c for c in op_classes_for(path) if c not in classes]
    return classes


def missing_prebuilt_ops(config_paths: Iterable[Path]) -> list[str]:
    """Ops that runs with these DeepSpeed configs load and that the install did not prebuild.

    Each entry names the op, the ``DS_BUILD_*`` variable that prebuilds it and why it fails: not
    recorded as installed, or recorded but its module does not import.
    """
    import importlib

    problems = []
    for builder in builders(_op_classes(config_paths)):
        if not is_prebuilt(builder):
            problems.append(f"{builder.name} ({builder.BUILD_VAR}=1): not prebuilt in this install")
            continue
        try:
            importlib.import_module(builder.absolute_name())
        except ImportError as err:
            problems.append(f"{builder.name} ({builder.BUILD_VAR}=1): prebuilt but does not import: {err}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--require-prebuilt",
        action="store_true",
        help="exit 1 unless every op that ds_configs/*.json loads on this accelerator is prebuilt",
    )
    parser.add_argument("--configs", type=Path, default=Path("ds_configs"), help="folder of DeepSpeed JSONs")
    args = parser.parse_args(argv)
    configs = sorted(args.configs.glob("*.json"))
    if args.require_prebuilt:
        problems = missing_prebuilt_ops(configs)
        if problems:
            print("DeepSpeed ops that runs would JIT-build (set-up must prebuild them):", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
    # The ops of all configs, each once, in first-seen order: "cpu_adam=prebuilt fused_adam=JIT ...".
    status = {b.name: "prebuilt" if is_prebuilt(b) else "JIT" for b in builders(_op_classes(configs))}
    print(" ".join(f"{name}={state}" for name, state in status.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

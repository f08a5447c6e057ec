"""A real two-node SLURM cluster on this machine, for the tests of ``slurm/``.

munged, slurmctld and two slurmd ("node1", "node2", distinct ports, both on this host) run as
root with every file (key, socket, config, state, spool, logs, pid files) under one directory,
so nothing outside it is touched and several clusters can run side by side. The Debian packages
``slurmctld slurmd slurm-client munge`` must be installed (``.ci/run`` installs them); this module
installs nothing.

    python -m tests.slurm.cluster up [--dir DIR]    # prints the SLURM_CONF to export
    python -m tests.slurm.cluster down [--dir DIR]  # cancels the jobs, stops the daemons by pid
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

NODES = ("node1", "node2")
CPUS_PER_NODE = 2
PACKAGES = "slurmctld slurmd slurm-client munge"
COMMANDS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
DEFAULT_DIR = Path(tempfile.gettempdir()) / "multimodal-qlora-slurm"


class ClusterError(RuntimeError):
    pass


def _which(name: str) -> str | None:
    # The daemons live in /usr/sbin, which a non-login PATH may lack.
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def missing_commands() -> list[str]:
    return [c for c in COMMANDS if _which(c) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _sbin(name: str) -> str:
    found = _which(name)
    if found is None:
        raise ClusterError(f"{name} not found")
    return found


class LocalCluster:
    """munged + slurmctld + slurmd × 2 under ``root``; ``env()`` is what a SLURM client needs."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.socket = self.root / "munge" / "munge.socket"

    # ------------------------------------------------------------------ set-up
    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) pointed at this cluster's slurm.conf."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def up(self, timeout_s: float = 60.0) -> LocalCluster:
        missing = missing_commands()
        if missing:
            raise ClusterError(
                f"SLURM/munge commands not found: {', '.join(missing)}. Install the Debian packages first: "
                f"apt-get install -y --no-install-recommends {PACKAGES} (.ci/run does this)"
            )
        if os.geteuid() != 0:
            raise ClusterError(
                "the local SLURM cluster runs its daemons as root (SlurmUser=root); run as root"
            )
        if self._pids():
            raise ClusterError(f"a cluster already runs from {self.root}: `down` it first")
        for sub in ("munge", "state", "log", "run", *(f"spool/{n}" for n in NODES)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # munged wants its socket's folders searchable by everyone and writable by no one else.
        for folder in (self.root, self.root / "munge"):
            os.chmod(folder, 0o755)
        try:
            self._start_munge()
            self._write_conf()
            self._run([_sbin("slurmctld"), "-c", "-f", str(self.conf)], "slurmctld")
            for node in NODES:
                self._run([_sbin("slurmd"), "-N", node, "-f", str(self.conf)], f"slurmd {node}")
            self._wait_idle(timeout_s)
        except BaseException:
            self.down()
            raise
        return self

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            self._run([_sbin("mungekey"), "--create", f"--keyfile={key}"], "mungekey")
        m = self.root / "munge"
        self._run(
            [
                _sbin("munged"),
                f"--socket={self.socket}",
                f"--key-file={key}",
                f"--pid-file={m / 'munged.pid'}",
                f"--log-file={self.root / 'log/munged.log'}",
                f"--seed-file={m / 'munged.seed'}",
            ],
            "munged",
        )

    def _write_conf(self) -> None:
        r, host = self.root, socket.gethostname().split(".")[0]
        nodes = "\n".join(
            f"NodeName={n} NodeHostname={host} CPUs={CPUS_PER_NODE} RealMemory=4000 Port={_free_port()}"
            for n in NODES
        )
        self.conf.write_text(
            f"""# written by tests/slurm/cluster.py: two slurmd on one host
ClusterName=mmqlora
SlurmctldHost={host}
SlurmctldPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket},cred_expire=10
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}/%n
SlurmctldPidFile={r / "run/slurmctld.pid"}
SlurmdPidFile={r / "run"}/slurmd-%n.pid
SlurmctldLogFile={r / "log/slurmctld.log"}
SlurmdLogFile={r / "log"}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=1
MinJobAge=600
KillWait=10
{nodes}
PartitionName=debug Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""
        )

    def _run(self, cmd: list[str], what: str) -> None:
        """Start a daemon (it forks and writes its pid file) or run a set-up command."""
        env = self.env()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise ClusterError(
                f"{what} failed ({proc.returncode}): {proc.stderr or proc.stdout}{self.logs()}"
            )

    def _wait_idle(self, timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        states = ""
        while time.time() < deadline:
            proc = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env(), capture_output=True, text=True
            )
            states = proc.stdout.strip()
            if proc.returncode == 0 and sorted(states.splitlines()) == [f"{n} idle" for n in NODES]:
                return
            time.sleep(0.5)
        raise ClusterError(f"nodes not idle after {timeout_s}s: {states!r}{self.logs()}")

    def logs(self, tail: int = 1500) -> str:
        out = []
        for path in sorted((self.root / "log").glob("*.log")):
            out.append(f"\n--- {path.name}:\n{path.read_text(errors='replace')[-tail:]}")
        return "".join(out)

    # ------------------------------------------------------------------ tear-down
    def _pids(self) -> dict[str, int]:
        files = {"slurmctld": self.root / "run/slurmctld.pid", "munged": self.root / "munge/munged.pid"}
        files.update({f"slurmd {n}": self.root / f"run/slurmd-{n}.pid" for n in NODES})
        pids = {}
        for name, path in files.items():
            try:
                pid = int(path.read_text().split()[0])
                os.kill(pid, 0)
            except (OSError, ValueError, IndexError):
                continue
            pids[name] = pid
        return pids

    def down(self, timeout_s: float = 30.0) -> None:
        """Cancel every job (so no slurmstepd outlives its slurmd), then stop the daemons by pid."""
        pids = self._pids()
        if "slurmctld" in pids:
            subprocess.run(["scancel", "--user=root"], env=self.env(), capture_output=True, timeout=30)
            deadline = time.time() + timeout_s
            while time.time() < deadline:
                q = subprocess.run(["squeue", "-h"], env=self.env(), capture_output=True, text=True)
                if q.returncode != 0 or not q.stdout.strip():
                    break
                time.sleep(0.5)
        # Nodes first, munged last: slurmd tells slurmctld it goes, both need munge for that.
        order = [n for n in pids if n.startswith("slurmd")] + ["slurmctld", "munged"]
        for name in order:
            if name in pids:
                _stop(pids[name], timeout_s)


def _stop(pid: int, timeout_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"cluster files (default {DEFAULT_DIR})"
    )
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.dir)
    if args.action == "up":
        cluster.up()
        print(f"two-node cluster up: export SLURM_CONF={cluster.conf}")
    else:
        cluster.down()
        print(f"cluster in {args.dir} stopped")


if __name__ == "__main__":
    main()

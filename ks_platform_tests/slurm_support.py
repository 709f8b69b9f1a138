"""A throw-away one-node SLURM cluster for tests: munged, slurmctld and slurmd as root from a temp dir.

Debian's ``slurm-wlm`` and ``munge`` (scripts/install_system_deps.sh installs them); nothing is installed here. The
node ``localhost`` has this machine's CPUs and memory and one GPU GRES on partition ``gpu``. SLURM 22.05 drops a
``gpu`` GRES without ``File=`` ("Removing file-less GPU"), so the GRES names a character device made in the temp dir
(a copy of /dev/null's numbers): the scheduler allocates it and sets ``SLURM_JOB_GPUS``/``CUDA_VISIBLE_DEVICES``
like for a real GPU, though nothing can compute on it. No accounting database: job states come from slurmctld
(``MinJobAge`` keeps ended jobs for 10 minutes) and the job-completion log (``jobcomp/filetxt``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ks_platform_tests.conftest import missing_dependency

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
PARTITION = "gpu"
#: A partition of a higher priority tier on the same node: its jobs preempt (cancel) the ones of PARTITION.
URGENT_PARTITION = "urgent"
NODE = "localhost"
#: Longest time limit of the partition (minutes).
MAX_TIME_MINUTES = 30


@dataclass(frozen=True)
class SlurmCluster:
    """A running test cluster: its ``slurm.conf`` (clients need ``SLURM_CONF``) and folders."""

    conf: Path
    base: Path
    jobcomp: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str) -> str:
        """A SLURM client command against this cluster; its stdout (raises when it fails)."""
        done = subprocess.run(list(args), capture_output=True, text=True, env=self.env(), timeout=60, check=False)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def queue(self) -> list[str]:
        """Job ids slurmctld still has queued or running."""
        return self.run("squeue", "-h", "-o", "%i").split()

    def logs(self) -> str:
        return "\n".join(
            f"== {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted((self.base / "log").glob("*.log"))
        )


def missing_programs() -> list[str]:
    return [path for path in DAEMONS if not os.access(path, os.X_OK)] + [
        name for name in CLIENTS if shutil.which(name) is None
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mib() -> int:
    with open("/proc/meminfo") as handle:
        total_kib = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal:"))
    return max(1024, total_kib // 1024 - 1024)  # leave the OS 1 GiB


def write_config(base: Path, cpus: int, memory_mib: int) -> Path:
    """``slurm.conf`` + ``gres.conf`` + the munge key and the fake GPU device under ``base``."""
    for folder in ("state", "spool", "log", "dev"):
        (base / folder).mkdir()
    key = base / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    device = base / "dev" / "gpu0"
    os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))  # a character device with /dev/null's numbers
    (base / "gres.conf").write_text(f"Name=gpu File={device}\n")
    settings = {
        "ClusterName": "kstest",
        "SlurmctldHost": f"{NODE}(127.0.0.1)",
        "SlurmctldPort": str(_free_port()),
        "SlurmdPort": str(_free_port()),
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "AuthType": "auth/munge",
        "AuthInfo": f"socket={base / 'munge.socket'}",
        "CredType": "cred/munge",
        "StateSaveLocation": str(base / "state"),
        "SlurmdSpoolDir": str(base / "spool"),
        "SlurmctldPidFile": str(base / "slurmctld.pid"),
        "SlurmdPidFile": str(base / "slurmd.pid"),
        "SlurmctldLogFile": str(base / "log" / "slurmctld.log"),
        "SlurmdLogFile": str(base / "log" / "slurmd.log"),
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core_Memory",
        "GresTypes": "gpu",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "JobCompType": "jobcomp/filetxt",
        "JobCompLoc": str(base / "jobcomp.txt"),
        "MinJobAge": "600",
        "ReturnToService": "2",
        "SchedulerType": "sched/backfill",
        "SchedulerParameters": "sched_interval=1",
        "KillWait": "5",
        "MpiDefault": "none",
        "PreemptType": "preempt/partition_prio",
        "PreemptMode": "CANCEL",
    }
    lines = [f"{name}={value}" for name, value in settings.items()]
    lines.append(f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mib} Gres=gpu:1 State=UNKNOWN")
    lines.append(
        f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime={MAX_TIME_MINUTES} PriorityTier=1 State=UP"
    )
    lines.append(f"PartitionName={URGENT_PARTITION} Nodes={NODE} MaxTime={MAX_TIME_MINUTES} PriorityTier=10 State=UP")
    conf = base / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _stop(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


@contextmanager
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd; yield once ``sinfo`` shows the node idle; stop them and delete the dir."""
    base = Path(tempfile.mkdtemp(prefix="ks-platform-slurm-"))
    conf = write_config(base, os.cpu_count() or 1, _memory_mib())
    cluster = SlurmCluster(conf, base, base / "jobcomp.txt")
    env = cluster.env()
    started: list[Path] = []

    def start(command: list[str], pid_file: Path) -> None:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
        started.append(pid_file)
        if done.returncode:
            raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr.strip()}\n{cluster.logs()}")

    try:
        start(
            [
                "/usr/sbin/munged",
                "--force",
                f"--socket={base / 'munge.socket'}",
                f"--key-file={base / 'munge.key'}",
                f"--pid-file={base / 'munged.pid'}",
                f"--log-file={base / 'log' / 'munged.log'}",
                f"--seed-file={base / 'munged.seed'}",
            ],
            base / "munged.pid",
        )
        start(["/usr/sbin/slurmctld", "-f", str(conf)], base / "slurmctld.pid")
        start(["/usr/sbin/slurmd", "-f", str(conf), "-N", NODE], base / "slurmd.pid")
        deadline = time.monotonic() + 30
        state = ""
        while time.monotonic() < deadline:
            try:
                state = cluster.run("sinfo", "-h", "-n", NODE, "-o", "%T").strip()
            except RuntimeError as exc:
                state = str(exc)
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"node {NODE} is not idle after 30 s ({state})\n{cluster.logs()}")
        yield cluster
    finally:
        try:
            leftover = cluster.queue() if started else []
        except (RuntimeError, OSError, subprocess.SubprocessError):
            leftover = []
        for job in leftover:
            subprocess.run(["scancel", job], env=env, check=False, timeout=60)
        for pid_file in reversed(started):
            _stop(pid_file)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm(monkeypatch_module) -> Iterator[SlurmCluster]:
    """A running one-node cluster for the module; ``SLURM_CONF`` points at it (run workers and jobs inherit it)."""
    if os.geteuid() != 0:
        missing_dependency("the SLURM test cluster runs its daemons as root")
    missing = missing_programs()
    if missing:
        missing_dependency(
            f"SLURM is not installed (missing {', '.join(missing)}; Debian packages slurm-wlm and munge)"
        )
    with slurm_cluster() as cluster:
        monkeypatch_module.setenv("SLURM_CONF", str(cluster.conf))
        yield cluster


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch

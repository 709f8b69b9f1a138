"""A throw-away one-node SLURM cluster for tests: munged, slurmctld and slurmd as root from a temp dir.

Debian's ``slurm-wlm`` and ``munge`` (scripts/install_system_deps.sh installs them); nothing is installed here. The
node ``localhost`` has this machine's CPUs and memory and one GPU GRES on partition ``gpu``. SLURM 22.05 drops a
``gpu`` GRES without ``File=`` ("Removing file-less GPU"), so the GRES names a character device made in the temp dir
(a copy of /dev/null's numbers): the scheduler allocates it and sets ``SLURM_JOB_GPUS``/``CUDA_VISIBLE_DEVICES``
like for a real GPU, though nothing can compute on it. By default there is no accounting database: job states come
from slurmctld (``MinJobAge`` keeps ended jobs for 10 minutes) and the job-completion log (``jobcomp/filetxt``).
``slurm_cluster(accounting=True)`` adds what a university cluster has: MariaDB (Debian's ``mariadb-server``, its own
data dir and port) and ``slurmdbd`` (Debian's ``slurmdbd``), so ``sacct`` answers once slurmctld forgot a job.
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
#: The accounting cluster's extra programs (Debian packages ``slurmdbd`` and ``mariadb-server``).
ACCOUNTING_PROGRAMS = ("/usr/sbin/slurmdbd", "/usr/sbin/mariadbd", "/usr/bin/mariadb-install-db", "/usr/bin/mariadb")
ACCOUNTING_CLIENTS = ("sacct", "sacctmgr")
CLUSTER_NAME = "kstest"
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

    def slurmd_pid(self) -> int | None:
        try:
            return int((self.base / "slurmd.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def start_slurmd(self) -> None:
        """Start slurmd (again, e.g. after a test killed it); the node rejoins (``ReturnToService=2``)."""
        done = subprocess.run(
            ["/usr/sbin/slurmd", "-f", str(self.conf), "-N", NODE],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=60,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"slurmd failed ({done.returncode}): {done.stderr.strip()}\n{self.logs()}")

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-n", NODE, "-o", "%T").strip()

    def logs(self) -> str:
        return "\n".join(
            f"== {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted((self.base / "log").glob("*.log"))
        )


def missing_programs(accounting: bool = False) -> list[str]:
    daemons = DAEMONS + (ACCOUNTING_PROGRAMS if accounting else ())
    clients = CLIENTS + (ACCOUNTING_CLIENTS if accounting else ())
    return [path for path in daemons if not os.access(path, os.X_OK)] + [
        name for name in clients if shutil.which(name) is None
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mib() -> int:
    with open("/proc/meminfo") as handle:
        total_kib = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal:"))
    return max(1024, total_kib // 1024 - 1024)  # leave the OS 1 GiB


def write_config(
    base: Path,
    cpus: int,
    memory_mib: int,
    dbd_port: int | None = None,
    min_job_age: int = 600,
    slurmd_timeout: int = 300,
) -> Path:
    """``slurm.conf`` + ``gres.conf`` + the munge key and the fake GPU device under ``base``; with ``dbd_port``, job
    accounting goes to the slurmdbd on that port. ``slurmd_timeout``: seconds slurmctld waits for a silent node
    before it marks it DOWN and its jobs NODE_FAIL."""
    for folder in ("state", "spool", "log", "dev"):
        (base / folder).mkdir()
    key = base / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    device = base / "dev" / "gpu0"
    os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))  # a character device with /dev/null's numbers
    (base / "gres.conf").write_text(f"Name=gpu File={device}\n")
    settings = {
        "ClusterName": CLUSTER_NAME,
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
        "AccountingStorageType": "accounting_storage/slurmdbd" if dbd_port else "accounting_storage/none",
        "JobCompType": "jobcomp/filetxt",
        "JobCompLoc": str(base / "jobcomp.txt"),
        "MinJobAge": str(min_job_age),
        "SlurmdTimeout": str(slurmd_timeout),
        "ReturnToService": "2",
        "SchedulerType": "sched/backfill",
        "SchedulerParameters": "sched_interval=1",
        "KillWait": "5",
        "MpiDefault": "none",
        "PreemptType": "preempt/partition_prio",
        "PreemptMode": "CANCEL",
    }
    if dbd_port:
        settings.update(
            {
                "AccountingStorageHost": NODE,
                "AccountingStoragePort": str(dbd_port),
                # with auth/munge this names the munge socket that slurmctld and sacct use to reach slurmdbd
                "AccountingStoragePass": str(base / "munge.socket"),
            }
        )
    lines = [f"{name}={value}" for name, value in settings.items()]
    lines.append(f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mib} Gres=gpu:1 State=UNKNOWN")
    lines.append(
        f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime={MAX_TIME_MINUTES} PriorityTier=1 State=UP"
    )
    lines.append(f"PartitionName={URGENT_PARTITION} Nodes={NODE} MaxTime={MAX_TIME_MINUTES} PriorityTier=10 State=UP")
    conf = base / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def write_dbd_config(base: Path, dbd_port: int, database_port: int) -> None:
    """``slurmdbd.conf`` beside ``slurm.conf`` (where slurmdbd looks for it), readable by its owner only."""
    settings = {
        "AuthType": "auth/munge",
        "AuthInfo": f"socket={base / 'munge.socket'}",
        "DbdHost": NODE,
        "DbdAddr": "127.0.0.1",
        "DbdPort": str(dbd_port),
        "SlurmUser": "root",
        "PidFile": str(base / "slurmdbd.pid"),
        "LogFile": str(base / "log" / "slurmdbd.log"),
        "StorageType": "accounting_storage/mysql",
        "StorageHost": "127.0.0.1",
        "StoragePort": str(database_port),
        "StorageUser": "slurm",
        "StoragePass": "slurm",
        "StorageLoc": "slurm_acct_db",
    }
    path = base / "slurmdbd.conf"
    path.write_text("".join(f"{name}={value}\n" for name, value in settings.items()))
    path.chmod(0o600)


def start_database(base: Path, port: int) -> subprocess.Popen:
    """A private MariaDB server (data dir under ``base``, TCP on ``port``) with the ``slurm`` user slurmdbd uses."""
    data = base / "mariadb"
    data.mkdir()
    subprocess.run(
        ["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={data}", "--skip-test-db"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    socket_path = base / "mariadb.sock"
    server = subprocess.Popen(
        [
            "/usr/sbin/mariadbd",
            "--no-defaults",
            "--user=root",
            f"--datadir={data}",
            f"--socket={socket_path}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={base / 'mariadb.pid'}",
            f"--log-error={base / 'log' / 'mariadb.log'}",
            "--innodb-buffer-pool-size=32M",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    grant = (
        "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; "
        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
    )
    deadline = time.monotonic() + 60
    while True:
        done = subprocess.run(
            ["mariadb", "--no-defaults", f"--socket={socket_path}", "-u", "root", "-e", grant],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode == 0:
            return server
        if server.poll() is not None or time.monotonic() > deadline:
            log = (base / "log" / "mariadb.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"MariaDB did not start: {done.stderr.strip()}\n{log}")
        time.sleep(0.5)


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


def _kill_job_processes(conf: Path) -> None:
    """SIGKILL the ``slurmstepd`` processes of this cluster (and what runs under them) that outlived its slurmd (a job
    orphaned by a killed slurmd keeps running otherwise)."""
    marker = f"SLURM_CONF={conf}".encode()
    children: dict[int, list[int]] = {}
    stepds = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            if (entry / "comm").read_text().strip() == "slurmstepd" and marker in (entry / "environ").read_bytes():
                stepds.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    doomed, todo = [], list(stepds)
    while todo:
        pid = todo.pop()
        doomed.append(pid)
        todo.extend(children.get(pid, []))
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextmanager
def slurm_cluster(
    accounting: bool = False, min_job_age: int = 600, slurmd_timeout: int = 300
) -> Iterator[SlurmCluster]:
    """Start munged (then MariaDB and slurmdbd with ``accounting``), slurmctld and slurmd; yield once ``sinfo`` shows
    the node idle; stop them, kill job processes they left and delete the dir. ``min_job_age``: seconds slurmctld keeps
    an ended job; ``slurmd_timeout``: seconds until a silent node is DOWN."""
    base = Path(tempfile.mkdtemp(prefix="ks-platform-slurm-"))
    dbd_port = _free_port() if accounting else None
    conf = write_config(base, os.cpu_count() or 1, _memory_mib(), dbd_port, min_job_age, slurmd_timeout)
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
        if dbd_port:
            database_port = _free_port()
            write_dbd_config(base, dbd_port, database_port)
            database = start_database(base, database_port)
            started.append(base / "mariadb.pid")
            start(["/usr/sbin/slurmdbd"], base / "slurmdbd.pid")
            deadline = time.monotonic() + 60
            while True:  # slurmdbd creates its tables first; then the cluster can be registered
                try:
                    cluster.run("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME)
                    break
                except RuntimeError as exc:
                    if "already exists" in str(exc):
                        break
                    if database.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"slurmdbd did not answer: {exc}\n{cluster.logs()}") from exc
                    time.sleep(1)
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
        _kill_job_processes(conf)
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

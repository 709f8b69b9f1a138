"""A throw-away PostgreSQL server for tests: initdb + pg_ctl in a temp dir, as a non-root user.

Debian's ``postgresql`` package puts the server binaries in ``/usr/lib/postgresql/<version>/bin``
(scripts/install_system_deps.sh installs it). PostgreSQL refuses to run as root, so when the tests run as
root the cluster belongs to the ``postgres`` system user (``runuser``).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pytest

from ks_platform_tests.conftest import missing_dependency


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<ver>/bin`` with initdb, or the directory of ``initdb`` on PATH."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def run_server_program(program: str, *args: str, log: Path | None = None) -> subprocess.CompletedProcess:
    """Run one of the server's programs (``pg_ctl``, ``initdb``, …) as the cluster's owner; raise if it fails."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL server binaries not found: run scripts/install_system_deps.sh")
    command = [str(bin_dir / program), *args]
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: the cluster belongs to the postgres user
        command = ["runuser", "-u", "postgres", "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode:
        tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
        raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()[-2000:]} {tail}")
    return done


def pg_ctl(data_dir: Path, action: str) -> None:
    """``pg_ctl stop`` (fast: every open connection is cut), ``start`` or ``restart`` of a ``postgres_server``
    cluster, waiting until it is done; the server's log goes on in its ``postgres.log``."""
    log = Path(data_dir).parent / "postgres.log"
    run_server_program("pg_ctl", "-D", str(data_dir), "-l", str(log), "-m", "fast", "-w", "-t", "60", action, log=log)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def postgres_server(db_name: str = "dagster") -> Iterator[str]:
    """Start a server in a fresh temp dir; yield ``postgresql://…`` for a new database; stop and delete after."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError(
            "PostgreSQL server binaries not found: run scripts/install_system_deps.sh (installs postgresql)"
        )
    as_root = os.geteuid() == 0
    user = "postgres" if as_root else getpass.getuser()
    # Directly under the system temp dir: pytest's tmp dirs are 0700 root-owned, the server user must enter.
    base = Path(tempfile.mkdtemp(prefix="ks-platform-pg-"))
    data, sockets, log = base / "pgdata", base / "sock", base / "postgres.log"
    sockets.mkdir()
    if as_root:
        for path in (base, sockets):
            shutil.chown(path, user)

    def run(*args: str) -> subprocess.CompletedProcess:
        return run_server_program(*args, log=log)

    port = _free_port()
    try:
        run("initdb", "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync")
        # In the cluster's own config (not ``pg_ctl -o``), so a plain ``pg_ctl stop``/``start`` of the data
        # directory (the fault tests in test_faults_instance.py) brings back the same server.
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(port),
            "unix_socket_directories": f"'{sockets}'",
            "fsync": "off",
            "max_connections": "200",
        }
        with open(data / "postgresql.conf", "a") as conf:
            conf.write("".join(f"{name} = {value}\n" for name, value in settings.items()))
        run("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60", "start")
        try:
            run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", user, db_name)
            yield f"postgresql://{user}@127.0.0.1:{port}/{db_name}"
        finally:
            if (data / "postmaster.pid").exists():  # a fault test may have left it stopped
                run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A running PostgreSQL for the session (skipped when the server binaries are not installed)."""
    if postgres_bin_dir() is None:
        missing_dependency("PostgreSQL is not installed")
    with postgres_server() as url:
        yield url


def dagster_pg_env(url: str) -> dict[str, str]:
    """The ``DAGSTER_PG_*`` variables deploy/dagster.postgres.yaml reads, for the server at ``url``."""
    parsed = urlparse(url)
    return {
        "DAGSTER_PG_USERNAME": parsed.username or "",
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_HOST": parsed.hostname or "",
        "DAGSTER_PG_DB": parsed.path[1:],
        "DAGSTER_PG_PORT": str(parsed.port),
    }

"""Job states from SLURM's accounting once slurmctld has forgotten a job (``sacct``), against a real one-node cluster
with a real slurmdbd and MariaDB (ks_platform_tests.slurm_support, ``accounting=True``).

The cluster keeps ended jobs for 2 s (``MinJobAge``), so slurmctld purges them within its purge interval (about a
minute); the executor's ``job_status`` must then read the state, reason, node and exit code from ``sacct``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ks_platform.execution.slurm_executor import job_status
from ks_platform_tests.conftest import missing_dependency, wait_until
from ks_platform_tests.slurm_support import NODE, PARTITION, SlurmCluster, missing_programs, slurm_cluster


@pytest.fixture(scope="module")
def accounted_slurm() -> Iterator[SlurmCluster]:
    if os.geteuid() != 0:
        missing_dependency("the SLURM test cluster runs its daemons as root")
    missing = missing_programs(accounting=True)
    if missing:
        missing_dependency(
            f"SLURM accounting is not installed (missing {', '.join(missing)}; Debian packages slurm-wlm, munge, "
            "slurmdbd and mariadb-server)"
        )
    with pytest.MonkeyPatch.context() as patch, slurm_cluster(accounting=True, min_job_age=2) as cluster:
        patch.setenv("SLURM_CONF", str(cluster.conf))
        yield cluster


def submit(cluster: SlurmCluster, command: str) -> str:
    return cluster.run("sbatch", "--parsable", "-p", PARTITION, "-o", "/dev/null", "--wrap", command).strip()


def purged(cluster: SlurmCluster, job_id: str) -> bool:
    """slurmctld no longer knows the job (``scontrol show job`` fails)."""
    try:
        cluster.run("scontrol", "show", "job", job_id)
    except RuntimeError:
        return True
    return False


def test_a_purged_job_is_read_from_accounting(accounted_slurm):
    failed = submit(accounted_slurm, "exit 3")
    done = submit(accounted_slurm, "true")
    seen = job_status(failed)
    assert seen.source == "scontrol", seen  # while slurmctld still has it
    for job in (failed, done):
        wait_until(lambda job=job: purged(accounted_slurm, job), 180, f"slurmctld to purge job {job}", poll=2)

    status = job_status(failed)
    assert status.source == "sacct" and status.state == "FAILED", (status, accounted_slurm.logs())
    assert status.exit_code == "3:0" and status.nodes == NODE, status
    assert "FAILED" in status.describe() and "3:0" in status.describe()
    finished = job_status(done)
    assert (finished.source, finished.state, finished.exit_code) == ("sacct", "COMPLETED", "0:0"), finished


def test_a_job_slurm_never_had_is_unknown_not_an_error(accounted_slurm):
    status = job_status("987654")
    assert status.state is None and status.source == "none", status

"""A job that outlives its step never publishes, against a real one-node SLURM cluster whose slurmd is killed.

``kill -9`` of slurmd while a step's job runs: slurmctld hears nothing from the node for ``SlurmdTimeout`` (8 s here),
marks it DOWN and the job NODE_FAIL, yet the job's processes (under slurmstepd) keep running. The executor fails the
step through its health check, scancels the job (slurmctld can no longer reach it) and revokes the attempt, so when
the orphan reaches its publish, the store refuses it: ``sorting/`` keeps the previous output and no success reaches the
failed run. The store's side of the attempt token is also tested on its own (real files, real ``flock``).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus

from ks_platform.core.store import ATTEMPT_FILE_ENV, ATTEMPT_TOKEN_ENV, StaleAttemptError, atomic_directory
from ks_platform.execution.slurm_executor import set_live_attempt
from ks_platform_tests import executor_support, postgres_support
from ks_platform_tests.conftest import leftovers, missing_dependency, wait_until
from ks_platform_tests.run_worker_support import RunWorker, engine_messages, error_chain, events_of
from ks_platform_tests.slurm_executor_support import RUN_WORKER, settings
from ks_platform_tests.slurm_support import SlurmCluster, missing_programs, slurm_cluster

# Fixtures of other modules, used here by name.
postgres_url, pg_instance = postgres_support.postgres_url, executor_support.pg_instance

#: Seconds slurmctld waits for a silent node before it is DOWN and its jobs NODE_FAIL.
SLURMD_TIMEOUT = 8
#: How long the orphan's op holds before it publishes: past NODE_FAIL, the health check and the run's end.
HOLD_SECONDS = 60.0
STEP = "publish_into_store"


@pytest.fixture(scope="module")
def fragile_slurm() -> Iterator[SlurmCluster]:
    """A one-node cluster that gives up on a silent slurmd after 8 s."""
    if os.geteuid() != 0:
        missing_dependency("the SLURM test cluster runs its daemons as root")
    missing = missing_programs()
    if missing:
        missing_dependency(f"SLURM is not installed (missing {', '.join(missing)}; Debian packages slurm-wlm, munge)")
    with pytest.MonkeyPatch.context() as patch, slurm_cluster(slurmd_timeout=SLURMD_TIMEOUT) as cluster:
        patch.setenv("SLURM_CONF", str(cluster.conf))
        yield cluster


def step_processes(job_id: str) -> list[int]:
    """Processes running the step of SLURM job ``job_id`` (found by their environment, as slurmd is gone)."""
    marker = f"SLURM_JOB_ID={job_id}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes():
                if b"execute_step" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_job_orphaned_by_a_dead_slurmd_is_scancelled_and_its_publish_refused(fragile_slurm, pg_instance, tmp_path):
    """The issue's case on a real cluster: ``sorting/`` exists from before; a step that publishes into it after 60 s
    runs as a SLURM job; slurmd is SIGKILLed. The step fails with NODE_FAIL (health check), the executor scancels the
    job and revokes the attempt, the run fails; the orphaned job keeps running, and 60 s in its publish is refused:
    ``sorting/`` is the one from before, nothing staged is left, the run holds no success for the step."""
    cluster = fragile_slurm
    store = tmp_path / "store"
    key = "2026-03-02__rig1__orphan_g0__imec0"
    sorting = store / "sessions" / key / "sorting"
    sorting.mkdir(parents=True)
    (sorting / "published.json").write_text('{"job_id": "before"}')
    run_config = {
        "execution": {"config": {"settings": settings(tmp_path, failure_grace_seconds=2)}},
        "ops": {STEP: {"config": {"key": key, "hold_seconds": HOLD_SECONDS}}},
    }
    slurmd_killed: list[float] = []
    worker = RunWorker(
        tmp_path / "worker", "slurm_publish_job", run_config, code=RUN_WORKER, env={"KS_PLATFORM_STORE": str(store)}
    )
    try:
        run_id = worker.run_id(pg_instance, timeout=90)
        wait_until(lambda: events_of(pg_instance, run_id, dg.DagsterEventType.STEP_START), 120, "the step to start")
        [job_id] = cluster.queue()
        [orphan] = wait_until(lambda: step_processes(job_id), 30, "the step's process")
        os.kill(cluster.slurmd_pid(), signal.SIGKILL)
        killed_at = time.monotonic()
        slurmd_killed.append(killed_at)
        assert not worker.finish(pg_instance, timeout=120), worker.output()
        run_failed_after = time.monotonic() - killed_at
        assert run_failed_after < HOLD_SECONDS - 5, "the run must fail before the orphan publishes"
        assert step_processes(job_id) == [orphan], "the orphaned job keeps running (slurmd cannot stop it)"
        output = Path(run_config["execution"]["config"]["settings"]["workdir"]) / run_id / f"{STEP}-0.out"
        wait_until(lambda: "not published" in output.read_text(), HOLD_SECONDS + 60, "the orphan's publish")
        wait_until(lambda: not step_processes(job_id), 60, "the orphan to end")
    finally:
        if worker.process.poll() is None:
            os.killpg(worker.process.pid, signal.SIGKILL)
        if slurmd_killed:
            cluster.start_slurmd()
    run = pg_instance.get_run_by_id(run_id)
    assert run is not None and run.status == DagsterRunStatus.FAILURE
    [failure] = [e for e in events_of(pg_instance, run_id, dg.DagsterEventType.STEP_FAILURE) if e.step_key == STEP][:1]
    message = error_chain(failure.dagster_event.event_specific_data.error)
    assert f"failed health check: SLURM job {job_id} of {STEP} ended NODE_FAIL" in message, message
    messages = engine_messages(pg_instance, run_id)
    assert any(m.startswith(f"scancel {job_id} ({STEP})") for m in messages), messages
    assert not [e for e in events_of(pg_instance, run_id, dg.DagsterEventType.STEP_SUCCESS) if e.step_key == STEP]
    assert json.loads((sorting / "published.json").read_text()) == {"job_id": "before"}
    assert leftovers(sorting.parent) == []
    refusal = [line for line in output.read_text().splitlines() if "not published" in line][0]
    assert "is no longer the live one" in refusal and "revoked" in refusal, refusal
    print(f"run failed {run_failed_after:.0f} s after kill -9 slurmd; the orphan's publish: {refusal.strip()[:300]}")
    # slurmd restarted: the node answers again ("mixed" while slurmctld still counts the failed job's allocation).
    wait_until(lambda: "down" not in cluster.node_state(), 60, "the node to answer again")


def test_the_store_publishes_only_as_the_live_attempt(tmp_path, monkeypatch):
    """With an attempt file and token set, a publish goes through while the file names the token and is refused once
    the executor rewrote it (the staged copy is removed, the old output stays); the executor's rewrite waits for a
    publish that holds the file."""
    attempt = tmp_path / "step.attempt"
    final = tmp_path / "session" / "sorting"
    monkeypatch.setenv(ATTEMPT_FILE_ENV, str(attempt))
    monkeypatch.setenv(ATTEMPT_TOKEN_ENV, "token-1")
    set_live_attempt(attempt, "token-1")
    with atomic_directory(final) as staged:
        (staged / "a.txt").write_text("first")
    assert (final / "a.txt").read_text() == "first"
    set_live_attempt(attempt, "revoked token-1: SLURM job 7 ended NODE_FAIL")
    with pytest.raises(StaleAttemptError, match="not published: this step attempt .* is no longer the live one"):
        with atomic_directory(final) as staged:
            (staged / "a.txt").write_text("second")
    assert (final / "a.txt").read_text() == "first" and leftovers(final.parent) == []
    set_live_attempt(attempt, "token-1")
    with open(attempt) as held:  # a publish in progress holds the file shared
        fcntl.flock(held, fcntl.LOCK_SH)
        assert not set_live_attempt(attempt, "token-2", wait_seconds=0.3)  # gave up waiting, wrote anyway
        releaser = threading.Timer(0.5, lambda: fcntl.flock(held, fcntl.LOCK_UN))
        fcntl.flock(held, fcntl.LOCK_SH)
        releaser.start()
        started = time.monotonic()
        assert set_live_attempt(attempt, "token-3", wait_seconds=10)
        assert time.monotonic() - started >= 0.4
    assert attempt.read_text().strip() == "token-3"

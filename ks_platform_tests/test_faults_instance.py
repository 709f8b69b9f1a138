"""Faults of the instance and of concurrency (issue #8), with real processes: the PostgreSQL instance database
restarting in the middle of a sort, and two runs of one session launched at once (through the run queue, with the
real ``dagster-daemon``, and outside it, as two run-worker processes that meet at the session's write lock)."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import pytest
import yaml
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

from ks_platform.core import conversion, pipeline
from ks_platform.core.sessions import SessionRef
from ks_platform.core.store import LOCK_FILE, SessionStore, session_lock
from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME
from ks_platform_tests.conftest import ROOT_NAME, TEST_SPEC, leftovers, wait_until, missing_dependency
from ks_platform_tests.postgres_support import postgres_bin_dir, postgres_server
from ks_platform_tests.test_faults import COMPLETE_MARKERS, FinalNameWatcher, write_raw_int16_session

REPO = Path(__file__).resolve().parent.parent
PARTITION_TAG = "dagster/partition"
INGEST = ["raw_recording", "probe_map", "recording_binary"]
TERMINAL = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


@dataclass
class Worker:
    """A run-worker process (``ks_platform_tests/run_worker.py``) and the file its output goes to."""

    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def finish(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"the run worker did not end within {timeout:.0f} s; its log:\n{self.output()[-3000:]}") from None


def launch_worker(home: Path, store: Path, landing: Path, key: str, assets: list[str], name: str, zero_copy: bool = True) -> Worker:
    config = {"store": str(store), "landing": str(landing), "key": key, "assets": assets, "zero_copy": zero_copy}
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO)}
    log = home / f"worker-{name}.log"
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "ks_platform_tests.run_worker", json.dumps(config)], env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    return Worker(process, log)


def home_with(config_file: Path, home: Path) -> Path:
    """A ``DAGSTER_HOME`` whose dagster.yaml is a copy of ``config_file`` (the repo's own instance config)."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(config_file, home / "dagster.yaml")
    return home


def partition_runs(instance: dg.DagsterInstance, key: str) -> list:
    return list(instance.get_runs(RunsFilter(tags={PARTITION_TAG: key})))


def run_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [entry.user_message for entry in instance.all_logs(run_id)]


def session_key(folder_name: str, date: datetime.date = TEST_SPEC.recording_date, probe: str = "imec0") -> str:
    return SessionRef(ROOT_NAME, folder_name, date, probe).key


def assert_outputs_complete(session_dir: Path, steps: list[str]) -> None:
    """Each final folder holds its completion marker and nothing temporary or swapped-out is left."""
    for step in steps:
        assert (session_dir / step / COMPLETE_MARKERS[step]).is_file(), f"{step}/ is incomplete under its final name"
    assert leftovers(session_dir) == []


# --------------------------------------------------------------------------------------------------------------------
# The instance database (PostgreSQL) restarts while Kilosort runs


def postmaster_started(url: str) -> tuple[datetime.datetime, str]:
    """The server's start time and data directory (a restart changes the first)."""
    import psycopg2

    with closing(psycopg2.connect(url)) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT pg_postmaster_start_time(), current_setting('data_directory')")
        started, data_dir = cursor.fetchone()
    return started, data_dir


def restart_postgres(url: str) -> None:
    """``pg_ctl restart -m fast``: every open connection is cut, the server is gone for a moment, then back."""
    before, data_dir = postmaster_started(url)
    command = [str(postgres_bin_dir() / "pg_ctl"), "-D", data_dir, "-m", "fast", "-w", "-t", "60", "-l", str(Path(data_dir).parent / "restart.log"), "restart"]
    if os.geteuid() == 0:  # the cluster belongs to the postgres user (postgres_support.py)
        command = ["runuser", "-u", "postgres", "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    after, _ = postmaster_started(url)
    assert after > before, "the server really restarted"


@contextmanager
def postgres_home(tmp_path: Path, monkeypatch) -> Iterator[tuple[Path, str]]:
    """A fresh PostgreSQL server and a ``DAGSTER_HOME`` configured by deploy/dagster.postgres.yaml for it."""
    if postgres_bin_dir() is None:
        missing_dependency("PostgreSQL is not installed")
    with postgres_server("dagster_restart") as url:
        parsed = urlparse(url)
        env = {"DAGSTER_PG_USERNAME": parsed.username, "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_HOST": parsed.hostname, "DAGSTER_PG_DB": parsed.path[1:], "DAGSTER_PG_PORT": str(parsed.port)}
        for name, value in env.items():
            monkeypatch.setenv(name, value)  # read by this process's instance and inherited by the run workers
        yield home_with(REPO / "deploy" / "dagster.postgres.yaml", tmp_path / "dagster_home"), url


@pytest.mark.slow
def test_postgres_restart_mid_sort_ends_the_run_cleanly_and_it_can_be_rerun(tmp_path, monkeypatch, generated_session, sorted_workspace):
    reference_ws, reference_key, reference_result = sorted_workspace
    assert reference_result.success
    reference = reference_ws.store(reference_key)
    landing, store = tmp_path / "landing", tmp_path / "store"
    shutil.copytree(generated_session, landing / generated_session.name)
    key = session_key(generated_session.name)
    session = SessionStore(store.resolve(), key).dir

    with postgres_home(tmp_path, monkeypatch) as (home, url):
        worker = launch_worker(home, store, landing, key, [*INGEST, "sorted_units"], "sort")
        wait_until(lambda: list(session.glob(".sorting.tmp-*")) or worker.process.poll() is not None, 900, "Kilosort to start", poll=0.2)
        assert worker.process.poll() is None, f"the worker ended before the sort started:\n{worker.output()[-3000:]}"
        time.sleep(3)  # well inside Kilosort: the step is writing progress events to the database
        restart_postgres(url)
        assert worker.process.poll() is None, "the worker is still sorting after the restart"
        returncode = worker.finish(timeout=1800)

        with dg.DagsterInstance.from_config(str(home)) as instance:
            [run] = partition_runs(instance, key)
            assert run.status in TERMINAL, f"run {run.run_id} left in {run.status} after the database restart"
            messages = run_messages(instance, run.run_id)
            if returncode == 0:
                # Dagster's PostgreSQL storage opens a connection per write (NullPool) and retries failed connections.
                assert run.status == DagsterRunStatus.SUCCESS
                materialized = instance.get_latest_materialization_event(dg.AssetKey("sorted_units"))
                assert materialized is not None and materialized.run_id == run.run_id
                assert_outputs_complete(session, ["probe", "binary", "sorting"])
            else:
                # Failing is acceptable only when it is clean: a failed run record with the error, nothing half-done.
                assert run.status == DagsterRunStatus.FAILURE, worker.output()[-3000:]
                assert any("onnect" in m or "database" in m.lower() for m in messages), messages[-20:]
                assert not (session / "sorting").exists() or (session / "sorting" / COMPLETE_MARKERS["sorting"]).is_file()
            print(f"postgres restart mid-sort: worker rc {returncode}, run {run.status.value}; "
                  f"connection retries logged: {worker.output().count('Retrying failed database connection')}")

            # Re-run the partition on the restarted database: a new run (the retry after a failure) succeeds.
            rerun_assets = INGEST if returncode == 0 else [*INGEST, "sorted_units"]
            rerun = launch_worker(home, store, landing, key, rerun_assets, "rerun")
            assert rerun.finish(timeout=1800) == 0, rerun.output()[-3000:]
            runs = partition_runs(instance, key)
            assert len(runs) == 2 and all(r.status == DagsterRunStatus.SUCCESS for r in runs if r.run_id != run.run_id)

    assert_outputs_complete(session, ["probe", "binary", "sorting"])
    for name in ("spike_times.npy", "spike_clusters.npy"):
        assert (session / "sorting" / name).read_bytes() == (reference.sorting_dir / name).read_bytes(), name


# --------------------------------------------------------------------------------------------------------------------
# Two runs of one session through the run queue (the real daemon and the repo's dagster.yaml)

LAUNCH_RUN = """mutation($executionParams: ExecutionParams!) { launchRun(executionParams: $executionParams) {
  __typename ... on LaunchRunSuccess { run { runId status } } ... on PythonError { message stack }
  ... on RunConfigValidationInvalid { errors { message } } } }"""
LOCATION = "ks_platform_queue_test"


def launch_through_graphql(request_context, key: str, assets: list[str]) -> str:
    """What the UI's "Materialize" button does: ``launchRun`` of the session job's assets for one partition."""
    from dagster_graphql.test.utils import execute_dagster_graphql

    params = {
        "selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "jobName": "sort_session", "assetSelection": [{"path": [a]} for a in assets]},
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": PARTITION_TAG, "value": key}]},
    }
    result = execute_dagster_graphql(request_context, LAUNCH_RUN, {"executionParams": params}).data["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    assert result["run"]["status"] == "QUEUED", "the instance queues runs (QueuedRunCoordinator)"
    return result["run"]["runId"]


@pytest.fixture
def queue_env(tmp_path, monkeypatch, generated_session):
    """Two sessions in a landing root, a DAGSTER_HOME with the repo's dagster.yaml, and a workspace for them."""
    landing, store = tmp_path / "landing", tmp_path / "store"
    for name in ("queue_a", "queue_b"):
        shutil.copytree(generated_session, landing / name)
    home = home_with(REPO / "dagster.yaml", tmp_path / "dagster_home")
    (tmp_path / "queue_defs.py").write_text("from ks_platform.definitions import build_definitions\n\ndefs = build_definitions(sensors=[])\n")
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_file": {"relative_path": "queue_defs.py", "location_name": LOCATION, "working_directory": str(tmp_path)}}]}))
    env = {"DAGSTER_HOME": str(home), "KS_PLATFORM_STORE": str(store), "KS_PLATFORM_LANDING": f"{ROOT_NAME}={landing}", "KS_PLATFORM_BACKEND": "cpu", "PYTHONPATH": str(REPO)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the code servers and run processes inherit these
    return home, store, workspace


@contextmanager
def running_daemon(home: Path, workspace: Path) -> Iterator[Path]:
    """``dagster-daemon run`` as its own process group (killed at the end); yields its log file."""
    log = home / "daemon.log"
    with open(log, "w") as handle:
        daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(workspace)], stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield log
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()


def test_two_queued_runs_of_one_session_never_overlap_while_another_session_runs(queue_env):
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    home, store, workspace = queue_env
    key_a, key_b = session_key("queue_a"), session_key("queue_b")
    assets = ["raw_recording", "probe_map"]
    with dg.DagsterInstance.from_config(str(home)) as instance, running_daemon(home, workspace) as daemon_log:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, [key_a, key_b])
        status = lambda run_id: instance.get_run_by_id(run_id).status  # noqa: E731
        # This test holds session A's write lock, so A's first run stays in its first step until we let go.
        with session_lock(SessionStore(store.resolve(), key_a), poll_seconds=0.5):
            with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(workspace)])) as context:
                request = context.create_request_context()
                first_a = launch_through_graphql(request, key_a, assets)
                second_a = launch_through_graphql(request, key_a, assets)
                other_b = launch_through_graphql(request, key_b, assets)
            wait_until(lambda: status(first_a) == DagsterRunStatus.STARTED, 300, f"the daemon to start run {first_a}\n{daemon_log}")
            wait_until(lambda: status(other_b) in TERMINAL, 300, "the other session's run (dequeued beside A's)")
            assert status(other_b) == DagsterRunStatus.SUCCESS
            waiting = wait_until(lambda: [m for m in run_messages(instance, first_a) if "is being written by" in m], 120, "A's step to log its wait")
            assert f"session {key_a} is being written by pid {os.getpid()}" in waiting[0] and "waiting" in waiting[0]
            # Three more dequeue rounds (5 s apart) while A's first run is STARTED: its twin stays queued.
            for _ in range(16):
                assert status(first_a) == DagsterRunStatus.STARTED
                assert status(second_a) == DagsterRunStatus.QUEUED, "a second run of the same session was dequeued while the first ran"
                time.sleep(1)
        wait_until(lambda: status(first_a) in TERMINAL and status(second_a) in TERMINAL, 300, "both runs of session A to finish once the lock is released")
        records = {run_id: instance.get_run_record_by_id(run_id) for run_id in (first_a, second_a, other_b)}
    assert all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in records.values()), {k: r.dagster_run.status for k, r in records.items()}
    assert records[second_a].start_time >= records[first_a].end_time, "A's second run started only after its first one ended"
    b_record = records[other_b]
    assert records[first_a].start_time <= b_record.start_time and b_record.end_time <= records[first_a].end_time, "B ran while A's first run was in progress"
    for key in (key_a, key_b):
        assert_outputs_complete(SessionStore(store.resolve(), key).dir, ["probe"])


# --------------------------------------------------------------------------------------------------------------------
# Two run workers of one session outside the queue: the session's write lock serializes them


def test_two_run_workers_of_one_session_take_turns_and_leave_one_whole_binary(tmp_path):
    home = home_with(REPO / "dagster.yaml", tmp_path / "dagster_home")
    landing, store = tmp_path / "landing", tmp_path / "store"
    folder = write_raw_int16_session(landing / "twin_raw", seconds=40)
    key = session_key(folder.name, datetime.date(2026, 3, 4), "recording")  # a raw binary's probe is its file stem
    session = SessionStore(store.resolve(), key).dir
    prepare = launch_worker(home, store, landing, key, ["raw_recording"], "prepare")
    assert prepare.finish(timeout=600) == 0, prepare.output()[-3000:]

    watcher = FinalNameWatcher(session)
    watcher.start()
    workers = [launch_worker(home, store, landing, key, ["recording_binary"], f"twin{i}", zero_copy=False) for i in range(2)]
    # Whichever worker takes the lock first is frozen mid-conversion (a slow disk, a slow source) until the other
    # has reached the step and said that it waits: the conversion here takes ~1 s, shorter than the start skew.
    wait_until(lambda: any((p / conversion.BINARY_NAME).exists() for p in session.glob(".binary.tmp-*")), 600, "a conversion to start", poll=0.001)
    holder_pid = int((session / LOCK_FILE).read_text().split()[1])
    [holder] = [w for w in workers if w.process.pid == holder_pid]
    [waiter] = [w for w in workers if w is not holder]
    os.kill(holder_pid, signal.SIGSTOP)
    try:
        wait_until(lambda: "is being written by" in waiter.output() or waiter.process.poll() is not None, 600, "the second worker to wait for the lock")
        assert not (session / "binary").exists(), "the waiting worker did not write while the holder converts"
    finally:
        os.kill(holder_pid, signal.SIGCONT)
    codes = [w.finish(timeout=900) for w in workers]
    watcher.stop()
    assert codes == [0, 0], [w.output()[-2000:] for w in workers]
    assert watcher.partial_seen == [] and watcher.samples > 10

    [said] = [line for line in waiter.output().splitlines() if "is being written by" in line]
    assert f"session {key} is being written by pid {holder_pid}" in said and "waiting" in said
    assert "is being written by" not in holder.output()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = [r for r in partition_runs(instance, key) if r.asset_selection == {dg.AssetKey("recording_binary")}]
        assert len(runs) == 2 and all(r.status == DagsterRunStatus.SUCCESS for r in runs)
        in_event_log = [r.run_id for r in runs if any("is being written by" in m for m in run_messages(instance, r.run_id))]
        assert len(in_event_log) == 1, "the wait is in the waiting run's event log (what the UI shows)"

    assert_outputs_complete(session, ["binary"])
    undisturbed = conversion.write_recording_binary(pipeline.open_recording(folder), tmp_path / "undisturbed" / "binary", allow_zero_copy=False)
    assert (session / "binary" / conversion.BINARY_NAME).read_bytes() == undisturbed.path.read_bytes()
    assert conversion.load_recording_binary(session / "binary").checksum == undisturbed.checksum

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

import dagster as dg
import pytest
import yaml
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

from ks_platform.core import conversion, pipeline
from ks_platform.core.names import PARTITION_TAG
from ks_platform.core.sessions import SessionRef
from ks_platform.core.store import LOCK_FILE, SessionStore, session_lock
from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME
from ks_platform_tests.conftest import (
    ROOT_NAME,
    TEST_SPEC,
    leftovers,
    missing_dependency,
    stop_process_group,
    wait_until,
)
from ks_platform_tests.faults_support import (
    COMPLETE_MARKERS,
    FinalNameWatcher,
    same_bytes,
    same_phy_folder,
    write_raw_int16_session,
)
from ks_platform_tests.postgres_support import dagster_pg_env, pg_ctl, postgres_bin_dir, postgres_server

REPO = Path(__file__).resolve().parent.parent
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
            raise AssertionError(
                f"the run worker did not end within {timeout:.0f} s; its log:\n{self.output()[-3000:]}"
            ) from None


def launch_worker(
    home: Path, store: Path, landing: Path, key: str, assets: list[str], name: str, zero_copy: bool = True
) -> Worker:
    config = {"store": str(store), "landing": str(landing), "key": key, "assets": assets, "zero_copy": zero_copy}
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO)}
    log = home / f"worker-{name}.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "ks_platform_tests.run_worker", json.dumps(config)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    LAUNCHED.append(Worker(process, log))
    return LAUNCHED[-1]


#: The run workers this module started (each in its own session, so they outlive a failed test unless ended).
LAUNCHED: list[Worker] = []


@pytest.fixture(autouse=True)
def no_worker_left_behind() -> Iterator[None]:
    """A test that fails or times out mid-way still ends the run workers it started."""
    yield
    while LAUNCHED:
        worker = LAUNCHED.pop()
        if worker.process.poll() is None:
            os.killpg(worker.process.pid, signal.SIGKILL)
            worker.process.wait()


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


def postmaster_started(url: str) -> tuple[datetime.datetime, Path]:
    """The server's start time and data directory (a restart changes the first)."""
    import psycopg2

    with closing(psycopg2.connect(url)) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT pg_postmaster_start_time(), current_setting('data_directory')")
        started, data_dir = cursor.fetchone()
    return started, Path(data_dir)


#: What dagster-postgres logs (a root-logger warning, in the worker's stderr) at each refused connection attempt.
RETRYING = "Retrying failed database connection"
#: What Dagster writes to stderr when a log line of a step could not be stored (dagster/_core/instance/types.py).
LOG_WRITE_FAILED = "Exception while writing logger call to event log"
#: Kilosort's params.py holds the absolute binary path; ops.npy, the log and our records hold timings.
SORTING_VARIES = (
    "ops.npy",
    "kilosort4.log",
    "params.py",
    "lineage.json",
    "sorting_summary.json",
    "effective_settings.json",
)


def connection_retry() -> tuple[int, float]:
    """How dagster-postgres retries a refused connection: ``retry_pg_connection_fn``'s default attempts, and the
    shortest it waits in all before giving up (exponential backoff ``(2**n - 1) * retry_wait`` after attempt n,
    with ± ``retry_wait`` jitter: 0.2 s, 5 retries: 10.4-12.4 s in dagster-postgres 0.29)."""
    import inspect

    from dagster_postgres.utils import retry_pg_connection_fn

    parameters = inspect.signature(retry_pg_connection_fn).parameters
    limit, wait = parameters["retry_limit"].default, parameters["retry_wait"].default
    return limit + 1, sum((2**n - 1) * wait - wait for n in range(1, limit + 1))


def step_errors(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """Step key -> the failure's message with its causes, for each failed step of the run."""
    errors = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and event.is_step_failure:
            error, chain = event.step_failure_data.error, []
            while error is not None:
                chain.append(error.message)
                error = error.cause
            errors[event.step_key] = " <- ".join(chain)
    return errors


@contextmanager
def postgres_home(tmp_path: Path, monkeypatch) -> Iterator[tuple[Path, str]]:
    """A fresh PostgreSQL server and a ``DAGSTER_HOME`` configured by deploy/dagster.postgres.yaml for it."""
    if postgres_bin_dir() is None:
        missing_dependency("PostgreSQL is not installed")
    with postgres_server("dagster_restart") as url:
        env = dagster_pg_env(url)
        for name, value in env.items():
            monkeypatch.setenv(name, value)  # read by this process's instance and inherited by the run workers
        yield home_with(REPO / "deploy" / "dagster.postgres.yaml", tmp_path / "dagster_home"), url


def landed_session(tmp_path: Path, generated_session: Path) -> tuple[Path, Path, str, Path]:
    """The canonical session copied into a fresh landing root: landing, store, partition key, session folder."""
    landing, store = tmp_path / "landing", tmp_path / "store"
    shutil.copytree(generated_session, landing / generated_session.name)
    key = session_key(generated_session.name)
    return landing, store, key, SessionStore(store.resolve(), key).dir


@pytest.mark.slow
def test_postgres_down_a_few_seconds_mid_sort_is_retried_and_the_run_succeeds(
    tmp_path, monkeypatch, generated_session, sorted_workspace
):
    """The instance database stops (``pg_ctl stop -m fast``: every open connection is cut) while Kilosort runs
    and starts again as soon as the step's next write has been refused once: dagster-postgres opens a connection
    per write (NullPool) and retries a refused one for ~10 s, so the write lands and the run succeeds."""
    reference_ws, reference_key, reference_result = sorted_workspace
    assert reference_result.success
    reference = reference_ws.store(reference_key)
    landing, store, key, session = landed_session(tmp_path, generated_session)
    _, shortest_budget = connection_retry()

    with postgres_home(tmp_path, monkeypatch) as (home, url):
        worker = launch_worker(home, store, landing, key, [*INGEST, "sorted_units"], "sort")
        sorting = lambda: [p for p in session.glob(".sorting.tmp-*") if (p / "kilosort4.log").is_file()]  # noqa: E731
        wait_until(lambda: sorting() or worker.process.poll() is not None, 900, "Kilosort to start", poll=0.2)
        assert worker.process.poll() is None, f"the worker ended before the sort started:\n{worker.output()[-3000:]}"
        started, data_dir = postmaster_started(url)
        pg_ctl(data_dir, "stop")
        wait_until(
            lambda: RETRYING in worker.output() or worker.process.poll() is not None,
            600,
            "a write of the sorting step to be refused",
            poll=0.05,
        )
        refused = time.monotonic()
        assert sorting() and not (session / "sorting").exists(), "the refused write came from inside the sort"
        pg_ctl(data_dir, "start")
        back_after = time.monotonic() - refused
        assert postmaster_started(url)[0] > started, "the server really stopped and started again"
        assert back_after < shortest_budget, f"the server was back {back_after:.1f} s after the first refusal"
        assert worker.process.poll() is None, "the worker is still sorting after the outage"
        returncode = worker.finish(timeout=1800)
        output = worker.output()
        print(
            f"postgres down mid-sort: back {back_after:.1f} s after the first refused connection "
            f"(retry budget >= {shortest_budget:.1f} s); retries logged: {output.count(RETRYING)}"
        )
        assert returncode == 0, output[-3000:]
        assert "too many retries" not in output, "no write gave up"

        with dg.DagsterInstance.from_config(str(home)) as instance:
            [run] = partition_runs(instance, key)
            assert run.status == DagsterRunStatus.SUCCESS
            for asset in [*INGEST, "sorted_units"]:
                materialized = instance.get_latest_materialization_event(dg.AssetKey(asset))
                assert materialized is not None and materialized.run_id == run.run_id, asset

    assert_outputs_complete(session, ["probe", "binary", "sorting"])
    assert same_bytes(session / "sorting", reference.sorting_dir, skip=SORTING_VARIES) == []


@pytest.mark.slow
def test_postgres_down_past_retry_budget_fails_phy_export_then_rerun_succeeds(
    tmp_path, monkeypatch, generated_session, sorted_workspace
):
    """The instance database stops while the Phy export waits for its session's lock and stays down until the
    step's write has used up dagster-postgres's retries twice (its log line, then Dagster's report of the failed
    log line): the step fails with the database error and the run is recorded FAILED once the database is back.
    The export itself was whole and in place before its log line failed (nothing half-written, not materialized);
    a rerun on the restarted database materializes a Phy folder identical to an undisturbed one."""
    reference_ws, reference_key, reference_result = sorted_workspace
    assert reference_result.success
    reference = reference_ws.store(reference_key)
    landing, store, key, session = landed_session(tmp_path, generated_session)
    attempts, _ = connection_retry()

    with postgres_home(tmp_path, monkeypatch) as (home, url):
        ingest = launch_worker(home, store, landing, key, INGEST, "ingest")
        assert ingest.finish(timeout=600) == 0, ingest.output()[-3000:]
        # This test is about the Phy export: it starts from the shared reference sort of this same session.
        shutil.copytree(reference.sorting_dir, session / "sorting")
        _, data_dir = postmaster_started(url)

        with session_lock(SessionStore(store.resolve(), key), poll_seconds=0.5):
            worker = launch_worker(home, store, landing, key, ["phy_bundle"], "phy")
            wait_until(
                lambda: "is being written by" in worker.output() or worker.process.poll() is not None,
                300,
                "the Phy export to wait for the session's lock",
            )
            assert worker.process.poll() is None, worker.output()[-3000:]
            with dg.DagsterInstance.from_config(str(home)) as instance:
                [run] = [r for r in partition_runs(instance, key) if r.asset_selection == {dg.AssetKey("phy_bundle")}]
                wait_until(
                    lambda: any("is being written by" in m for m in run_messages(instance, run.run_id)),
                    60,
                    "the wait's log line to be stored",
                )  # so no write is under way when the server stops
            pg_ctl(data_dir, "stop")  # the step writes nothing more until it has the lock
        # The lock is released with the database down: the export runs, then its write is refused until Dagster
        # gives up twice (the log line, then the engine event reporting it) and raises in the step.
        retried_out = lambda: worker.output().count(RETRYING) >= 2 * attempts  # noqa: E731
        gave_up = wait_until(
            lambda: retried_out() or worker.process.poll() is not None,
            600,
            "the step's write to use up its retries twice",
            poll=0.05,
        )
        output = worker.output()
        assert gave_up and worker.process.poll() is None, output[-3000:]
        assert output.count(RETRYING, 0, output.index(LOG_WRITE_FAILED)) == attempts, "first the log line gave up"
        pg_ctl(data_dir, "start")  # within the retries of the step's failure event
        returncode = worker.finish(timeout=600)
        output = worker.output()
        print(f"postgres down past the retry budget: worker rc {returncode}; retries logged: {output.count(RETRYING)}")
        assert returncode == 1, output[-3000:]

        with dg.DagsterInstance.from_config(str(home)) as instance:
            [run] = [r for r in partition_runs(instance, key) if r.asset_selection == {dg.AssetKey("phy_bundle")}]
            assert run.status == DagsterRunStatus.FAILURE
            errors = step_errors(instance, run.run_id)
            assert list(errors) == ["phy_bundle"], errors
            assert "too many retries for DB connection" in errors["phy_bundle"], errors
            assert instance.get_latest_materialization_event(dg.AssetKey("phy_bundle")) is None
            # The export was put in place (whole, atomically) before its log line failed: phy/ is complete, only
            # not recorded as materialized; nothing staged is left.
            assert_outputs_complete(session, ["phy"])
            assert same_phy_folder(session / "phy", reference.phy_dir) == []

            rerun = launch_worker(home, store, landing, key, ["phy_bundle"], "rerun")
            assert rerun.finish(timeout=600) == 0, rerun.output()[-3000:]
            [again] = [
                r
                for r in partition_runs(instance, key)
                if r.asset_selection == {dg.AssetKey("phy_bundle")} and r.run_id != run.run_id
            ]
            assert again.status == DagsterRunStatus.SUCCESS
            assert instance.get_latest_materialization_event(dg.AssetKey("phy_bundle")).run_id == again.run_id

    assert_outputs_complete(session, ["probe", "binary", "sorting", "phy"])
    assert same_phy_folder(session / "phy", reference.phy_dir) == []


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
        "selector": {
            "repositoryLocationName": LOCATION,
            "repositoryName": "__repository__",
            "jobName": "sort_session",
            "assetSelection": [{"path": [a]} for a in assets],
        },
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
    (tmp_path / "queue_defs.py").write_text(
        "from ks_platform.definitions import build_definitions\n\ndefs = build_definitions(sensors=[])\n"
    )
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_file": {
                            "relative_path": "queue_defs.py",
                            "location_name": LOCATION,
                            "working_directory": str(tmp_path),
                        }
                    }
                ]
            }
        )
    )
    env = {
        "DAGSTER_HOME": str(home),
        "KS_PLATFORM_STORE": str(store),
        "KS_PLATFORM_LANDING": f"{ROOT_NAME}={landing}",
        "KS_PLATFORM_BACKEND": "cpu",
        "PYTHONPATH": str(REPO),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the code servers and run processes inherit these
    return home, store, workspace


@contextmanager
def running_daemon(home: Path, workspace: Path) -> Iterator[Path]:
    """``dagster-daemon run`` as its own process group (killed at the end); yields its log file."""
    log = home / "daemon.log"
    with open(log, "w") as handle:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(workspace)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield log
    finally:
        stop_process_group(daemon, timeout=30)


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
            wait_until(
                lambda: status(first_a) == DagsterRunStatus.STARTED,
                300,
                f"the daemon to start run {first_a}\n{daemon_log}",
            )
            wait_until(lambda: status(other_b) in TERMINAL, 300, "the other session's run (dequeued beside A's)")
            assert status(other_b) == DagsterRunStatus.SUCCESS
            waiting = wait_until(
                lambda: [m for m in run_messages(instance, first_a) if "is being written by" in m],
                120,
                "A's step to log its wait",
            )
            assert f"session {key_a} is being written by pid {os.getpid()}" in waiting[0] and "waiting" in waiting[0]
            # Three more dequeue rounds (5 s apart) while A's first run is STARTED: its twin stays queued.
            for _ in range(16):
                assert status(first_a) == DagsterRunStatus.STARTED
                assert status(second_a) == DagsterRunStatus.QUEUED, (
                    "a second run of the same session was dequeued while the first ran"
                )
                time.sleep(1)
        wait_until(
            lambda: status(first_a) in TERMINAL and status(second_a) in TERMINAL,
            300,
            "both runs of session A to finish once the lock is released",
        )
        records = {run_id: instance.get_run_record_by_id(run_id) for run_id in (first_a, second_a, other_b)}
    assert all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in records.values()), {
        k: r.dagster_run.status for k, r in records.items()
    }
    assert records[second_a].start_time >= records[first_a].end_time, (
        "A's second run started only after its first one ended"
    )
    b_record = records[other_b]
    assert records[first_a].start_time <= b_record.start_time and b_record.end_time <= records[first_a].end_time, (
        "B ran while A's first run was in progress"
    )
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
    workers = [
        launch_worker(home, store, landing, key, ["recording_binary"], f"twin{i}", zero_copy=False) for i in range(2)
    ]
    # Whichever worker takes the lock first is frozen mid-conversion (a slow disk, a slow source) until the other
    # has reached the step and said that it waits: the conversion here takes ~1 s, shorter than the start skew.
    wait_until(
        lambda: any((p / conversion.BINARY_NAME).exists() for p in session.glob(".binary.tmp-*")),
        600,
        "a conversion to start",
        poll=0.001,
    )
    holder_pid = int((session / LOCK_FILE).read_text().split()[1])
    [holder] = [w for w in workers if w.process.pid == holder_pid]
    [waiter] = [w for w in workers if w is not holder]
    os.kill(holder_pid, signal.SIGSTOP)
    try:
        wait_until(
            lambda: "is being written by" in waiter.output() or waiter.process.poll() is not None,
            600,
            "the second worker to wait for the lock",
        )
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
        in_event_log = [
            r.run_id for r in runs if any("is being written by" in m for m in run_messages(instance, r.run_id))
        ]
        assert len(in_event_log) == 1, "the wait is in the waiting run's event log (what the UI shows)"

    assert_outputs_complete(session, ["binary"])
    undisturbed = conversion.write_recording_binary(
        pipeline.as_scan(folder).open(), tmp_path / "undisturbed" / "binary", allow_zero_copy=False
    )
    assert (session / "binary" / conversion.BINARY_NAME).read_bytes() == undisturbed.path.read_bytes()
    assert conversion.load_recording_binary(session / "binary").checksum == undisturbed.checksum

"""Live (issue #6): ``dagster dev`` (webserver + daemon) on a free port, a session copied into a landing root,
observed only through GraphQL: the sensor's run is launched and succeeds, the daily rollup follows, and a
``ks-platform backfill`` over the session's date targets exactly that session.

Real processes, real Kilosort (CPU), a temporary ``DAGSTER_HOME``, landing root and store. Both processes
are killed (whole process group) at the end; on failure their logs go to ``test-artifacts/live_dagster/``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "live_dagster"
LOCATION = "ks_platform"
#: Kilosort on 2 shared CPU cores can take several minutes; the whole test is bounded by these.
SORT_TIMEOUT_S = 1200
STARTUP_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GraphQL:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/graphql"

    def __call__(self, query: str, **variables) -> dict:
        request = urllib.request.Request(self.url, data=json.dumps({"query": query, "variables": variables}).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = json.loads(response.read())
        assert "errors" not in payload, payload
        return payload["data"]


RUNS = """query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { __typename
  ... on Runs { results { runId status jobName tags { key value } } } } }"""
RUN = """query($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { status } } }"""
START_SENSOR = """mutation($selector: SensorSelector!) { startSensor(sensorSelector: $selector) { __typename
  ... on Sensor { sensorState { status } } ... on PythonError { message } } }"""
ADD_PARTITION = """mutation($selector: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: $name, partitionKey: $key) { __typename } }"""
BACKFILL = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
  ... on PartitionBackfill { id status isAssetBackfill partitionNames title assetSelection { path } } } }"""
CANCEL_BACKFILL = """mutation($id: String!) { cancelPartitionBackfill(backfillId: $id) { __typename } }"""
TERMINATE = """mutation($runId: String!) { terminateRun(runId: $runId) { __typename } }"""


def tags_of(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


def wait_for(what: str, probe, timeout_s: float, every_s: float = 3.0):
    """Call ``probe`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last_error = exc
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


@pytest.fixture
def live_dagster(tmp_path, generated_session, request):
    """``dagster dev`` with a temp DAGSTER_HOME, landing root and store; yields (graphql, env, landing)."""
    home, landing, store = tmp_path / "dagster_home", tmp_path / "landing" / "rig1", tmp_path / "store"
    for path in (home, landing, store):
        path.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "KS_PLATFORM_STORE": str(store),
        "KS_PLATFORM_LANDING": f"rig1={landing}",
        "KS_PLATFORM_BACKEND": "cpu",
        "KS_PLATFORM_READY_MARKER": ".ready",  # complete = the copy script wrote .ready last
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("KS_PLATFORM_INVENTORY", None)
    log_path = tmp_path / "dagster_dev.log"
    dagster = Path(sys.executable).with_name("dagster")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(dagster), "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    graphql = GraphQL(port)
    failures_before = request.session.testsfailed
    try:
        wait_for("the code location to load", lambda: process.poll() is None and graphql("{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }")["repositoriesOrError"].get("nodes"), STARTUP_TIMEOUT_S)
        yield graphql, env, landing
    finally:
        for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            if process.poll() is not None:
                break
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
        if request.session.testsfailed > failures_before or sys.exc_info()[0] is not None:  # the call's report is counted before teardown
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(log_path, ARTIFACTS / "dagster_dev.log")
            for compute_log in (home / "storage").rglob("*.err") if (home / "storage").exists() else []:
                shutil.copy(compute_log, ARTIFACTS / f"{compute_log.parent.name}-{compute_log.name}")


def test_sensor_sorts_a_dropped_session_and_backfill_targets_its_date(live_dagster, generated_session):
    graphql, env, landing = live_dagster
    date = "2026-03-02"
    key = f"{date}__rig1__{generated_session.name}"

    # The lab's copy: files first, the marker last.
    shutil.copytree(generated_session, landing / generated_session.name)
    (landing / generated_session.name / ".ready").touch()

    # Start the sensor the way a user does (the UI's toggle is this mutation); it is stopped by default.
    started = graphql(START_SENSOR, selector={"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "sensorName": "new_session_sensor"})
    assert started["startSensor"]["__typename"] == "Sensor" and started["startSensor"]["sensorState"]["status"] == "RUNNING", started

    sensor_tags = [{"key": "dagster/sensor_name", "value": "new_session_sensor"}]
    [run] = wait_for("the sensor to launch a run", lambda: graphql(RUNS, tags=sensor_tags)["runsOrError"]["results"], 180)
    assert tags_of(run)["dagster/partition"] == key and run["jobName"] == "sort_session"
    assert tags_of(run)["dagster/run_key"].startswith(f"{key}:")

    status = wait_for("the sort run to finish", lambda: (s := graphql(RUN, runId=run["runId"])["runOrError"]["status"]) in ("SUCCESS", "FAILURE", "CANCELED") and s, SORT_TIMEOUT_S, every_s=10)
    assert status == "SUCCESS"
    assert (Path(env["KS_PLATFORM_STORE"]) / "sessions" / key / "phy" / "params.py").is_file()
    # The sensor does not sort it twice (later ticks see the same run key).
    assert len(graphql(RUNS, tags=sensor_tags)["runsOrError"]["results"]) == 1

    # The rollup sensor (running by default) refreshes that day's rollup after the sort.
    rollup_runs = wait_for(
        "the daily rollup run", lambda: [r for r in graphql(RUNS, tags=[{"key": "dagster/partition", "value": date}])["runsOrError"]["results"] if r["status"] == "SUCCESS"], 180
    )
    assert rollup_runs[0]["jobName"] == "daily_rollup_job"
    rollup = json.loads((Path(env["KS_PLATFORM_STORE"]) / "rollups" / date / "rollup.json").read_text())
    assert rollup["n_sessions"] == 1 and rollup["n_sorted"] == 1 and rollup["n_units"] > 0

    # Another registered session on another date must not be in a backfill of this date.
    added = graphql(ADD_PARTITION, selector={"repositoryLocationName": LOCATION, "repositoryName": "__repository__"}, name="ks_platform_sessions", key="2026-03-20__rig1__elsewhere_g0")
    assert added["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", added

    cli = subprocess.run([str(Path(sys.executable).with_name("ks-platform")), "backfill", "--start", date, "--end", date], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    backfill_id = cli.stdout.split("launched backfill ")[1].split()[0]
    backfill = graphql(BACKFILL, id=backfill_id)["partitionBackfillOrError"]
    assert backfill["__typename"] == "PartitionBackfill" and backfill["isAssetBackfill"], backfill
    assert backfill["partitionNames"] == [key]
    assert sorted("/".join(a["path"]) for a in backfill["assetSelection"]) == ["phy_bundle", "probe_map", "raw_recording", "recording_binary", "sorted_units", "unit_metrics"]

    # The daemon launches the backfill's run(s), all for that one session; then we stop it (a second sort proves nothing more).
    backfill_tags = [{"key": "dagster/backfill", "value": backfill_id}]
    launched = wait_for("the backfill's first run", lambda: graphql(RUNS, tags=backfill_tags)["runsOrError"]["results"], 180)
    assert {tags_of(r)["dagster/partition"] for r in launched} == {key}
    graphql(CANCEL_BACKFILL, id=backfill_id)
    for r in graphql(RUNS, tags=backfill_tags)["runsOrError"]["results"]:
        if r["status"] not in ("SUCCESS", "FAILURE", "CANCELED"):
            graphql(TERMINATE, runId=r["runId"])
    assert {tags_of(r)["dagster/partition"] for r in graphql(RUNS, tags=backfill_tags)["runsOrError"]["results"]} == {key}

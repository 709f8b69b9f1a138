"""A real ``dagster dev`` (webserver + daemon) for live tests: free localhost port, temporary DAGSTER_HOME,
landing root and store, GraphQL client, and logs kept under ``test-artifacts/`` when a test fails."""

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ks_platform.core.names import EXECUTION_ENVS

REPO = Path(__file__).resolve().parents[1]
LOCATION = "ks_platform"
REPOSITORY_SELECTOR = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"}
STARTUP_TIMEOUT_S = 180
TERMINAL_STATUSES = ("SUCCESS", "FAILURE", "CANCELED")
#: Appended to the repo's dagster.yaml in the test instance: the run queue is checked every second instead of
#: Dagster's default 5 s (each launched run waited up to 5 s in the queue). Limits stay in ``concurrency``.
TEST_RUN_COORDINATOR = """
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
"""

RUNS = """query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { __typename
  ... on Runs { results { runId status jobName tags { key value } } } } }"""
RUN = """query($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { status } } }"""
RUN_MESSAGES = """query($runId: ID!) { logsForRun(runId: $runId) { __typename
  ... on EventConnection { events { __typename ... on MessageEvent { message }
    ... on ExecutionStepFailureEvent { error { message } } ... on RunFailureEvent { error { message } } } } } }"""
ADD_PARTITION = """mutation($selector: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: $name, partitionKey: $key) { __typename } }"""
BACKFILL = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
  ... on PartitionBackfill { id status isAssetBackfill partitionNames title assetSelection { path } } } }"""
BACKFILLS = """{ partitionBackfillsOrError { __typename ... on PartitionBackfills { results { id status partitionNames } } } }"""
CANCEL_BACKFILL = """mutation($id: String!) { cancelPartitionBackfill(backfillId: $id) { __typename } }"""
TERMINATE = """mutation($runId: String!) { terminateRun(runId: $runId) { __typename } }"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GraphQL:
    """POSTs to the webserver's ``/graphql``; a response with ``errors`` fails the test."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/graphql"

    def __call__(self, query: str, **variables) -> dict:
        request = urllib.request.Request(
            self.url,
            data=json.dumps({"query": query, "variables": variables}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = json.loads(response.read())
        assert "errors" not in payload, payload
        return payload["data"]

    def run_status(self, run_id: str) -> str:
        return self(RUN, runId=run_id)["runOrError"]["status"]

    def runs(self, **tags: str) -> list[dict]:
        return self(RUNS, tags=[{"key": k, "value": v} for k, v in tags.items()])["runsOrError"]["results"]

    def run_messages(self, run_id: str) -> list[str]:
        """Every event's message, with the error (what the UI shows in red) appended to failure events."""
        events = self(RUN_MESSAGES, runId=run_id)["logsForRun"]["events"]
        return [
            " ".join(filter(None, [e.get("message"), (e.get("error") or {}).get("message")]))
            for e in events
            if e.get("message") or e.get("error")
        ]


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
    pytest.fail(
        f"timed out after {timeout_s:.0f} s waiting for {what}" + (f" (last error: {last_error})" if last_error else "")
    )


def wait_for_run_end(graphql: GraphQL, run_id: str, timeout_s: float) -> str:
    return wait_for(
        f"run {run_id} to finish",
        lambda: (s := graphql.run_status(run_id)) in TERMINAL_STATUSES and s,
        timeout_s,
        every_s=2,
    )


@dataclass
class LiveDagster:
    """A running ``dagster dev`` and the folders it works on."""

    port: int
    graphql: GraphQL
    env: dict[str, str]
    home: Path
    landing: Path
    store: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _stop(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def dagster_dev(
    base: Path, request: pytest.FixtureRequest, artifacts: Path, extra_env: dict[str, str] | None = None
) -> Iterator[LiveDagster]:
    """``dagster dev -w workspace.yaml -h 127.0.0.1`` on a free port over a temp DAGSTER_HOME (the repo's
    dagster.yaml), landing root ``rig1`` and store, CPU backend. The whole process group is stopped at the end;
    when the test failed its log and the step logs are copied to ``artifacts``."""
    home, landing, store = base / "dagster_home", base / "landing" / "rig1", base / "store"
    for path in (home, landing, store):
        path.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    with open(home / "dagster.yaml", "a") as config:  # the repo's settings; only the queue is polled sooner
        config.write(TEST_RUN_COORDINATOR)
    port = free_port()
    env = {  # this machine's default executor, whatever chooses another one here
        **{name: value for name, value in os.environ.items() if name not in EXECUTION_ENVS},
        "DAGSTER_HOME": str(home),
        "KS_PLATFORM_STORE": str(store),
        "KS_PLATFORM_LANDING": f"rig1={landing}",
        "KS_PLATFORM_BACKEND": "cpu",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    log_path = base / "dagster_dev.log"
    dagster = Path(sys.executable).with_name("dagster")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            # SIGINT at its default whatever this run inherited, as `make dev` starts it (scripts/exec_with_sigint.py)
            [sys.executable, str(REPO / "scripts" / "exec_with_sigint.py"), str(dagster), "dev"]
            + ["-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    graphql = GraphQL(port)
    failures_before = request.session.testsfailed
    try:
        wait_for(
            "the code location to load",
            lambda: process.poll() is None
            and graphql("{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }")[
                "repositoriesOrError"
            ].get("nodes"),
            STARTUP_TIMEOUT_S,
        )
        yield LiveDagster(port, graphql, env, home, landing, store, log_path)
    finally:
        _stop(process)
        if (
            request.session.testsfailed > failures_before or sys.exc_info()[0] is not None
        ):  # the call's report is counted before teardown
            artifacts.mkdir(parents=True, exist_ok=True)
            shutil.copy(log_path, artifacts / "dagster_dev.log")
            for compute_log in (home / "storage").rglob("*.err") if (home / "storage").exists() else []:
                shutil.copy(compute_log, artifacts / f"{compute_log.parent.name}-{compute_log.name}")

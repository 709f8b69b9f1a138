"""Runs in their own run-worker process on the test's PostgreSQL instance, and what they recorded there.

``RunWorker`` starts one (tagged with ``TEST_TAG`` so the test finds its run while it runs); ``events_of``,
``engine_messages`` and ``error_chain`` read the run's events; ``labelled_containers`` lists its step containers.
Shared by the Docker executor's tests (test_executor.py) and the SLURM ones (test_slurm.py, test_slurm_orphan.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

from ks_platform.execution.placement import RUN_LABEL
from ks_platform_tests.conftest import wait_until

REPO = Path(__file__).resolve().parent.parent
TEST_TAG = "ks_platform_tests/marker"

#: A run worker in its own process, as Dagster's run launcher starts one: ``execute_job`` in the main thread, so
#: Dagster captures SIGINT (termination) and the executor's loop forwards it to the running steps. Runs are never
#: started in threads of the test process: each ``execute_job`` reconfigures Python logging (``python_logs``) and
#: two of them in one process can deadlock on logging's locks.
RUN_WORKER = """
import json, sys
import dagster as dg
from ks_platform import definitions
from ks_platform.execution import jobs
job = getattr(jobs, sys.argv[1], None) or getattr(definitions, sys.argv[1])  # smoke jobs, then the code location's
run_config, tags = json.loads(sys.argv[2]), json.loads(sys.argv[3])
with dg.DagsterInstance.get() as instance:
    with dg.execute_job(dg.reconstructable(job), instance=instance, run_config=run_config, tags=tags) as result:
        print(f"run {result.run_id} success={result.success}", flush=True)
"""


def tagged_run_id(instance: dg.DagsterInstance, marker: str) -> str | None:
    runs = instance.get_runs(RunsFilter(tags={TEST_TAG: marker}))
    return runs[0].run_id if runs else None


class RunWorker:
    """One run of a job of ``ks_platform.execution.jobs`` in its own run-worker process on the test's PostgreSQL
    instance (``DAGSTER_PG_*`` from ``pg_instance``), tagged so the test finds its run while it runs."""

    def __init__(
        self,
        folder: Path,
        job_name: str,
        run_config: dict,
        tags: dict[str, str] | None = None,
        code: str = RUN_WORKER,
        env: dict[str, str] | None = None,
    ) -> None:
        home = folder / "dagster_home"
        home.mkdir(parents=True)
        instance_config = yaml.safe_load((REPO / "deploy" / "dagster.postgres.yaml").read_text())
        instance_config.pop("concurrency")  # as pg_instance: the tests set their own slots
        (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config))
        self.marker = uuid.uuid4().hex
        self.log = folder / "run_worker.log"
        env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO), **(env or {})}
        with open(self.log, "w") as handle:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    code,
                    job_name,
                    json.dumps(run_config),
                    json.dumps({**(tags or {}), TEST_TAG: self.marker}),
                ],
                cwd=REPO,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text()[-3000:]

    def run_id(self, instance: dg.DagsterInstance, timeout: float) -> str:
        def created() -> str | None:
            found = tagged_run_id(instance, self.marker)
            assert found or self.process.poll() is None, (
                f"the run worker ended before creating its run:\n{self.output()}"
            )
            return found

        return wait_until(created, timeout, "the run worker to create its run") if timeout else created()

    def finish(self, instance: dg.DagsterInstance, timeout: float) -> bool:
        """Wait for the worker to end; whether its run succeeded (as recorded in the instance)."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the run did not end within {timeout:.0f} s:\n{self.output()}") from None
        run = instance.get_run_by_id(self.run_id(instance, timeout=0))
        assert run is not None and run.is_finished, (run and run.status, self.output())
        return run.status == DagsterRunStatus.SUCCESS

    def failures(self, instance: dg.DagsterInstance) -> list[str]:
        run_id = tagged_run_id(instance, self.marker)
        events = events_of(instance, run_id, dg.DagsterEventType.STEP_FAILURE) if run_id else []
        return [error_chain(entry.dagster_event.event_specific_data.error) for entry in events] or [self.output()]

    def stop(self, client, instance: dg.DagsterInstance) -> None:
        """After a failed assertion: kill a worker that still runs and remove its run's containers (a worker that
        ended by itself had the chance to remove them, which the tests check)."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        run_id = tagged_run_id(instance, self.marker)
        for leftover in labelled_containers(client, run_id) if run_id else []:
            leftover.remove(force=True)


def error_chain(error) -> str:
    """A step failure's message and the messages of its causes (the user code's exception is a cause)."""
    parts = []
    while error is not None:
        parts.append(error.message.strip())
        error = error.cause or error.context
    return " <- ".join(parts)


def events_of(instance: dg.DagsterInstance, run_id: str, kind: dg.DagsterEventType) -> list:
    return [record.event_log_entry for record in instance.get_records_for_run(run_id, of_type=kind).records]


def engine_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [entry.message or "" for entry in events_of(instance, run_id, dg.DagsterEventType.ENGINE_EVENT)]


def labelled_containers(client, run_id: str) -> list:
    return client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"})

"""The default executor forks each step from a forkserver that already imported the platform and the sorting stack,
and a run that waits for a pool slot sleeps.

Real parts: Dagster's multiprocess executor, a persistent test instance, real step processes, a run worker in its own
process, Dagster's own pool slots. Injected: the slot the waiting run waits for is held by a claim the test makes.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from ks_platform.core.names import STEP_PRELOAD_MODULES
from ks_platform.execution.step_processes import forkserver_multiprocess_executor


@dg.op(config_schema={"report": str, "crash": dg.Field(bool, default_value=False)})
def report_process(context: dg.OpExecutionContext) -> None:
    if context.op_config["crash"]:
        os._exit(3)
    seen = {"pid": os.getpid(), "ppid": os.getppid(), "imported": [m for m in STEP_PRELOAD_MODULES if m in sys.modules]}
    Path(context.op_config["report"]).write_text(json.dumps(seen))


@dg.job(executor_def=forkserver_multiprocess_executor)
def two_steps():
    report_process.alias("first")()
    report_process.alias("second")()


def run_two_steps(tmp_path: Path, crash_first: bool = False, start_method: dict | None = None):
    ops = {
        name: {"config": {"report": str(tmp_path / f"{name}.json"), "crash": crash_first and name == "first"}}
        for name in ("first", "second")
    }
    execution = {"config": {"start_method": start_method}} if start_method else {}
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        result = dg.execute_job(
            dg.reconstructable(two_steps),
            instance=instance,
            run_config={"ops": ops, "execution": execution} if execution else {"ops": ops},
            raise_on_error=False,
        )
        reports = {
            name: json.loads((tmp_path / f"{name}.json").read_text())
            for name in ("first", "second")
            if (tmp_path / f"{name}.json").exists()
        }
        return result, reports


def test_steps_fork_from_a_server_that_imported_the_platform_and_the_sorting_stack(tmp_path):
    result, reports = run_two_steps(tmp_path)
    assert result.success
    first, second = reports["first"], reports["second"]
    assert first["pid"] != second["pid"] != os.getpid()  # one process per step
    assert first["ppid"] == second["ppid"] != os.getpid()  # both forked from the same forkserver
    for report in (first, second):
        assert set(report["imported"]) == set(STEP_PRELOAD_MODULES), report  # nothing left to import in the step


def test_a_step_that_dies_fails_alone(tmp_path):
    result, reports = run_two_steps(tmp_path, crash_first=True)
    assert not result.success
    assert "first" not in reports and "second" in reports
    failed = {event.step_key for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE}
    assert failed == {"first"}


def test_run_config_can_still_choose_spawn(tmp_path):
    result, reports = run_two_steps(tmp_path, start_method={"spawn": {}})
    assert result.success
    assert reports["first"]["ppid"] == os.getpid()  # spawned by the run's own process
    assert "kilosort" not in reports["first"]["imported"]


#: The pool the waiting test's step needs.
TEST_POOL = "waiting_test_pool"


@dg.op(pool=TEST_POOL, config_schema={"report": str})
def needs_the_pool(context: dg.OpExecutionContext) -> None:
    Path(context.op_config["report"]).write_text(str(time.time()))


@dg.job(executor_def=forkserver_multiprocess_executor)
def pooled_step():
    needs_the_pool()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_run_waiting_for_its_pool_sleeps_and_starts_when_the_slot_frees(tmp_path):
    """Dagster's own loop polled without sleeping here (21-43 % of a core per waiting run, measured from /proc while a
    sort ran); the run worker must now use at most 3 % of a core while it waits, and still start its step once the
    slot is free."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("concurrency:\n  pools:\n    default_limit: 1\n    granularity: op\n")
    report = tmp_path / "started"
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(TEST_POOL, 1)
        assert storage.claim_concurrency_slot(TEST_POOL, "holder-run", "holder-step").is_claimed
        worker = subprocess.Popen(
            [sys.executable, "-m", "ks_platform_tests.test_step_processes", str(report)],
            env={**os.environ, "DAGSTER_HOME": str(home)},
        )
        try:
            deadline = time.time() + 240
            while storage.get_concurrency_info(TEST_POOL).pending_step_count == 0:
                assert worker.poll() is None and time.time() < deadline, "the run never asked for the pool"
                time.sleep(0.5)
            time.sleep(3)  # past the first claim attempts
            cpu, wall = process_cpu_seconds(worker.pid), time.monotonic()
            time.sleep(8)
            share = (process_cpu_seconds(worker.pid) - cpu) / (time.monotonic() - wall)
            assert share < 0.03, f"the waiting run worker used {share:.1%} of a core"
            assert not report.exists()
            freed = time.time()
            storage.free_concurrency_slot_for_step("holder-run", "holder-step")
            assert worker.wait(timeout=240) == 0
            started = float(report.read_text())
            # Dagster re-claims a blocked slot after 1 s, growing to 15 s; the sleep adds at most 1 s to that.
            assert started - freed < 16 + 60, f"the step started {started - freed:.0f} s after the slot was freed"
        finally:
            if worker.poll() is None:
                worker.kill()


if __name__ == "__main__":  # the waiting run worker of the test above
    with dg.DagsterInstance.get() as _instance:
        _result = dg.execute_job(
            dg.reconstructable(pooled_step),
            instance=_instance,
            run_config={
                "ops": {"needs_the_pool": {"config": {"report": sys.argv[1]}}},
                "execution": {"config": {"start_method": {"spawn": {}}}},
            },
        )
    sys.exit(0 if _result.success else 1)

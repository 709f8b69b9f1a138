"""The default executor forks each step from a forkserver that already imported the platform and the sorting stack.

Real parts: Dagster's multiprocess executor, a persistent test instance, real step processes. Nothing is injected.
"""

import json
import os
import sys
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

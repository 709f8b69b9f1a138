"""The default executor: Dagster's multiprocess executor, with step processes forked from a preloaded forkserver, and a
run that only waits (for a pool slot or a retry delay) asleep instead of polling.

Each step still runs in its own process (a crashed sort takes down only its step), but the process is a fork that
does not import Dagster, the code location and the sorting stack again: a step started in 2.4 s (median) against
6.7 s with ``spawn`` on the same 2-core machine, and 27-105 s with ``spawn`` under heavy load. That matters because
Dagster claims a step's pool slot before it starts the step's process: with ``spawn`` the ``kilosort`` slot sat idle
through every sort's imports (bench/backfill_busy.py, BENCHMARKS.md).

Waiting: with ``pools.granularity: op`` a queued session's run starts, runs its CPU steps, then waits inside its run
worker until the ``kilosort`` pool has a free slot. Dagster 1.13's multiprocess executor loops without sleeping while
no step of the run is running (its ``ActiveExecution.sleep_interval`` is never above 0 with a pending claim), so each
waiting run took 21-43 % of a core from the sort it waited for. :class:`PatientMultiprocessExecutor` runs Dagster's
own loop unchanged except that its ``ActiveExecution`` sleeps when nothing of the run is in flight and something waits
(0.05 s, doubling to ``IDLE_MAX_SECONDS``); the claim itself is still Dagster's (same slots, priorities, back-off).
Measured in bench/waiting_sessions.py (BENCHMARKS.md); why this rather than ``granularity: run``: docs/decisions.md.
"""

from __future__ import annotations

import time
import types
from collections.abc import Iterator
from typing import Any

import dagster as dg

from ks_platform.core.names import STEP_PRELOAD_MODULES
from ks_platform.dagster_internals import (
    ActiveExecution,
    MultiprocessExecutor,
    RetryMode,
    StepDependencyConfig,
    multiple_process_executor_requirements,
)

#: The first sleep of a run that only waits, and the longest (a terminated run is seen within this time).
IDLE_FIRST_SECONDS = 0.05
IDLE_MAX_SECONDS = 1.0


class PatientActiveExecution(ActiveExecution):
    """Dagster's ``ActiveExecution`` that sleeps at the end of an executor iteration in which the run has no step in
    flight and waits for a pool slot or a retry delay (the only reasons a run with nothing running launches nothing).
    """

    _idle_seconds = IDLE_FIRST_SECONDS

    def plan_events_iterator(self, job_context: Any) -> Iterator[dg.DagsterEvent]:
        yield from super().plan_events_iterator(job_context)
        concurrency = self._instance_concurrency_context
        waits_for_slot = concurrency is not None and concurrency.has_pending_claims()
        if self._in_flight or self._interrupted or not (waits_for_slot or self._waiting_to_retry):
            self._idle_seconds = IDLE_FIRST_SECONDS
            return
        sleep = self._idle_seconds
        if self._waiting_to_retry:  # never past a retry's time
            sleep = min(sleep, max(0.0, min(self._waiting_to_retry.values()) - time.time()))
        time.sleep(sleep)
        self._idle_seconds = min(self._idle_seconds * 2, IDLE_MAX_SECONDS)


def _execute_with_patient_waits() -> types.FunctionType:
    """``MultiprocessExecutor.execute`` itself (Dagster's code object) with its module-level name ``ActiveExecution``
    bound to :class:`PatientActiveExecution` in a private copy of its globals: nothing else changes, nothing is
    patched for other executors."""
    execute = MultiprocessExecutor.execute
    if "ActiveExecution" not in execute.__code__.co_names or execute.__closure__:
        raise ImportError(
            "dagster's MultiprocessExecutor.execute no longer builds ActiveExecution by name: "
            "ks_platform/execution/step_processes.py must be updated for this Dagster version"
        )
    namespace = {**execute.__globals__, "ActiveExecution": PatientActiveExecution}
    patient = types.FunctionType(execute.__code__, namespace, execute.__name__, execute.__defaults__)
    patient.__kwdefaults__ = execute.__kwdefaults__
    patient.__qualname__ = f"PatientMultiprocessExecutor.{execute.__name__}"
    return patient


class PatientMultiprocessExecutor(MultiprocessExecutor):
    """Dagster's multiprocess executor whose run sleeps while it only waits (see the module docstring)."""

    execute = _execute_with_patient_waits()


def _with_forkserver(config: dict[str, Any]) -> dict[str, Any]:
    """Dagster's multiprocess config with ``forkserver`` + :data:`STEP_PRELOAD_MODULES` unless a start method is set."""
    if config.get("start_method"):
        return config
    return {**config, "start_method": {"forkserver": {"preload_modules": list(STEP_PRELOAD_MODULES)}}}


@dg.executor(
    name="multiprocess",
    config_schema=dg.multiprocess_executor.config_schema,
    requirements=multiple_process_executor_requirements(),
)
def patient_multiprocess_executor(init_context: dg.InitExecutorContext) -> PatientMultiprocessExecutor:
    """Dagster's ``multiprocess`` executor config, built as :class:`PatientMultiprocessExecutor`."""
    config = init_context.executor_config
    start_method, start_config = (
        next(iter(config["start_method"].items())) if config.get("start_method") else (None, {})
    )
    return PatientMultiprocessExecutor(
        max_concurrent=config.get("max_concurrent"),
        tag_concurrency_limits=config.get("tag_concurrency_limits"),
        retries=RetryMode.from_config(config["retries"]),
        start_method=start_method,
        explicit_forkserver_preload=(start_config or {}).get("preload_modules"),
        step_dependency_config=StepDependencyConfig.from_config(config.get("step_dependency_config")),
    )


#: ``multiprocess`` with the same run config as Dagster's (``max_concurrent``, ``retries``, ``start_method``, ...);
#: the default start method differs, and a run that only waits sleeps. ``start_method: {spawn: {}}`` in run config
#: restores Dagster's start method.
forkserver_multiprocess_executor: dg.ExecutorDefinition = patient_multiprocess_executor.configured(
    _with_forkserver,
    name="multiprocess",
    config_schema=dg.multiprocess_executor.config_schema,
)

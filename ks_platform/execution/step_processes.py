"""The default executor: Dagster's multiprocess executor, with step processes forked from a preloaded forkserver.

Each step still runs in its own process (a crashed sort takes down only its step), but the process is a fork that
does not import Dagster, the code location and the sorting stack again: a step started in 2.4 s (median) against
6.7 s with ``spawn`` on the same 2-core machine, and 27-105 s with ``spawn`` under heavy load. That matters because
Dagster claims a step's pool slot before it starts the step's process: with ``spawn`` the ``kilosort`` slot sat idle
through every sort's imports (bench/backfill_busy.py, BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from ks_platform.core.names import STEP_PRELOAD_MODULES


def _with_forkserver(config: dict[str, Any]) -> dict[str, Any]:
    """Dagster's multiprocess config with ``forkserver`` + :data:`STEP_PRELOAD_MODULES` unless a start method is set."""
    if config.get("start_method"):
        return config
    return {**config, "start_method": {"forkserver": {"preload_modules": list(STEP_PRELOAD_MODULES)}}}


#: ``multiprocess`` with the same run config as Dagster's (``max_concurrent``, ``retries``, ``start_method``, ...);
#: only the default start method differs. ``start_method: {spawn: {}}`` in run config restores Dagster's default.
forkserver_multiprocess_executor: dg.ExecutorDefinition = dg.multiprocess_executor.configured(
    _with_forkserver,
    name="multiprocess",
    config_schema=dg.multiprocess_executor.config_schema,
)

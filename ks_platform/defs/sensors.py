"""``new_session_sensor``: translates one landing-catalog refresh into partitions, runs and observations.

The work is plain Python: ``core/catalog.py`` (stat walk; only new or changed folders are opened) and
``core/session_plan.plan_tick`` (what to request). This module turns the :class:`TickPlan` into a
``dg.SensorResult``. A store the catalog cannot be used in (locked, full, read-only, a newer schema) skips the tick
with the error's one line (file and fix), the cursor kept: no traceback, nothing lost. Stopped by default; see
``docs/decisions.md`` for why and for the tick's costs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from ks_platform.core.catalog import Catalog, retire_after_from_env
from ks_platform.core.discovery import landing_root_problems
from ks_platform.core.errors import PlatformConfigError, SessionInputError
from ks_platform.core.names import MARKER_ENV, NEW_SESSION_SENSOR_NAME, SETTLE_ENV, SORT_JOB_NAME
from ks_platform.core.session_plan import TickPlan, cursor_position, plan_tick
from ks_platform.defs.ingest import raw_recording
from ks_platform.defs.partitions import session_partitions
from ks_platform.defs.resources import PlatformResource

DEFAULT_SETTLE_SECONDS = 120.0
DEFAULT_MIN_INTERVAL_SECONDS = 60
DEFAULT_MAX_SESSIONS_PER_TICK = 100


def settle_seconds_from_env() -> float:
    text = os.environ.get(SETTLE_ENV, "").strip()
    if not text:
        return DEFAULT_SETTLE_SECONDS
    try:
        value = float(text)
    except ValueError:
        raise PlatformConfigError(f"{SETTLE_ENV}={text!r} is not a number of seconds (e.g. 120)") from None
    if value < 0:
        raise PlatformConfigError(f"{SETTLE_ENV}={text!r} must be ≥ 0")
    return value


def marker_from_env() -> str | None:
    return os.environ.get(MARKER_ENV, "").strip() or None


def _check_marker(marker: str | None) -> str | None:
    if marker and (os.sep in marker or "/" in marker or marker in (".", "..")):
        raise PlatformConfigError(
            f"ready marker {marker!r} must be a plain file name inside the session folder (e.g. .ready)"
        )
    return marker or None


def sensor_result(plan: TickPlan, log: Callable[[str, str], None]) -> dg.SensorResult:
    """The Dagster form of a tick plan; ``log(level, message)`` writes its log lines."""
    for line in plan.logs:
        log(line.level, line.message)
    partition_requests: list = []
    if plan.add_keys:
        partition_requests.append(session_partitions.build_add_request(plan.add_keys))
    if plan.retire:
        partition_requests.append(session_partitions.build_delete_request([key for key, _ in plan.retire]))
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=r.run_key, partition_key=r.partition_key, tags=r.tags) for r in plan.runs],
        dynamic_partitions_requests=partition_requests,
        asset_events=[
            dg.AssetObservation(
                asset_key=raw_recording.key,
                partition=o.partition_key,
                description="Complete session found in the landing root by new_session_sensor (one probe of it).",
                metadata={
                    **o.metadata,
                    "session_dir": dg.MetadataValue.path(str(o.metadata.get("session_dir", ""))),
                },
            )
            for o in plan.observations
        ],
        cursor=plan.cursor,
        skip_reason=plan.skip_reason,
    )


def build_new_session_sensor(
    *,
    name: str = NEW_SESSION_SENSOR_NAME,
    settle_seconds: float | None = None,
    marker_name: str | None = None,
    minimum_interval_seconds: int = DEFAULT_MIN_INTERVAL_SECONDS,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    max_sessions_per_tick: int | None = DEFAULT_MAX_SESSIONS_PER_TICK,
    clock: Callable[[], float] = time.time,
    retire_after_seconds: float | None = None,
) -> dg.SensorDefinition:
    """The landing-root sensor. ``settle_seconds``/``marker_name`` default to ``KS_PLATFORM_SETTLE_SECONDS``
    (120) and ``KS_PLATFORM_READY_MARKER`` (unset = use the settle time); pass ``marker_name=""`` to ignore
    the variable. ``max_sessions_per_tick`` caps the folders opened (settled ones that look like recordings
    first) and the partitions requested per tick (None: no cap). ``retire_after_seconds`` (default
    ``KS_PLATFORM_RETIRE_AFTER_SECONDS``, one day): how long a folder must be absent from an available landing
    root before its partitions are retired. ``clock`` is for tests.
    """
    settle = settle_seconds_from_env() if settle_seconds is None else float(settle_seconds)
    retire_after = retire_after_from_env() if retire_after_seconds is None else float(retire_after_seconds)
    marker = _check_marker(marker_from_env() if marker_name is None else marker_name)
    rule = f"marker file {marker!r}" if marker else f"{settle:g} s without changes"

    @dg.sensor(
        name=name,
        job_name=SORT_JOB_NAME,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=(
            f"Adds complete session folders from the landing roots as partitions and sorts each once per content "
            f"fingerprint (run key <partition>:<fingerprint>); retires partitions whose folder was renamed or "
            f"re-dated, or absent for {retire_after:g} s from an available landing root. Complete = {rule}. Bad "
            f"folders are logged and skipped until they change."
        ),
    )
    def new_session_sensor(context: dg.SensorEvaluationContext, platform: PlatformResource) -> dg.SensorResult:
        now = clock()
        roots = platform.roots()
        for problem in landing_root_problems(roots, Path(platform.store_root)):
            context.log.warning(problem)
        try:
            with Catalog(Path(platform.store_root)) as catalog:
                if catalog.rebuilt_because:
                    context.log.warning(catalog.rebuilt_because)
                refresh = catalog.refresh(
                    roots,
                    settle_seconds=settle,
                    marker_name=marker,
                    now=now,
                    max_open=max_sessions_per_tick,
                    retire_after=retire_after,
                )
                position = cursor_position(context.cursor, catalog.catalog_id)
                changes = catalog.changes_since(position, max_sessions_per_tick)
                plan = plan_tick(refresh, changes, catalog.catalog_id, max_sessions_per_tick)
        except SessionInputError as exc:  # locked, full or read-only store: this tick does nothing, loses nothing
            context.log.error(f"landing catalog unusable, tick skipped: {exc}")
            return dg.SensorResult(skip_reason=f"landing catalog unusable: {exc}", cursor=context.cursor)
        return sensor_result(plan, lambda level, message: getattr(context.log, level)(message))

    return new_session_sensor

"""``new_session_sensor``: translates one landing-catalog refresh into partitions, runs and observations.

The work is plain Python: ``core/catalog.py`` (stat walk; only new or changed folders are opened) and
``core/session_plan.plan_tick`` (what to request). This module turns the :class:`TickPlan` into a
``dg.SensorResult``. A store the catalog cannot be used in (locked, full, read-only, a newer schema) skips the tick
with the error's one line (file and fix), the cursor kept: no traceback, nothing lost. Stopped by default; see
``docs/decisions.md`` for why and for the tick's costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from ks_platform.core.catalog import REJECTED, UNREADABLE, Catalog, retire_after_from_env
from ks_platform.core.discovery import landing_root_problems
from ks_platform.core.errors import SessionInputError
from ks_platform.core.landing_report import build_report
from ks_platform.core.names import NEW_SESSION_SENSOR_NAME, SORT_JOB_NAME
from ks_platform.core.readiness import check_marker, marker_from_env, settle_seconds_from_env
from ks_platform.core.session_plan import TickPlan, cursor_position, plan_tick
from ks_platform.defs.ingest import raw_recording
from ks_platform.defs.landing import landing_observation, report_changed
from ks_platform.defs.partitions import in_flight_partitions, session_partitions
from ks_platform.defs.resources import PlatformResource

DEFAULT_MIN_INTERVAL_SECONDS = 60
DEFAULT_MAX_SESSIONS_PER_TICK = 100


def sensor_result(
    plan: TickPlan, log: Callable[[str, str], None], extra_events: list[dg.AssetObservation] = ()
) -> dg.SensorResult:
    """The Dagster form of a tick plan; ``log(level, message)`` writes its log lines; ``extra_events`` are reported
    with it (the ``landing_folders`` report)."""
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
        ]
        + list(extra_events),
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
    marker = marker_from_env() if marker_name is None else check_marker(marker_name)
    rule = f"marker file {marker!r}" if marker else f"{settle:g} s without changes"

    @dg.sensor(
        name=name,
        job_name=SORT_JOB_NAME,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=(
            f"Adds complete session folders from the landing roots as partitions and sorts each once per content "
            f"fingerprint (run key <partition>:<fingerprint>); retires partitions whose folder was renamed or "
            f"re-dated, or absent for {retire_after:g} s from an available landing root, never while a run of them is "
            f"queued or running, never in a landing root this configuration does not have. Complete = {rule}. Folders "
            f"that are not sessions, or not complete yet, are listed with the fix on the landing_folders asset."
        ),
    )
    def new_session_sensor(context: dg.SensorEvaluationContext, platform: PlatformResource) -> dg.SensorResult:
        now = clock()
        roots = platform.roots()
        problems = landing_root_problems(roots, Path(platform.store_root))
        for problem in problems:
            context.log.warning(problem)
        in_flight = in_flight_partitions(context.instance)  # never retired while a run of them is queued or running
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
                    in_flight=in_flight,
                )
                position = cursor_position(context.cursor, catalog.catalog_id)
                changes = catalog.changes_since(position, max_sessions_per_tick)
                plan = plan_tick(refresh, changes, catalog.catalog_id, max_sessions_per_tick)
                rejected = catalog.folders((REJECTED, UNREADABLE))
        except SessionInputError as exc:  # locked, full or read-only store: this tick does nothing, loses nothing
            context.log.error(f"landing catalog unusable, tick skipped: {exc}")
            return dg.SensorResult(skip_reason=f"landing catalog unusable: {exc}", cursor=context.cursor)
        roots_not_searched = problems + [root.message for root in refresh.unavailable]
        report = build_report(rejected, refresh.waiting, roots_not_searched, refresh.held, marker)
        events = [landing_observation(report)] if report_changed(context.instance, report) else []
        return sensor_result(plan, lambda level, message: getattr(context.log, level)(message), events)

    return new_session_sensor

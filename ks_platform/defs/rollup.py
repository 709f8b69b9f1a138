"""``daily_rollup``: one partition per recording date, refreshed by ``daily_rollup_sensor`` after each sort run ends.

The rollup is its own daily-partitioned asset, not a downstream of the session assets: there is no
partition mapping from a date to "the dynamic session keys with that prefix", and the rollup must also
count sessions whose sort *failed* (no materialization to depend on). The sensor watches run-status
events instead: every finished (succeeded or failed) run of a session partition requests the rollup
partition of that session's date, with a run key made of the date and the event's storage id, so a
cursor reset never launches a rollup twice for the same event.
"""

import datetime as dt
import json
import os
from pathlib import Path

import dagster as dg

from ks_platform.core.catalog import Catalog
from ks_platform.core.errors import PlatformConfigError
from ks_platform.core.figures import png_markdown
from ks_platform.core.names import (
    PARTITION_TAG,
    ROLLUP_GROUP,
    ROLLUP_JOB_NAME,
    ROLLUP_SENSOR_NAME,
    ROLLUP_START_ENV,
    SESSIONS_PARTITIONS_NAME,
)
from ks_platform.core.rollup import build_daily_rollup, keys_for_date, write_daily_rollup
from ks_platform.core.sessions import SessionRef
from ks_platform.defs.resources import PlatformResource

DEFAULT_ROLLUP_START = "2024-01-01"
#: Run-status events read per event type and tick.
EVENTS_PER_TICK = 500


def rollup_start_from_env() -> str:
    text = os.environ.get(ROLLUP_START_ENV, "").strip() or DEFAULT_ROLLUP_START
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        raise PlatformConfigError(f"{ROLLUP_START_ENV}={text!r} is not a date (YYYY-MM-DD, e.g. 2024-01-01)") from None
    return text


#: One partition per recording date, from ``KS_PLATFORM_ROLLUP_START`` through today (``end_offset=1``:
#: today's sessions get a rollup while the day is still running).
daily_partitions = dg.DailyPartitionsDefinition(start_date=rollup_start_from_env(), end_offset=1)


def latest_failures(instance: dg.DagsterInstance, session_keys: list[str]) -> dict[str, str]:
    """``{session key: error}`` for the sessions whose most recent run failed."""
    failures: dict[str, str] = {}
    for key in session_keys:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={PARTITION_TAG: key}), limit=1)
        if not runs or runs[0].status != dg.DagsterRunStatus.FAILURE:
            continue
        run = runs[0]
        message = f"run {run.run_id[:8]} failed"
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
            error = entry.dagster_event.step_failure_data.error if entry.dagster_event else None
            if error is not None:
                message = f"{entry.dagster_event.step_key}: {error.message.strip().splitlines()[0]}"
                break
        failures[key] = message
    return failures


@dg.asset(
    partitions_def=daily_partitions,
    group_name=ROLLUP_GROUP,
    code_version="2",
    kinds={"matplotlib"},
    owners=["team:ephys"],
    description="Per recording date: sessions, sorted/failed/pending, units, good units and units per bombcell label, "
    "total recording time, "
    "sorting time and devices, with a figure. Refreshed by daily_rollup_sensor when a session of that date finishes a "
    "run.",
)
def daily_rollup(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.MaterializeResult:
    date = dt.date.fromisoformat(context.partition_key)
    store_root = Path(platform.store_root).expanduser().resolve()
    registered = keys_for_date(context.instance.get_dynamic_partitions(SESSIONS_PARTITIONS_NAME), date)
    rollup = build_daily_rollup(store_root, date, registered, latest_failures(context.instance, registered))
    catalog = Catalog.open_read_only(store_root)  # the rollup only reads the catalog
    if catalog is not None:
        with catalog:
            rollup.retired.extend(
                {"key": r.key, "cause": r.cause, "reason": r.reason, "successor": r.successor}
                for r in catalog.retired_on(date)
            )
    files = write_daily_rollup(store_root, rollup)
    table = dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "session": s.key,
                    "status": s.status,
                    "units": s.n_units or 0,
                    "good_units": s.n_good_units or 0,
                    "recording_s": s.recording_seconds or 0.0,
                    "sorting_s": s.sorting_seconds or 0.0,
                    "device": s.device or "",
                    "error": s.error or "",
                    "curation": s.curation_status or "",
                    "curated_good": s.n_curated_good_units or 0,
                    "bombcell": ", ".join(f"{k} {v}" for k, v in sorted((s.bombcell_counts or {}).items())),
                }
            )
            for s in rollup.sessions
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("session", "string"),
                dg.TableColumn("status", "string"),
                dg.TableColumn("units", "int"),
                dg.TableColumn("good_units", "int"),
                dg.TableColumn("recording_s", "float"),
                dg.TableColumn("sorting_s", "float"),
                dg.TableColumn("device", "string"),
                dg.TableColumn("error", "string"),
                dg.TableColumn("curation", "string"),
                dg.TableColumn("curated_good", "int"),
                dg.TableColumn("bombcell", "string"),
            ]
        ),
    )
    context.log.info(
        f"{date}: {len(rollup.by_session)} sessions, {rollup.n_sessions} probe partitions, {rollup.n_sorted} sorted, "
        f"{rollup.n_failed} failed, {rollup.n_units} units"
    )
    return dg.MaterializeResult(
        metadata={
            "recording_sessions": dg.MetadataValue.int(len(rollup.by_session)),
            "sessions": dg.MetadataValue.int(rollup.n_sessions),
            "probes_by_session": dg.MetadataValue.json(rollup.by_session),
            "sorted": dg.MetadataValue.int(rollup.n_sorted),
            "failed": dg.MetadataValue.int(rollup.n_failed),
            "pending": dg.MetadataValue.int(rollup.n_pending),
            "units": dg.MetadataValue.int(rollup.n_units),
            "good_units": dg.MetadataValue.int(rollup.n_good_units),
            "curated_good_units": dg.MetadataValue.int(rollup.n_curated_good_units),
            "units_by_label": dg.MetadataValue.json(rollup.units_by_label),
            "recording_time_s": dg.MetadataValue.float(rollup.recording_seconds),
            "sorting_time_s": dg.MetadataValue.float(rollup.sorting_seconds),
            "devices": ", ".join(rollup.devices) or "none",
            "per_session": table,
            "retired": dg.MetadataValue.json(rollup.retired),
            "figure": dg.MetadataValue.md(png_markdown(files.png_path, f"rollup {date}")),
            "path": dg.MetadataValue.path(str(files.json_path)),
        },
        data_version=dg.DataVersion(rollup.content_hash()),
    )


daily_rollup_job = dg.define_asset_job(
    ROLLUP_JOB_NAME,
    selection=dg.AssetSelection.assets(daily_rollup),
    partitions_def=daily_partitions,
    description="Recompute the rollup of one recording date.",
)


def _load_after(cursor: str | None) -> int:
    try:
        return int(json.loads(cursor)["after"]) if cursor else 0
    except (ValueError, KeyError, TypeError):
        return 0


def build_rollup_sensor(
    *,
    name: str = ROLLUP_SENSOR_NAME,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    events_per_tick: int = EVENTS_PER_TICK,
) -> dg.SensorDefinition:
    """Requests ``daily_rollup`` for the date of every session whose run succeeded or failed since the last tick.

    Running by default: it launches only small rollup runs, and only after sort runs ended.
    """

    @dg.sensor(
        name=name,
        job_name=ROLLUP_JOB_NAME,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Refreshes daily_rollup for a recording date whenever a run of one of that date's sessions "
        "succeeds or fails.",
    )
    def daily_rollup_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        after = _load_after(context.cursor)
        records = []
        horizon: int | None = None  # when a page is full, events past its end wait for the next tick
        for event_type in (dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE):
            page = context.instance.fetch_run_status_changes(
                dg.RunStatusChangeRecordsFilter(event_type=event_type, after_storage_id=after),
                limit=events_per_tick,
                ascending=True,
            ).records
            records.extend(page)
            if len(page) >= events_per_tick:
                horizon = min(horizon, page[-1].storage_id) if horizon is not None else page[-1].storage_id
        if horizon is not None:
            records = [r for r in records if r.storage_id <= horizon]
        if not records:
            return dg.SensorResult(skip_reason="no session run finished since the last tick", cursor=context.cursor)
        new_after = max(r.storage_id for r in records)
        run_ids = list({r.event_log_entry.run_id for r in records})
        runs = {run.run_id: run for run in context.instance.get_runs(filters=dg.RunsFilter(run_ids=run_ids))}
        valid_dates = set(daily_partitions.get_partition_keys(dynamic_partitions_store=context.instance))
        latest_event_by_date: dict[str, int] = {}
        for record in records:
            run = runs.get(record.event_log_entry.run_id)
            partition = run.tags.get(PARTITION_TAG) if run else None
            if not partition:
                continue
            try:
                date = SessionRef.parse(partition).date.isoformat()
            except ValueError:  # not a session run (e.g. a rollup run)
                continue
            if date not in valid_dates:
                context.log.warning(
                    f"session {partition}: no daily_rollup partition for {date} (partitions start at "
                    f"{daily_partitions.start.date()} and end today); set {ROLLUP_START_ENV} to include it"
                )
                continue
            latest_event_by_date[date] = max(latest_event_by_date.get(date, 0), record.storage_id)
        requests = [
            dg.RunRequest(run_key=f"{date}:{storage_id}", partition_key=date, tags={PARTITION_TAG: date})
            for date, storage_id in sorted(latest_event_by_date.items())
        ]
        return dg.SensorResult(
            run_requests=requests,
            cursor=json.dumps({"after": new_after}),
            skip_reason=None if requests else "finished runs were not session runs",
        )

    return daily_rollup_sensor

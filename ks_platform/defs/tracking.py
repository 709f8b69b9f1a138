"""Tracking: the same neuron across the sessions of one implant (``unit_tracks``, one partition per implant).

Why a sensor and not declarative automation: a session belongs to an implant through data (its ``subject.json`` and
``implant``), not through a partition mapping Dagster can express (session keys → implant keys is neither static nor
a dimension of a multi-partition), so Dagster cannot see which implant a new label updates. ``unit_tracks_sensor``
reads that from the store after each ``unit_labels`` materialization and does three things per tick:

1. reports the implant's inputs as a materialization of ``subject_sessions`` (its data version changes when a session
   joins, is re-sorted or re-labelled; ``sorted_units`` materializations are read too, so a re-sort alone counts), so
   ``unit_tracks`` shows **stale** in the UI at once;
2. requests one ``track_units`` run per implant whose inputs changed, but only once no run or backfill of that
   subject's sessions is queued or in progress: a backfill over a date range refreshes the tracks once, at its end,
   not once per session (run key ``<implant>:<inputs version>``: never twice for the same inputs);
3. after a tracking run, requests ``units_nwb`` for the sessions whose track ids changed, so each session's NWB file
   carries them.
"""

import json
from pathlib import Path

import dagster as dg

from ks_platform.core import pipeline, unit_tracks
from ks_platform.core.errors import SessionInputError
from ks_platform.core.names import (
    PARTITION_TAG,
    SESSIONS_PARTITIONS_NAME,
    SUBJECTS_PARTITIONS_NAME,
    TRACK_JOB_NAME,
    TRACKING_GROUP,
    TRACKS_SENSOR_NAME,
)
from ks_platform.core.sessions import key_name, parse_partition_key
from ks_platform.dagster_internals import DATA_VERSION_TAG, requested_backfills
from ks_platform.defs.partitions import session_partitions
from ks_platform.defs.reporting import metadata_table, step_result, user_errors_as_failures
from ks_platform.defs.resources import PlatformResource

#: One partition per implant: ``<subject_id>__<implant>`` (added by ``unit_tracks_sensor``).
subject_partitions = dg.DynamicPartitionsDefinition(name=SUBJECTS_PARTITIONS_NAME)
NWB_JOB_NAME = "export_tracked_nwb"
EVENTS_PER_TICK = 500
#: Run states in which a session may still change an implant's inputs.
BUSY = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
TRACK_COLUMNS = {"session": "string", "cluster_id": "int", "track_id": "int", "match_probability": "float"}
MAX_TABLE_ROWS = 1000


#: The sessions of one implant and the versions of their sortings and labels, reported by ``unit_tracks_sensor`` with
#: the data version ``unit_tracks.inputs_version``. Dagster 1.13 records a partitioned dependency's input version from
#: its materializations only (``data_version_cache.py``: "TODO: this needs to account for observations also") but
#: compares an external asset's later versions through its observations (``CachingStaleStatusResolver._is_dep_updated``),
#: so an observable source never made ``unit_tracks`` stale: each version is reported as an observation and a runless
#: materialization.
subject_sessions = dg.AssetSpec(
    "subject_sessions",
    partitions_def=subject_partitions,
    group_name=TRACKING_GROUP,
    owners=["team:ephys"],
    description="The sessions of one implant (subject.json + implant) and the versions of their sortings and labels, "
    "reported by unit_tracks_sensor: a new version (a session joined, was re-sorted or re-labelled) makes unit_tracks "
    "stale.",
)


@dg.asset(
    name="unit_tracks",  # the function is named apart from the core.unit_tracks module it calls
    partitions_def=subject_partitions,
    group_name=TRACKING_GROUP,
    code_version=f"unitmatch-{unit_tracks.unitmatch_version()}+1",
    deps=[subject_sessions],
    kinds={"unitmatch"},
    owners=["team:ephys"],
    description="The same neurons across the implant's sessions: UnitMatch on bombcell's half-recording waveforms. "
    "One table of unit identities (session, cluster, track id, match probability), units on the probe across days "
    "and the match-probability matrix; each session's Phy folder gets a track_id column and its NWB a track_id "
    "column. Refreshed by unit_tracks_sensor.",
)
def tracked_units(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.MaterializeResult:
    key = context.partition_key
    root = Path(platform.store_root).expanduser().resolve()
    with user_errors_as_failures():
        output = pipeline.track_subject(root, key, log=context.log.info)
    rows = output.metadata.pop("units")
    for problem in [*output.metadata["left_out"], *output.metadata["no_overlap"]]:
        context.log.warning(f"{problem['session']}: {problem['problem']} ({problem['file']}). Fix: {problem['fix']}")
    extra = {
        "tracks": metadata_table(rows[:MAX_TABLE_ROWS], TRACK_COLUMNS),
        "sessions": metadata_table(
            output.metadata.pop("sessions"),
            {"session": "string", "n_units": "int", "sorting_checksum": "string", "labels_version": "string"},
        ),
    }
    return step_result(output, extra=extra)


@dg.asset_check(
    asset=tracked_units,
    partitions_def=subject_partitions,
    description="Every session of the implant went into the tracking and matched units of the others (warns with "
    "each session left out or without overlap, and what to fix).",
)
def unit_tracks_link_every_session(
    context: dg.AssetCheckExecutionContext, platform: PlatformResource
) -> dg.AssetCheckResult:
    tracks = unit_tracks.load_tracks(Path(platform.store_root).expanduser().resolve(), context.partition_key)
    problems = [*tracks.summary["left_out"], *tracks.summary["no_overlap"]] if tracks else []
    return dg.AssetCheckResult(
        passed=tracks is not None and not problems,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(f"{p['session']}: {p['problem']}. Fix: {p['fix']}" for p in problems)[:2000]
        or (f"{tracks.summary['n_tracks_across_sessions']} tracks across sessions" if tracks else "no tracks"),
        metadata={"problems": dg.MetadataValue.json(problems)},
    )


track_units_job = dg.define_asset_job(
    TRACK_JOB_NAME,
    selection=dg.AssetSelection.assets(tracked_units),
    partitions_def=subject_partitions,
    description="UnitMatch over the sessions of one implant (the sensor launches it after new labels).",
)

export_tracked_nwb_job = dg.define_asset_job(
    NWB_JOB_NAME,
    selection=dg.AssetSelection.assets(dg.AssetKey("units_nwb")),
    partitions_def=session_partitions,
    description="Rewrite a session's NWB file after its track ids changed (the tracking sensor launches it).",
)


# ----------------------------------------------------------------------------------------------------------- sensor
def _cursor(text: str | None) -> dict:
    try:
        cursor = json.loads(text) if text else {}
    except ValueError:
        cursor = {}
    return {
        "labels_after": int(cursor.get("labels_after", 0)),
        "sorts_after": int(cursor.get("sorts_after", 0)),
        "tracks_after": int(cursor.get("tracks_after", 0)),
        "pending": dict(cursor.get("pending", {})),
        "reported": dict(cursor.get("reported", {})),
    }


def _subject_of(platform: PlatformResource, session_key: str, cache: dict[str, str | None]) -> str | None:
    """The subject of a session partition (its subject.json), None when it has none or it cannot be read."""
    if session_key not in cache:
        try:
            cache[session_key] = unit_tracks.read_subject_id(platform.session_dir(session_key))
        except (SessionInputError, OSError, ValueError):
            cache[session_key] = None
    return cache[session_key]


def busy_subjects(instance: dg.DagsterInstance, platform: PlatformResource) -> set[str]:
    """Subjects (``subject_id``) with a session run queued or in progress, or in a backfill still running."""
    cache: dict[str, str | None] = {}
    sessions = {
        run.tags.get(PARTITION_TAG)
        for run in instance.get_runs(filters=dg.RunsFilter(statuses=BUSY))
        if run.tags.get(PARTITION_TAG)
    }
    for backfill in requested_backfills(instance):
        data = backfill.asset_backfill_data
        if data is None:
            continue
        for part in data.target_subset.partitions_subsets_by_asset_key.values():
            sessions.update(part.get_partition_keys())
    busy = set()
    for key in sessions:
        try:
            parse_partition_key(key)
        except SessionInputError:
            continue  # a rollup date or an implant key
        subject = _subject_of(platform, key, cache)
        if subject:
            busy.add(subject)
    return busy


def _subject_part(track_key: str) -> str:
    return track_key.split("__", 1)[0]


def build_tracks_sensor(
    *,
    name: str = TRACKS_SENSOR_NAME,
    minimum_interval_seconds: int = 30,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """``unit_tracks_sensor`` (see the module docstring). Running by default: it launches only tracking and NWB runs,
    and only after sessions were labelled."""

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        jobs=[track_units_job, export_tracked_nwb_job],
        description="Refreshes unit_tracks of an implant once its new or re-sorted sessions are labelled and no run or "
        "backfill of that subject is still going; then rewrites the NWB files whose track ids changed.",
    )
    def unit_tracks_sensor(context: dg.SensorEvaluationContext, platform: PlatformResource) -> dg.SensorResult:
        cursor = _cursor(context.cursor)
        root = Path(platform.store_root).expanduser().resolve()
        instance = context.instance
        labelled = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("unit_labels"), after_storage_id=cursor["labels_after"]),
            limit=EVENTS_PER_TICK,
            ascending=True,
        ).records
        # A re-sort alone (sorted_units without unit_labels) changes an implant's inputs too: its sessions are found
        # through their membership, recorded when they were labelled.
        sorted_ = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("sorted_units"), after_storage_id=cursor["sorts_after"]),
            limit=EVENTS_PER_TICK,
            ascending=True,
        ).records
        known = set(instance.get_dynamic_partitions(SUBJECTS_PARTITIONS_NAME))
        touched: set[str] = set()
        for record in labelled:
            cursor["labels_after"] = max(cursor["labels_after"], record.storage_id)
            metadata = record.asset_materialization.metadata if record.asset_materialization else {}
            entry = metadata.get("track_key")
            key = entry.value if entry is not None else None
            if isinstance(key, str) and key and key != "—":
                touched.add(key)
        for record in sorted_:
            cursor["sorts_after"] = max(cursor["sorts_after"], record.storage_id)
            if record.partition_key:
                touched.update(k for k in unit_tracks.implants_of(root, record.partition_key) if k in known)
        events, new_partitions = [], sorted(touched - known)
        for key in sorted(touched):
            version = unit_tracks.inputs_version(root, key)
            if cursor["reported"].get(key) == version:
                continue  # the same sessions, sortings and labels as last reported (e.g. a re-run with equal results)
            sessions = {"sessions": dg.MetadataValue.json(unit_tracks.member_keys(root, key))}
            tags = {DATA_VERSION_TAG: version}
            # Both events (see subject_sessions): the materialization is what a run of unit_tracks records as its input,
            # the observation what Dagster's stale status compares an external asset's later versions with.
            events.append(
                dg.AssetObservation(asset_key=subject_sessions.key, partition=key, tags=tags, metadata=sessions)
            )
            events.append(
                dg.AssetMaterialization(asset_key=subject_sessions.key, partition=key, tags=tags, metadata=sessions)
            )
            cursor["reported"][key] = version
            cursor["pending"][key] = version
        requests = []
        if cursor["pending"]:
            busy = busy_subjects(instance, platform)
            for key, version in sorted(cursor["pending"].items()):
                if _subject_part(key) in {key_name(s) for s in busy}:
                    context.log.info(f"{key}: waiting for the subject's runs and backfills to end")
                    continue
                requests.append(
                    dg.RunRequest(
                        run_key=f"{key}:{version}",
                        job_name=TRACK_JOB_NAME,
                        partition_key=key,
                        tags={PARTITION_TAG: key},
                    )
                )
                del cursor["pending"][key]
        tracked = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("unit_tracks"), after_storage_id=cursor["tracks_after"]),
            limit=EVENTS_PER_TICK,
            ascending=True,
        ).records
        sessions = set(instance.get_dynamic_partitions(SESSIONS_PARTITIONS_NAME))
        for record in tracked:
            cursor["tracks_after"] = max(cursor["tracks_after"], record.storage_id)
            metadata = record.asset_materialization.metadata if record.asset_materialization else {}
            changed = metadata.get("sessions_changed")
            for session in (changed.value if changed is not None else []) or []:
                if session in sessions:
                    requests.append(
                        dg.RunRequest(
                            run_key=f"nwb:{session}:{record.storage_id}",
                            job_name=NWB_JOB_NAME,
                            partition_key=session,
                            tags={PARTITION_TAG: session},
                        )
                    )
        return dg.SensorResult(
            run_requests=requests,
            asset_events=events,
            dynamic_partitions_requests=[subject_partitions.build_add_request(new_partitions)]
            if new_partitions
            else [],
            cursor=json.dumps(cursor, sort_keys=True),
            skip_reason=None if requests or events or new_partitions else "no new labels or tracks",
        )

    return unit_tracks_sensor

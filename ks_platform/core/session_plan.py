"""What one landing-sensor tick asks of Dagster, as plain data: partitions to add and retire, runs, observations,
log lines, skip reason and the next cursor. ``defs/sensors.py`` only translates a :class:`TickPlan`.

The cursor is small: the catalog's id and the sequence number of the last catalog change the sensor handled
(``core/catalog.py`` holds the per-folder state). A lost or foreign cursor replays every change: the run keys
(``<partition>:<fingerprint>``) are the same, so Dagster launches nothing twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ks_platform.core.catalog import ACTIVE, CatalogChanges, RefreshReport
from ks_platform.core.names import FINGERPRINT_TAG, LANDING_ROOT_TAG, PARTITION_TAG, SESSION_FOLDER_TAG

CURSOR_VERSION = 2
#: How many waiting folders the skip message names.
WAITING_SHOWN = 5
#: The summary fields observed on ``raw_recording`` for a found session.
OBSERVED_FIELDS = (
    "format",
    "size_bytes",
    "recording_date",
    "n_channels",
    "n_sorting_channels",
    "sampling_frequency",
    "duration_s",
)
METADATA_FIELDS = ("session_folder", "folder_name", "probe_name", "session_key", "session_probes", "skipped_streams")


@dataclass(frozen=True)
class PlannedRun:
    partition_key: str
    run_key: str
    tags: dict[str, str]


@dataclass(frozen=True)
class PlannedObservation:
    partition_key: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class LogLine:
    level: str  # "debug", "info" or "warning"
    message: str


@dataclass(frozen=True)
class TickPlan:
    add_keys: list[str] = field(default_factory=list)
    #: ``(key, why)`` of partitions to delete from the dynamic partitions.
    retire: list[tuple[str, str]] = field(default_factory=list)
    runs: list[PlannedRun] = field(default_factory=list)
    observations: list[PlannedObservation] = field(default_factory=list)
    logs: list[LogLine] = field(default_factory=list)
    skip_reason: str | None = None
    cursor: str = ""


def run_key(partition_key: str, fingerprint: str) -> str:
    return f"{partition_key}:{fingerprint}"


def dump_cursor(catalog_id: str, seq: int) -> str:
    return json.dumps({"v": CURSOR_VERSION, "catalog": catalog_id, "seq": seq}, separators=(",", ":"))


def cursor_position(cursor: str | None, catalog_id: str) -> int:
    """The catalog sequence number a cursor handled; 0 (replay everything) for a missing, old or foreign cursor."""
    try:
        payload = json.loads(cursor) if cursor else None
    except json.JSONDecodeError:
        return 0
    if not isinstance(payload, dict) or payload.get("v") != CURSOR_VERSION or payload.get("catalog") != catalog_id:
        return 0
    seq = payload.get("seq")
    return seq if isinstance(seq, int) and seq >= 0 else 0


def plan_tick(
    refresh: RefreshReport, changes: CatalogChanges, catalog_id: str, max_sessions_per_tick: int | None = None
) -> TickPlan:
    """Turn a catalog refresh and the catalog changes since the cursor into one tick's requests and reports."""
    plan = TickPlan(cursor=dump_cursor(catalog_id, changes.upto))
    requested: dict[str, list[str]] = {}
    for record in changes.partitions:
        if record.state != ACTIVE:
            then = f"; its successor is {record.successor}" if record.successor else ""
            plan.retire.append((record.key, f"{record.cause}: {record.reason}"))
            plan.logs.append(
                LogLine("warning", f"retired partition {record.key} ({record.cause}: {record.reason}){then}")
            )
            continue
        plan.add_keys.append(record.key)
        plan.runs.append(
            PlannedRun(
                record.key,
                run_key(record.key, record.fingerprint),
                {
                    PARTITION_TAG: record.key,
                    LANDING_ROOT_TAG: record.root,
                    SESSION_FOLDER_TAG: record.path,
                    FINGERPRINT_TAG: record.fingerprint,
                },
            )
        )
        details = record.details
        metadata = {name: details[name] for name in (*METADATA_FIELDS, *OBSERVED_FIELDS) if name in details}
        metadata.update(fingerprint=record.fingerprint, landing_root=record.root, session_dir=record.path)
        plan.observations.append(PlannedObservation(record.key, metadata))
        requested.setdefault(f"{record.root}/{record.folder}", []).append(record.key)
    for label, keys in requested.items():
        plan.logs.append(
            LogLine(
                "info",
                f"session {label} is complete; requesting sort_session for {len(keys)} probe(s): {', '.join(keys)}",
            )
        )
    for folder in changes.folders:
        plan.logs.append(LogLine("warning", f"skipped landing folder {folder.label}: {folder.reason}"))
    for label, message in refresh.retry:
        plan.logs.append(LogLine("info", f"could not read landing folder {label} yet ({message}); retrying next tick"))
    waiting = [f"{label} ({why})" for label, _, why in refresh.waiting]
    if waiting:
        plan.logs.append(LogLine("debug", "not complete yet: " + "; ".join(waiting)))
    if refresh.deferred:
        plan.logs.append(
            LogLine(
                "info",
                f"{refresh.deferred} more complete folder(s) wait for the next tick (max_sessions_per_tick={max_sessions_per_tick})",
            )
        )
    if not plan.runs:
        skip = "no new complete session"
        if waiting:
            shown = "; ".join(waiting[:WAITING_SHOWN])
            more = f"; +{len(waiting) - WAITING_SHOWN} more" if len(waiting) > WAITING_SHOWN else ""
            skip += f"; {len(waiting)} folder(s) not complete yet: {shown}{more}"
        return TickPlan(plan.add_keys, plan.retire, plan.runs, plan.observations, plan.logs, skip, plan.cursor)
    return plan

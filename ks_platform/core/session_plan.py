"""What one landing-sensor tick asks of Dagster, as plain data: partitions to add and retire, runs, observations,
log lines, skip reason and the next cursor. ``defs/sensors.py`` only translates a :class:`TickPlan`.

The cursor is small: the catalog's id and the sequence number of the last catalog change the sensor handled
(``core/catalog.py`` holds the per-folder state). A lost or foreign cursor replays every change: the run keys
(``<partition>:<fingerprint>``) are the same, so Dagster launches nothing twice.

A tick's log is bounded whatever the landing roots hold: each kind of report (requested sessions, skipped folders,
retired partitions, folders not complete yet) shows its first ``SHOWN`` examples in full and then one line counting
the rest by reason.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ks_platform.core.catalog import ACTIVE, CatalogChanges, FolderRecord, RefreshReport
from ks_platform.core.names import FINGERPRINT_TAG, LANDING_ROOT_TAG, PARTITION_TAG, SESSION_FOLDER_TAG
from ks_platform.core.readiness import format_duration

CURSOR_VERSION = 2
#: How many waiting folders the skip message names.
WAITING_SHOWN = 5
#: How many items of each kind a tick's log shows in full (the rest are counted by reason).
SHOWN = 10
#: How many distinct reasons a count line names.
REASONS_SHOWN = 5
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


def reason_kind(reason: str, *names: str) -> str:
    """What a reason says with its folder left out (the folder's path and name, the first file named): the bucket a
    tick counts it in."""
    problem = reason.split(". Fix:", 1)[0]
    for name in sorted(filter(None, names), key=len, reverse=True):
        problem = problem.replace(name, "…")
    problem = re.sub(r"\d+(\.\d+)?", "N", problem)
    return problem if len(problem) <= 120 else problem[:119] + "…"


def count_line(what: str, kinds: list[str]) -> str:
    """``"<what>: 12 × reason; 3 × other reason; +2 other reasons"``."""
    counts = Counter(kinds).most_common()
    shown = "; ".join(f"{n} × {kind}" for kind, n in counts[:REASONS_SHOWN])
    more = f"; +{len(counts) - REASONS_SHOWN} other reason(s)" if len(counts) > REASONS_SHOWN else ""
    return f"{what}: {shown}{more}"


def _folder_lines(folders: list[FolderRecord]) -> list[LogLine]:
    lines = [LogLine("warning", f"skipped landing folder {f.label}: {f.reason}") for f in folders[:SHOWN]]
    rest = folders[SHOWN:]
    if rest:
        kinds = [reason_kind(f.reason, f.path, f.name) for f in rest]
        lines.append(
            LogLine(
                "warning",
                count_line(f"skipped {len(rest)} more landing folder(s) that are not sessions", kinds)
                + " (`ks-platform sessions --skipped` lists each with its file and fix)",
            )
        )
    return lines


def _refresh_lines(refresh: RefreshReport) -> list[LogLine]:
    lines = [LogLine("warning", root.message) for root in refresh.unavailable]
    for label, ahead, newest in refresh.future[:SHOWN]:
        lines.append(
            LogLine(
                "warning",
                f"landing folder {label}: {newest or 'a file'} is dated {format_duration(ahead)} ahead of this host's "
                "clock; its settle time is counted on this host's clock from when it was first seen unchanged",
            )
        )
    if len(refresh.future) > SHOWN:
        lines.append(LogLine("warning", f"{len(refresh.future) - SHOWN} more folder(s) have files dated in the future"))
    if refresh.absent:
        shown = ", ".join(label for label, _ in refresh.absent[:WAITING_SHOWN])
        more = f" (+{len(refresh.absent) - WAITING_SHOWN} more)" if len(refresh.absent) > WAITING_SHOWN else ""
        lines.append(
            LogLine(
                "info",
                f"{len(refresh.absent)} folder(s) absent from their landing root, not retired yet: {shown}{more}",
            )
        )
    for key, cause, _ in refresh.held[:SHOWN]:
        lines.append(LogLine("info", f"partition {key} is not retired yet ({cause}): a run of it is queued or running"))
    for label, message in refresh.retry[:SHOWN]:
        lines.append(LogLine("info", f"could not read landing folder {label} yet ({message}); retrying next tick"))
    if len(refresh.retry) > SHOWN:
        lines.append(LogLine("info", f"{len(refresh.retry) - SHOWN} more folder(s) could not be read yet; retrying"))
    waiting = [f"{label} ({why})" for label, _, why in refresh.waiting]
    if waiting:
        line = "not complete yet: " + "; ".join(waiting[:WAITING_SHOWN])
        if len(waiting) > WAITING_SHOWN:
            kinds = [reason_kind(why, str(folder), label) for label, folder, why in refresh.waiting[WAITING_SHOWN:]]
            line += "; " + count_line(f"+{len(waiting) - WAITING_SHOWN} more", kinds)
        lines.append(LogLine("debug", line))
    return lines


def plan_tick(
    refresh: RefreshReport, changes: CatalogChanges, catalog_id: str, max_sessions_per_tick: int | None = None
) -> TickPlan:
    """Turn a catalog refresh and the catalog changes since the cursor into one tick's requests and reports."""
    plan = TickPlan(cursor=dump_cursor(catalog_id, changes.upto))
    requested: dict[str, list[str]] = {}
    retired_kinds: list[str] = []
    for record in changes.partitions:
        if record.state != ACTIVE:
            then = f"; its successor is {record.successor}" if record.successor else ""
            plan.retire.append((record.key, f"{record.cause}: {record.reason}"))
            if len(plan.retire) <= SHOWN:
                message = f"retired partition {record.key} ({record.cause}: {record.reason}){then}"
                plan.logs.append(LogLine("warning", message))
            else:
                retired_kinds.append(record.cause)
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
    if retired_kinds:
        plan.logs.append(
            LogLine("warning", count_line(f"retired {len(retired_kinds)} more partition(s)", retired_kinds))
        )
    for label, keys in list(requested.items())[:SHOWN]:
        plan.logs.append(
            LogLine(
                "info",
                f"session {label} is complete; requesting sort_session for {len(keys)} probe(s): {', '.join(keys)}",
            )
        )
    if len(requested) > SHOWN:
        more = list(requested.values())[SHOWN:]
        plan.logs.append(
            LogLine(
                "info",
                f"{len(more)} more complete session(s) requested ({sum(map(len, more))} probe(s); see the run requests)",
            )
        )
    plan.logs.extend(_folder_lines(changes.folders))
    plan.logs.extend(_refresh_lines(refresh))
    waiting = [f"{label} ({why})" for label, _, why in refresh.waiting]
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

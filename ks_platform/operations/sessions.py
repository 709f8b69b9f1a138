"""Register, retire and list session partitions from the landing catalog (``core/catalog.py``).

``register_sessions`` refreshes the catalog (a stat walk; only new or changed folders are read) and makes the
instance's dynamic partitions match it: active keys added, retired keys deleted. Keys the catalog does not
know (added by hand) are left alone; keys with a run queued or running are never retired. It also refreshes the
``landing_folders`` report in the UI. Listing (``list_partitions``, ``landing_report``) only reads the catalog.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from ks_platform.core.catalog import (
    ACTIVE,
    REJECTED,
    RETIRED,
    UNREADABLE,
    Catalog,
    PartitionRecord,
    UnavailableRoot,
    retire_after_from_env,
)
from ks_platform.core.landing_report import LandingReport, build_report
from ks_platform.core.names import SESSIONS_PARTITIONS_NAME
from ks_platform.core.readiness import marker_from_env, settle_seconds_from_env
from ks_platform.defs.landing import landing_observation, report_changed
from ks_platform.defs.partitions import in_flight_partitions

#: How often adding or deleting the partitions is tried when another process changed them at the same moment.
SYNC_ATTEMPTS = 5


@dataclass(frozen=True)
class RegisterOutcome:
    """Active keys after the refresh, what changed in the instance, and the folders that are not sessions."""

    active: list[str]
    added: list[str]
    retired: list[PartitionRecord]
    #: ``(folder path, reason)`` of every landing folder that is not a session now (stored or incomplete).
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    #: A line to log when the catalog had to be rebuilt.
    rebuilt_because: str | None = None
    #: Landing roots that said nothing reliable about absent folders (nothing in them was retired).
    unavailable: list[UnavailableRoot] = field(default_factory=list)
    #: ``(root/name, absent since)`` of folders absent from their root, retired once absent long enough.
    absent: list[tuple[str, float]] = field(default_factory=list)
    #: ``(key, cause, reason)`` of retirements held back while a run of the key is queued or running.
    held: list[tuple[str, str, str]] = field(default_factory=list)


def register_sessions(
    instance: dg.DagsterInstance | None,
    landing_roots: dict[str, Path],
    store_root: Path,
    now: float | None = None,
    *,
    retire_after: float | None = None,
    accept_roots: Collection[str] = (),
    in_flight: Collection[str] | None = None,
) -> RegisterOutcome:
    """Refresh the catalog (every complete folder; incomplete ones are reported, not recorded) and sync the instance's
    partitions with it; ``instance=None`` only refreshes the catalog (a dry run changes no Dagster state).

    ``retire_after`` defaults to ``KS_PLATFORM_RETIRE_AFTER_SECONDS`` (one day); ``accept_roots`` names landing
    roots whose listing is taken as it is even when it lost most of its folders (see ``Catalog.refresh``);
    ``in_flight`` (default: read from ``instance``) names keys never retired now because a run of them is unfinished.
    """
    retire_after = retire_after_from_env() if retire_after is None else retire_after
    if in_flight is None:
        in_flight = in_flight_partitions(instance) if instance is not None else ()
    now = now or time.time()
    with Catalog(store_root) as catalog:
        report = catalog.refresh(
            landing_roots,
            settle_seconds=0.0,
            now=now,
            open_unready=True,
            retire_after=retire_after,
            accept_roots=accept_roots,
            in_flight=in_flight,
        )
        active = catalog.active_keys()
        retired = {record.key: record for record in catalog.partitions(RETIRED)}
        rejected = catalog.folders((REJECTED, UNREADABLE))
        skipped = [(Path(f.path), f.reason) for f in rejected]
        skipped += report.unready_rejected
        rebuilt = catalog.rebuilt_because
        marker = marker_from_env()
        waiting = catalog.not_complete(landing_roots, settle_seconds_from_env(), marker, now)
    skipped.sort(key=lambda item: str(item[0]))
    lifecycle = (rebuilt, report.unavailable, report.absent, report.held)
    if instance is None:
        return RegisterOutcome(active, [], [], skipped, *lifecycle)
    added, removed = sync_partitions(instance, active, set(retired))
    landing = build_report(rejected, waiting, [root.message for root in report.unavailable], report.held, marker)
    if report_changed(instance, landing):
        instance.report_runless_asset_event(landing_observation(landing))
    return RegisterOutcome(active, added, [retired[k] for k in removed], skipped, *lifecycle)


def sync_partitions(instance: dg.DagsterInstance, active: list[str], retired: set[str]) -> tuple[list[str], list[str]]:
    """Add the active keys the instance lacks and delete the retired ones it has; ``(added, removed)``.

    Another ``register`` or the sensor daemon may add the same keys at the same moment (Dagster's add reads, then
    inserts): a refused insert is tried again against the partitions as they are then.
    """
    from sqlalchemy.exc import IntegrityError

    added: list[str] = []
    for attempt in range(SYNC_ATTEMPTS):
        existing = set(instance.get_dynamic_partitions(SESSIONS_PARTITIONS_NAME))
        missing = [key for key in active if key not in existing]
        try:
            if missing:
                instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, missing)
            added += missing
            break
        except IntegrityError:
            if attempt == SYNC_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    existing = set(instance.get_dynamic_partitions(SESSIONS_PARTITIONS_NAME))
    removed = sorted(existing & retired)
    for key in removed:
        instance.delete_dynamic_partition(SESSIONS_PARTITIONS_NAME, key)
    return added, removed


#: The state ``sessions`` shows for an active partition whose landing root this configuration does not have.
UNCONFIGURED = "unconfigured"


def list_partitions(
    store_root: Path,
    include_active: bool = True,
    include_retired: bool = True,
    landing_roots: dict[str, Path] | None = None,
) -> list[dict]:
    """Catalog partitions as plain dicts (key, state, date, folder, fingerprint, cause, reason, successor, changed).

    With ``landing_roots``, an active partition whose folder is not in this configuration's root of that name (no such
    root, or another path: another configuration sharing the store) is ``unconfigured``: this configuration never
    sorts or retires it. Reads the catalog without writing anything (none yet: an empty list)."""
    catalog = Catalog.open_read_only(store_root)
    if catalog is None:
        return []
    with catalog:
        records = catalog.partitions()
    wanted = {ACTIVE} if not include_retired else ({RETIRED} if not include_active else {ACTIVE, RETIRED})

    def state(record: PartitionRecord) -> str:
        if landing_roots is None or record.state != ACTIVE:
            return record.state
        root = landing_roots.get(record.root)
        here = root is not None and Path(record.path).parent in (Path(root), Path(root).resolve())
        return ACTIVE if here else UNCONFIGURED

    return [
        {
            "key": r.key,
            "state": state(r),
            "recording_date": r.recording_date,
            "folder": r.path,
            "fingerprint": r.fingerprint,
            "cause": r.cause or None,
            "reason": r.reason or None,
            "successor": r.successor,
            "changed_at": dt.datetime.fromtimestamp(r.changed_at, dt.UTC).isoformat(timespec="seconds"),
        }
        for r in records
        if r.state in wanted
    ]


def landing_report(
    store_root: Path,
    landing_roots: dict[str, Path],
    *,
    settle_seconds: float | None = None,
    marker_name: str | None = None,
    now: float | None = None,
) -> LandingReport:
    """Every landing folder that is not a partition (read only): rejected and unreadable ones from the catalog, with
    problem, file and fix, and the folders of the configured roots not complete yet (a walk of those only)."""
    settle = settle_seconds_from_env() if settle_seconds is None else settle_seconds
    marker = marker_from_env() if marker_name is None else marker_name
    catalog = Catalog.open_read_only(store_root)
    if catalog is None:
        return build_report([], [], [], marker_name=marker)
    with catalog:
        rejected = catalog.folders((REJECTED, UNREADABLE))
        waiting = catalog.not_complete(landing_roots, settle, marker, time.time() if now is None else now)
    return build_report(rejected, waiting, [], marker_name=marker)

"""Register, retire and list session partitions from the landing catalog (``core/catalog.py``).

``register_sessions`` refreshes the catalog (a stat walk; only new or changed folders are read) and makes the
instance's dynamic partitions match it: active keys added, retired keys deleted. Keys the catalog does not
know (added by hand) are left alone. Listing (``list_partitions``, ``not_sessions``) only reads the catalog.
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
    FolderRecord,
    PartitionRecord,
    UnavailableRoot,
    retire_after_from_env,
)
from ks_platform.core.names import SESSIONS_PARTITIONS_NAME

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


def register_sessions(
    instance: dg.DagsterInstance | None,
    landing_roots: dict[str, Path],
    store_root: Path,
    now: float | None = None,
    *,
    retire_after: float | None = None,
    accept_roots: Collection[str] = (),
) -> RegisterOutcome:
    """Refresh the catalog (every complete folder; incomplete ones are reported, not recorded) and sync the instance's
    partitions with it; ``instance=None`` only refreshes the catalog (a dry run changes no Dagster state).

    ``retire_after`` defaults to ``KS_PLATFORM_RETIRE_AFTER_SECONDS`` (one day); ``accept_roots`` names landing
    roots whose listing is taken as it is even when it lost most of its folders (see ``Catalog.refresh``).
    """
    retire_after = retire_after_from_env() if retire_after is None else retire_after
    with Catalog(store_root) as catalog:
        report = catalog.refresh(
            landing_roots,
            settle_seconds=0.0,
            now=now or time.time(),
            open_unready=True,
            retire_after=retire_after,
            accept_roots=accept_roots,
        )
        active = catalog.active_keys()
        retired = {record.key: record for record in catalog.partitions(RETIRED)}
        skipped = [(Path(f.path), f.reason) for f in catalog.folders((REJECTED, UNREADABLE))]
        skipped += report.unready_rejected
        rebuilt = catalog.rebuilt_because
    skipped.sort(key=lambda item: str(item[0]))
    if instance is None:
        return RegisterOutcome(active, [], [], skipped, rebuilt, report.unavailable, report.absent)
    added, removed = sync_partitions(instance, active, set(retired))
    return RegisterOutcome(
        active, added, [retired[k] for k in removed], skipped, rebuilt, report.unavailable, report.absent
    )


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


def list_partitions(store_root: Path, include_active: bool = True, include_retired: bool = True) -> list[dict]:
    """Catalog partitions as plain dicts (key, state, date, folder, fingerprint, cause, reason, successor, changed).

    Reads the catalog without writing anything (none yet: an empty list)."""
    catalog = Catalog.open_read_only(store_root)
    if catalog is None:
        return []
    with catalog:
        records = catalog.partitions()
    wanted = {ACTIVE} if not include_retired else ({RETIRED} if not include_active else {ACTIVE, RETIRED})
    return [
        {
            "key": r.key,
            "state": r.state,
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


def not_sessions(store_root: Path) -> list[FolderRecord]:
    """Landing folders the catalog holds as rejected or unreadable, with why (read only)."""
    catalog = Catalog.open_read_only(store_root)
    if catalog is None:
        return []
    with catalog:
        return catalog.folders((REJECTED, UNREADABLE))

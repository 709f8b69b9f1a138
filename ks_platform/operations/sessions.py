"""Register, retire and list session partitions from the landing catalog (``core/catalog.py``).

``register_sessions`` refreshes the catalog (a stat walk; only new or changed folders are read) and makes the
instance's dynamic partitions match it: active keys added, retired keys deleted. Keys the catalog does not
know (added by hand) are left alone.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from ks_platform.core.catalog import ACTIVE, REJECTED, RETIRED, UNREADABLE, Catalog, FolderRecord, PartitionRecord
from ks_platform.core.names import SESSIONS_PARTITIONS_NAME


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


def register_sessions(
    instance: dg.DagsterInstance | None, landing_roots: dict[str, Path], store_root: Path, now: float | None = None
) -> RegisterOutcome:
    """Refresh the catalog (every complete folder; incomplete ones are reported, not recorded) and sync the instance's
    partitions with it; ``instance=None`` only refreshes the catalog (a dry run changes no Dagster state)."""
    with Catalog(store_root) as catalog:
        report = catalog.refresh(landing_roots, settle_seconds=0.0, now=now or time.time(), open_unready=True)
        active = catalog.active_keys()
        retired = {record.key: record for record in catalog.partitions(RETIRED)}
        skipped = [(Path(f.path), f.reason) for f in catalog.folders((REJECTED, UNREADABLE))]
        skipped += report.unready_rejected
        rebuilt = catalog.rebuilt_because
    if instance is None:
        return RegisterOutcome(active, [], [], sorted(skipped, key=lambda item: str(item[0])), rebuilt)
    existing = set(instance.get_dynamic_partitions(SESSIONS_PARTITIONS_NAME))
    added = [key for key in active if key not in existing]
    if added:
        instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, added)
    removed = sorted(existing & set(retired))
    for key in removed:
        instance.delete_dynamic_partition(SESSIONS_PARTITIONS_NAME, key)
    return RegisterOutcome(
        active, added, [retired[k] for k in removed], sorted(skipped, key=lambda item: str(item[0])), rebuilt
    )


def list_partitions(store_root: Path, include_active: bool = True, include_retired: bool = True) -> list[dict]:
    """Catalog partitions as plain dicts (key, state, date, folder, fingerprint, cause, reason, successor, changed)."""
    with Catalog(store_root) as catalog:
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
    """Landing folders the catalog holds as rejected or unreadable, with why."""
    with Catalog(store_root) as catalog:
        return catalog.folders((REJECTED, UNREADABLE))

"""Backfills by recording date: the active session partitions dated in a range (a catalog query), one asset backfill.

Why an *asset* backfill created in-process (``PartitionBackfill.from_asset_partitions`` + ``instance.add_backfill``):
it is what the webserver's ``launchPartitionBackfill`` mutation does (the UI's "Launch backfill"), so it shows on
the Backfills page with per-asset status and the daemon runs it; no webserver is needed. ``dagster job backfill``
would need every key on the command line and runs a legacy job backfill. These are internal Dagster APIs, so the
version is pinned and ``test_backfill.py`` exercises them against a real instance.

Stale status is Dagster's own ``CachingStaleStatusResolver`` (what the UI shows as "Stale"/"Missing").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from ks_platform.core.catalog import Catalog
from ks_platform.core.names import (
    COMPARISON_GROUP,
    ONLY_STALE_TAG,
    RECORDING_DATES_TAG,
    SESSION_GROUP,
    SESSIONS_PARTITIONS_NAME,
)
from ks_platform.dagster_internals import add_asset_backfill, stale_partitions
from ks_platform.defs.sorting import sorted_units


@dataclass(frozen=True)
class BackfillSelection:
    """What a date-range backfill targets: ``selected`` ⊆ ``in_range`` (``up_to_date`` = in range, not stale)."""

    start: dt.date
    end: dt.date
    in_range: list[str]
    selected: list[str]
    up_to_date: list[str] = field(default_factory=list)


def session_asset_keys(asset_graph) -> list[dg.AssetKey]:
    """The assets of one session (groups ``session_pipeline`` and ``sorter_comparison``, as ``sort_session``), in a
    stable order."""
    selection = dg.AssetSelection.groups(SESSION_GROUP, COMPARISON_GROUP)
    return sorted(selection.resolve(asset_graph), key=lambda k: k.to_user_string())


def stale_sessions(instance: dg.DagsterInstance, asset_graph, keys: Sequence[str]) -> list[str]:
    """The sessions whose ``sorted_units`` Dagster reports as MISSING or STALE (unregistered ones count as missing)."""
    registered = set(instance.get_dynamic_partitions(SESSIONS_PARTITIONS_NAME))
    stale = set(stale_partitions(instance, asset_graph, sorted_units.key, [k for k in keys if k in registered]))
    return [k for k in keys if k not in registered or k in stale]


def select_backfill(
    instance: dg.DagsterInstance,
    asset_graph,
    store_root: Path,
    start: dt.date,
    end: dt.date,
    only_stale: bool = False,
) -> BackfillSelection:
    """The catalog's active sessions recorded from ``start`` to ``end``; with ``only_stale`` only those whose sort
    is missing or stale. Retired keys are never selected."""
    if end < start:
        raise ValueError(f"the end date {end} is before the start date {start}")
    with Catalog(store_root) as catalog:
        in_range = catalog.active_keys(start, end)
    if not only_stale:
        return BackfillSelection(start, end, in_range, in_range)
    stale = set(stale_sessions(instance, asset_graph, in_range))
    return BackfillSelection(
        start, end, in_range, [k for k in in_range if k in stale], [k for k in in_range if k not in stale]
    )


def launch_session_backfill(
    instance: dg.DagsterInstance, asset_graph, selection: BackfillSelection, only_stale: bool = False
) -> str:
    """One asset backfill of the session assets over ``selection.selected``; returns its id. The daemon runs it."""
    if not selection.selected:
        raise ValueError("nothing to backfill: the selection is empty")
    dates = f"{selection.start.isoformat()}..{selection.end.isoformat()}"
    return add_asset_backfill(
        instance,
        asset_graph,
        partitions=selection.selected,
        assets=session_asset_keys(asset_graph),
        tags={RECORDING_DATES_TAG: dates, ONLY_STALE_TAG: str(only_stale).lower()},
        title=f"Sessions recorded {selection.start.isoformat()} to {selection.end.isoformat()}"
        + (" (stale only)" if only_stale else ""),
        description=f"ks-platform backfill: {len(selection.selected)} session(s) recorded {dates}",
    )


def backfill_partitions(instance: dg.DagsterInstance, backfill_id: str) -> dict[str, list[str]]:
    """``{asset key: [partition keys]}`` a backfill targets (what the Backfills page lists)."""
    backfill = instance.get_backfill(backfill_id)
    if backfill is None:
        raise KeyError(backfill_id)
    subset = backfill.asset_backfill_data.target_subset
    return {
        key.to_user_string(): sorted(part.get_partition_keys())
        for key, part in subset.partitions_subsets_by_asset_key.items()
    }

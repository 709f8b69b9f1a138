"""Backfills by recording date: pick the registered session partitions dated in a range, launch one asset backfill.

Why an *asset* backfill created in-process (``PartitionBackfill.from_asset_partitions`` + ``instance.add_backfill``):
it is exactly what the webserver's GraphQL ``launchPartitionBackfill`` mutation does server-side (the UI's
"Launch backfill" button), so the backfill is the same object the UI makes, shows on the Backfills page
with per-asset partition status, and is executed by the daemon like any other. Doing it here rather than
over GraphQL means the CLI works without a running webserver (the daemon is needed anyway for the runs).
``dagster job backfill`` (the public CLI) would need a ``--partitions`` list of every key on the command
line and submits all runs itself as a legacy job backfill; ``dagster asset backfill`` does not exist in
1.13. The APIs used are internal to Dagster, so the version is pinned and ``test_backfill.py`` exercises
them against a real instance.

Stale status comes from Dagster's own ``CachingStaleStatusResolver`` (what the UI shows as "Stale" /
"Missing"): code version, upstream data versions or an upstream observation (e.g. the sorting parameters)
changed, or the sort never materialized.
"""

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import dagster as dg

from ks_platform.core.discovery import RejectedFolder, discover, session_keys_in_date_range
from ks_platform.defs.ingest import GROUP
from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME
from ks_platform.defs.resources import PlatformResource
from ks_platform.defs.sorting import sorted_units

#: Tags on every backfill (and so on its runs) started here.
TAG_RANGE = "ks_platform/recording_dates"
TAG_ONLY_STALE = "ks_platform/only_stale"


@dataclass(frozen=True)
class BackfillSelection:
    """What a date-range backfill targets: ``selected`` ⊆ ``in_range`` (``up_to_date`` = in range, not stale)."""

    start: dt.date
    end: dt.date
    in_range: list[str]
    selected: list[str]
    up_to_date: list[str] = field(default_factory=list)


def session_asset_keys(asset_graph) -> list[dg.AssetKey]:
    """The assets of one session (group ``session_pipeline``), in a stable order."""
    return sorted(dg.AssetSelection.groups(GROUP).resolve(asset_graph), key=lambda k: k.to_user_string())


def register_landing_sessions(
    instance: dg.DagsterInstance, platform: PlatformResource
) -> tuple[list[str], list[RejectedFolder]]:
    """Add every valid session in the landing roots that is not a partition yet (sorted by key, so by date).

    Returns the keys added and the folders that are not sessions (with why).
    """
    found, rejected = discover(platform.roots())
    existing = set(instance.get_dynamic_partitions(SESSIONS_PARTITIONS_NAME))
    new = sorted({s.ref.key for s in found} - existing)
    if new:
        instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, new)
    return new, rejected


def stale_sessions(instance: dg.DagsterInstance, asset_graph, keys: Sequence[str]) -> list[str]:
    """The sessions whose ``sorted_units`` Dagster reports as MISSING or STALE (unregistered ones count as missing)."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._time import get_current_datetime

    registered = set(instance.get_dynamic_partitions(SESSIONS_PARTITIONS_NAME))
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=asset_graph,
    )
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=asset_graph, loading_context=view)
    return [
        k
        for k in keys
        if k not in registered or resolver.get_status(sorted_units.key, k) in (StaleStatus.MISSING, StaleStatus.STALE)
    ]


def select_backfill(
    instance: dg.DagsterInstance,
    asset_graph,
    start: dt.date,
    end: dt.date,
    only_stale: bool = False,
    extra_keys: Sequence[str] = (),
) -> BackfillSelection:
    """The registered sessions (plus ``extra_keys``) recorded from ``start`` to ``end``; with ``only_stale`` only those whose sort is missing or stale."""
    in_range = session_keys_in_date_range(
        [*instance.get_dynamic_partitions(SESSIONS_PARTITIONS_NAME), *extra_keys], start, end
    )
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
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id
    from dagster._time import get_current_timestamp

    if not selection.selected:
        raise ValueError("nothing to backfill: the selection is empty")
    backfill_id = make_new_backfill_id()
    dates = f"{selection.start.isoformat()}..{selection.end.isoformat()}"
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id,
        asset_graph=asset_graph,
        partition_names=list(selection.selected),
        asset_selection=session_asset_keys(asset_graph),
        backfill_timestamp=get_current_timestamp(),
        tags={TAG_RANGE: dates, TAG_ONLY_STALE: str(only_stale).lower()},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=f"Sessions recorded {selection.start.isoformat()} to {selection.end.isoformat()}"
        + (" (stale only)" if only_stale else ""),
        description=f"ks-platform backfill: {len(selection.selected)} session(s) recorded {dates}",
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill_id


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

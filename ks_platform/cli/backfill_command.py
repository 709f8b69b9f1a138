"""``ks-platform backfill --start DATE --end DATE [--only-stale] [--dry-run]``: re-sort the sessions recorded in a date range.

The landing catalog is refreshed and the partitions synced first (``operations.sessions``); then ONE Dagster
asset backfill of the session assets is recorded for the active sessions dated in the range (a catalog query;
retired keys are never selected). The running daemon launches its runs; it shows on the UI's Backfills page.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; write YYYY-MM-DD (e.g. 2026-03-01)") from None


def run_backfill(args: argparse.Namespace, instance=None, platform=None) -> int:
    """The command; ``instance``/``platform`` default to ``DAGSTER_HOME`` and the ``KS_PLATFORM_*`` environment."""
    from ks_platform.cli.pipeline_commands import _instance, report_landing_roots, report_lifecycle, report_skipped
    from ks_platform.definitions import build_definitions
    from ks_platform.defs.partitions import in_flight_partitions
    from ks_platform.defs.resources import PlatformResource
    from ks_platform.operations import backfill
    from ks_platform.operations.sessions import register_sessions

    if args.end < args.start:
        print(f"--end {args.end} is before --start {args.start}", file=sys.stderr)
        return 2
    platform = platform or PlatformResource.from_env()
    instance = instance or _instance()
    asset_graph = build_definitions(platform, sensors=[]).resolve_asset_graph()
    store_root = Path(platform.store_root)

    report_landing_roots(platform)
    # A dry run refreshes only the landing catalog (no partition is added or retired in Dagster); either way no key
    # with a run queued or running is retired.
    outcome = register_sessions(
        None if args.dry_run else instance, platform.roots(), store_root, in_flight=in_flight_partitions(instance)
    )
    if outcome.added:
        print(f"registered {len(outcome.added)} new session(s) from the landing roots")
    report_skipped(outcome.skipped)
    report_lifecycle(outcome)

    selection = backfill.select_backfill(
        instance, asset_graph, store_root, args.start, args.end, only_stale=args.only_stale
    )
    span = f"{args.start} to {args.end}"
    if not selection.in_range:
        print(f"no sessions recorded from {span}: nothing to backfill")
        return 0
    if args.only_stale and selection.up_to_date:
        print(f"{len(selection.up_to_date)} session(s) already up to date (skipped)")
    if not selection.selected:
        print(f"no stale sessions recorded from {span}: nothing to backfill")
        return 0
    print(f"{len(selection.selected)} session(s) recorded from {span}:")
    for key in selection.selected:
        print(f"  {key}")
    if args.dry_run:
        print("dry run: no backfill launched")
        return 0
    backfill_id = backfill.launch_session_backfill(instance, asset_graph, selection, only_stale=args.only_stale)
    print(
        f"launched backfill {backfill_id} ({len(selection.selected)} session(s) × {len(backfill.session_asset_keys(asset_graph))} assets); the daemon runs it, see the UI's Backfills page"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "backfill",
        help="re-sort every session recorded in a date range (one Dagster backfill)",
        description="Register the sessions in the landing roots, then launch one Dagster backfill of the session "
        "assets for the sessions recorded from --start to --end (inclusive). Folders that are not valid sessions, and "
        "landing roots that cannot be searched, are reported on stderr (file, problem, fix) with how many were "
        "skipped; the other sessions go on. Exit status: 0 when the roots were searched (even if folders were "
        "skipped), 2 on a bad date range, an unusable configuration or an unusable store (one error line naming the fix).",
    )
    parser.add_argument("--start", type=_date, required=True, help="first recording date, YYYY-MM-DD")
    parser.add_argument("--end", type=_date, required=True, help="last recording date (included), YYYY-MM-DD")
    parser.add_argument(
        "--only-stale",
        action="store_true",
        help="only sessions whose sort is missing or stale (Dagster's stale status)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the sessions; register and launch nothing")
    parser.set_defaults(func=run_backfill)

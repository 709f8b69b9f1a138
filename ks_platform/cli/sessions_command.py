"""``ks-platform sessions [--retired | --rejected] [--json]``: what the landing catalog holds, with state and why.

Read only: the catalog is read as it is (never created, repaired or locked), so it works on a full or read-only store.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ks_platform.defs.resources import PlatformResource


def run_sessions(args: argparse.Namespace, platform: PlatformResource | None = None) -> int:
    """Print active, unconfigured and retired partitions (``--retired``: only retired ones; ``--rejected``: the landing
    folders that are not partitions, with problem, file and fix, and those not complete yet); reads no recording and
    writes nothing."""
    from ks_platform.core.catalog import catalog_path
    from ks_platform.defs.resources import PlatformResource
    from ks_platform.operations.sessions import list_partitions

    platform = platform or PlatformResource.from_env()
    store_root = Path(platform.store_root).expanduser().resolve()
    if not catalog_path(store_root).is_file():
        print(
            f"no landing catalog yet at {catalog_path(store_root)}: run `ks-platform register` (or start the sensor)",
            file=sys.stderr,
        )
    if args.rejected:
        return print_rejected(args, platform, store_root)
    rows = list_partitions(store_root, include_active=not args.retired, landing_roots=platform.roots())
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        line = f"{row['state']:<12} {row['key']}"
        if row["state"] == "retired":
            line += f"  {row['cause']}: {row['reason']} ({row['changed_at']})"
            if row["successor"]:
                line += f" -> {row['successor']}"
        elif row["state"] == "unconfigured":
            line += f"  {row['folder']} is not in this configuration's landing roots (KS_PLATFORM_LANDING)"
        print(line)
    counts = {state: sum(1 for row in rows if row["state"] == state) for state in ("active", "unconfigured", "retired")}
    print(", ".join(f"{n} {state}" for state, n in counts.items()) + " partition(s)")
    return 0


def print_rejected(args: argparse.Namespace, platform: PlatformResource, store_root: Path) -> int:
    """Every landing folder that is not a partition: rejected and unreadable ones (problem, file, fix) and the folders
    of the configured roots that are not complete yet."""
    from ks_platform.operations.sessions import landing_report

    report = landing_report(store_root, platform.roots())
    if args.json:
        print(json.dumps([vars(folder) for folder in report.folders], indent=1))
        return 0
    for folder in report.folders:
        print(f"{folder.state:<10} {folder.folder}")
        print(f"    problem: {folder.problem}\n    file:    {folder.file}\n    fix:     {folder.fix}")
    print(f"{len(report.rejected)} landing folder(s) are not sessions, {len(report.waiting)} not complete yet")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "sessions",
        help="list the session partitions (active, unconfigured and retired, with why), or the rejected folders",
        description="List the session partitions the landing catalog holds (as of the last `register`, `backfill` or "
        "sensor tick): active ones; unconfigured ones (their landing root is not in this configuration's "
        "KS_PLATFORM_LANDING: another configuration shares the store; never sorted or retired from here); and retired "
        "ones with the cause (deleted, renamed, re-dated, rejected, probe gone, re-keyed), the reason with its "
        "evidence, when, and the successor key. --rejected lists every landing folder that is not a partition with its "
        "problem, file and fix, and the folders not complete yet (the UI's landing_folders asset shows the same). "
        "Reads the catalog only: it works on a full or read-only store and changes nothing.",
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--retired", action="store_true", help="only the retired partitions")
    only.add_argument(
        "--rejected",
        "--skipped",
        dest="rejected",
        action="store_true",
        help="the landing folders that are not partitions (problem, file, fix) and those not complete yet",
    )
    parser.add_argument("--json", action="store_true", help="one JSON list instead of text")
    parser.set_defaults(func=run_sessions)

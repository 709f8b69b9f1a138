"""``ks-platform sessions [--retired | --skipped] [--json]``: what the landing catalog holds, with state and why.

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
    """Print active and retired partitions (``--retired``: only retired ones; ``--skipped``: the landing folders that
    are not sessions) from the catalog; reads no session and writes nothing."""
    from ks_platform.core.catalog import catalog_path
    from ks_platform.defs.resources import PlatformResource
    from ks_platform.operations.sessions import list_partitions, not_sessions

    platform = platform or PlatformResource.from_env()
    store_root = Path(platform.store_root).expanduser().resolve()
    if not catalog_path(store_root).is_file():
        print(
            f"no landing catalog yet at {catalog_path(store_root)}: run `ks-platform register` (or start the sensor)",
            file=sys.stderr,
        )
    if args.skipped:
        folders = not_sessions(store_root)
        if args.json:
            print(json.dumps([{"folder": f.path, "state": f.state, "reason": f.reason} for f in folders], indent=1))
            return 0
        for folder in folders:
            print(f"{folder.state:<10} {folder.path}: {folder.reason}")
        print(f"{len(folders)} landing folder(s) that are not sessions")
        return 0
    rows = list_partitions(store_root, include_active=not args.retired)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        line = f"{row['state']:<8} {row['key']}"
        if row["state"] != "active":
            line += f"  {row['cause']}: {row['reason']} ({row['changed_at']})"
            if row["successor"]:
                line += f" -> {row['successor']}"
        print(line)
    active = sum(1 for row in rows if row["state"] == "active")
    print(f"{active} active, {len(rows) - active} retired partition(s)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "sessions",
        help="list the session partitions (active and retired, with why)",
        description="List the session partitions the landing catalog holds (as of the last `register`, `backfill` or "
        "sensor tick): active ones, and retired ones with the cause (deleted, renamed, re-dated, rejected, probe "
        "gone, re-keyed), the reason with its evidence, when, and the successor key. Reads the catalog only: it works "
        "on a full or read-only store and changes nothing.",
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--retired", action="store_true", help="only the retired partitions")
    only.add_argument(
        "--skipped", action="store_true", help="the landing folders that are not sessions, each with its file and fix"
    )
    parser.add_argument("--json", action="store_true", help="one JSON list instead of text")
    parser.set_defaults(func=run_sessions)

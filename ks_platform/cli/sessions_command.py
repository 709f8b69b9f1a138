"""``ks-platform sessions [--retired] [--json]``: the session partitions the landing catalog holds, with state and why."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ks_platform.defs.resources import PlatformResource


def run_sessions(args: argparse.Namespace, platform: PlatformResource | None = None) -> int:
    """Print active and retired partitions (``--retired``: only retired ones) from the catalog; reads no session."""
    from ks_platform.defs.resources import PlatformResource
    from ks_platform.operations.sessions import list_partitions

    platform = platform or PlatformResource.from_env()
    rows = list_partitions(Path(platform.store_root), include_active=not args.retired)
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
        "gone), the reason, when, and the successor key.",
    )
    parser.add_argument("--retired", action="store_true", help="only the retired partitions")
    parser.add_argument("--json", action="store_true", help="one JSON list instead of text")
    parser.set_defaults(func=run_sessions)

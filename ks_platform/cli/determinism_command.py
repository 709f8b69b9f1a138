"""``ks-platform determinism``: sort the same binary twice on a device and report any difference.

    ks-platform determinism --binary STORE/sessions/KEY/binary --probe STORE/sessions/KEY/probe/kilosort_probe.json --device cuda
    ks-platform determinism ... --reference STORE/sessions/KEY/sorting   # one new sort, compared with an existing one

Exit status 0 when every compared array (spike times, clusters, amplitudes, templates) is bit-identical, 1 when
anything differs (the report says what and by how much), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def _cmd_determinism(args: argparse.Namespace) -> int:
    from ks_platform.core.determinism import check_determinism
    from ks_platform.core.errors import SessionInputError

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ks-determinism-"))
    try:
        report = check_determinism(
            Path(args.binary),
            Path(args.probe),
            workdir,
            device=args.device,
            runs=args.runs,
            reference=Path(args.reference) if args.reference else None,
            settings_file=Path(args.settings) if args.settings else None,
            log=None if args.quiet else print,
        )
    except SessionInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=1) + "\n")
        print(f"report: {args.json}")
    return 0 if report.identical else 1


def register(sub) -> None:
    """Add determinism."""
    cmd = sub.add_parser("determinism", help="sort one binary twice on a device and report any difference")
    cmd.add_argument(
        "--binary", required=True, help="a recording-binary folder (the store's <session>/binary, with binary.json)"
    )
    cmd.add_argument(
        "--probe", required=True, help="kilosort_probe.json (the store's <session>/probe/) or a .prb/.mat/.json probe"
    )
    cmd.add_argument("--device", default="cpu", help="cpu, cuda[:N], rocm[:N], mps or auto (default cpu)")
    cmd.add_argument(
        "--runs", type=int, default=2, help="number of sortings to compare, a --reference counting as one (default 2)"
    )
    cmd.add_argument("--reference", default=None, help="an existing sorting folder to compare against (saves one sort)")
    cmd.add_argument("--settings", default=None, help="a Kilosort settings JSON layered over the defaults")
    cmd.add_argument("--workdir", default=None, help="where the sortings go (default: a new temporary folder)")
    cmd.add_argument("--json", default=None, help="also write the report as JSON here")
    cmd.add_argument("--quiet", action="store_true", help="do not print Kilosort's logs")
    cmd.set_defaults(func=_cmd_determinism)

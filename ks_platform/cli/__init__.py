"""``ks-platform``: the command line. Each module in this package adds its subcommands with ``register(sub)``."""

from __future__ import annotations

import argparse
import sys

# Each subcommand module imports only the standard library at the top; its heavy imports are inside functions.
from ks_platform.cli import (
    backfill_command,
    convert_command,
    curation_command,
    deployment_command,
    determinism_command,
    doctor_command,
    pipeline_commands,
    sessions_command,
    sort_command,
)

#: Subcommand modules, in the order ``--help`` lists them.
COMMAND_MODULES = (
    pipeline_commands,
    sort_command,
    convert_command,
    doctor_command,
    deployment_command,
    determinism_command,
    backfill_command,
    sessions_command,
    curation_command,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ks-platform", description="Kilosort 4 sortings and Phy bundles from raw recordings, through Dagster."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a configuration or input error a user can fix is one ``error:`` line and exit status 2."""
    from ks_platform.core.errors import PlatformConfigError, SessionInputError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (PlatformConfigError, SessionInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

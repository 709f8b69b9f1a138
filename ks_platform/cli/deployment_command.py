"""``ks-platform deployment``: what the deployment file means, and earlier versions' files converted to one."""

from __future__ import annotations

import argparse
import os


def _cmd_check(args: argparse.Namespace) -> int:
    from ks_platform.core.names import DEPLOYMENT_ENV
    from ks_platform.execution.deployment import deployment_from_env, describe, load_deployment

    deployment = load_deployment(args.file) if args.file else deployment_from_env()
    if deployment is None:
        print(f"engine: local (no {DEPLOYMENT_ENV}: every step runs on this machine)")
        return 0
    print("\n".join(describe(deployment)))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from ks_platform.execution.deployment import convert

    print(convert(args.file), end="")
    return 0


def register(sub) -> None:
    """Add deployment check / convert."""
    deployment = sub.add_parser("deployment", help="where steps run: check the deployment file, convert older files")
    commands = deployment.add_subparsers(dest="deployment_command", required=True)
    check = commands.add_parser("check", help="validate a deployment file and print its engine, hosts and GPUs")
    check.add_argument("file", nargs="?", default=None, help="default: $KS_PLATFORM_DEPLOYMENT (or an older variable)")
    check.set_defaults(func=_cmd_check)
    convert = commands.add_parser(
        "convert", help="print an inventory, SLURM or Kubernetes file of an earlier version as one deployment file"
    )
    convert.add_argument(
        "file", help="the earlier file (e.g. " + os.path.join("deploy", "inventory.example.yaml") + ")"
    )
    convert.set_defaults(func=_cmd_convert)

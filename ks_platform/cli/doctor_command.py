"""``ks-platform doctor``: is this host ready to sort?"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ks_platform.core.names import BACKEND_ENV, DOCKER_URL_ENV


def _cmd_doctor(args: argparse.Namespace) -> int:
    from ks_platform.core.doctor import healthy, report, run_checks
    from ks_platform.defs.resources import PlatformResource

    platform = PlatformResource.from_env()
    checks = run_checks(
        Path(platform.store_root),
        backend=args.backend,
        docker_url=args.docker_url or os.environ.get(DOCKER_URL_ENV),
        landing_roots=platform.roots(),
    )
    print(report(checks))
    ok = healthy(checks)
    print("healthy" if ok else "NOT healthy: fix the FAIL lines above before sorting on this host")
    return 0 if ok else 1


def register(sub) -> None:
    """Add doctor."""
    doctor = sub.add_parser("doctor", help="check this host: imports, backend + tiny kernel, disk, Docker")
    doctor.add_argument("--backend", default=os.environ.get(BACKEND_ENV, "auto"))
    doctor.add_argument("--docker-url", default=None)
    doctor.set_defaults(func=_cmd_doctor)

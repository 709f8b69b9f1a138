"""``host_doctor``: the host self-check (``ks-platform doctor``) as a Dagster job, so the UI shows it per host."""

import socket
from pathlib import Path

import dagster as dg

from ks_platform.core.doctor import as_records, healthy, report, run_checks
from ks_platform.core.names import KIND_TAG
from ks_platform.defs.resources import PlatformResource


class DoctorConfig(dg.Config):
    """Which backend to check (``auto`` = the platform's), and an optional Docker engine URL."""

    backend: str = "auto"
    docker_url: str = ""


@dg.op(
    out=dg.Out(dg.Nothing),  # the checks travel as metadata: no IO manager, so it runs in a step container too
    description="Imports, programs Kilosort calls, compute backend + a tiny kernel on the device, free disk in the "
    "store, landing roots, Docker.",
)
def check_host(context: dg.OpExecutionContext, config: DoctorConfig, platform: PlatformResource) -> dg.Output:
    backend = platform.backend if config.backend == "auto" else config.backend
    checks = run_checks(
        Path(platform.store_root), backend=backend, docker_url=config.docker_url or None, landing_roots=platform.roots()
    )
    text = report(checks)
    for line in text.splitlines():
        context.log.info(line)
    table = dg.MetadataValue.table(
        records=[
            dg.TableRecord({"check": r["name"], "ok": r["ok"], "required": r["required"], "detail": r["detail"]})
            for r in as_records(checks)
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("check", "string"),
                dg.TableColumn("ok", "bool"),
                dg.TableColumn("required", "bool"),
                dg.TableColumn("detail", "string"),
            ]
        ),
    )
    if not healthy(checks):
        failed = "; ".join(line for line in text.splitlines() if line.startswith("[FAIL]"))
        raise dg.Failure(
            description=f"host {socket.gethostname()} is not ready to sort: {failed}",
            metadata={"checks": table},
            allow_retries=False,
        )
    return dg.Output(None, metadata={"host": socket.gethostname(), "checks": table})


@dg.job(
    description="Check this host before real work (what `ks-platform doctor` prints); fails with the checks to fix.",
    tags={KIND_TAG: "doctor"},
)
def host_doctor():
    check_host()

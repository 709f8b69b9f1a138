"""Reconstructable jobs that run their steps in containers (``execute_job(reconstructable(...))``).

They live in the installed package so the same module path resolves inside the step images.
"""

import json

import dagster as dg

from ks_platform.execution.docker_executor import placing_docker_executor


def sort_session_in_containers() -> dg.JobDefinition:
    """``sort_session`` with the placing Docker executor; platform paths from ``KS_PLATFORM_*`` env."""
    from ks_platform.definitions import build_definitions

    return build_definitions(executor=placing_docker_executor).resolve_job_def("sort_session")


@dg.op(
    retry_policy=dg.RetryPolicy(max_retries=1),
    config_schema={
        "hold_seconds": dg.Field(float, default_value=0.0),
        "vanish": dg.Field(
            bool,
            default_value=False,
            description="fault drill: end the step process with code 0 before it reports, as if its events were lost",
        ),
    },
    description="Reports where it ran (host, backend, image digest, planned batch size); holds its slot for hold_seconds.",
)
def report_placement(context: dg.OpExecutionContext) -> None:
    import os
    import socket
    import time

    seen = {
        name: os.environ.get(name)
        for name in ("KS_PLATFORM_BACKEND", "KS_PLATFORM_IMAGE", "KS_PLATFORM_IMAGE_DIGEST", "KS_PLATFORM_BATCH_SIZE")
    }
    seen["hostname"] = socket.gethostname()
    seen["uid"] = str(os.getuid())
    time.sleep(context.op_config["hold_seconds"])
    if context.op_config["vanish"]:
        os._exit(0)
    context.log.info("placement " + json.dumps(seen, sort_keys=True))


@dg.job(
    executor_def=placing_docker_executor,
    description="Smoke test of a deployment: one CPU step in a container, placed by the inventory.",
)
def placement_smoke_job() -> None:
    report_placement()


def placement_smoke() -> dg.JobDefinition:
    return placement_smoke_job


@dg.op(
    tags={"ks_platform/needs": "gpu"},
    retry_policy=dg.RetryPolicy(max_retries=1),
    description="Like report_placement, but placed like the sorting step (needs a GPU when the inventory has one).",
)
def report_gpu_placement(context: dg.OpExecutionContext) -> None:
    import os

    context.log.info(
        "placement "
        + json.dumps(
            {
                name: os.environ.get(name)
                for name in ("KS_PLATFORM_BACKEND", "KS_PLATFORM_BATCH_SIZE", "KS_PLATFORM_IMAGE_DIGEST")
            },
            sort_keys=True,
        )
    )


@dg.job(
    executor_def=placing_docker_executor,
    description="Smoke test of GPU placement: one step tagged ks_platform/needs=gpu.",
)
def gpu_placement_smoke_job() -> None:
    report_gpu_placement()

"""Smoke-test jobs that run their steps in containers (``execute_job(reconstructable(...))``).

They live in the installed package so the same module path resolves inside the step images. ``sort_session`` with
this executor is ``ks_platform.definitions.sort_session_in_containers`` (the execution layer does not import the
code location).
"""

import json

import dagster as dg

from ks_platform.core.names import BACKEND_ENV, BATCH_SIZE_ENV, IMAGE_DIGEST_ENV, IMAGE_ENV, NEEDS_TAG
from ks_platform.execution.docker_executor import placing_docker_executor


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
    description="Reports where it ran (host, backend, image digest, planned batch size); holds its slot for "
    "hold_seconds.",
)
def report_placement(context: dg.OpExecutionContext) -> None:
    import os
    import socket
    import time

    seen = {name: os.environ.get(name) for name in (BACKEND_ENV, IMAGE_ENV, IMAGE_DIGEST_ENV, BATCH_SIZE_ENV)}
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
    tags={NEEDS_TAG: "gpu"},
    retry_policy=dg.RetryPolicy(max_retries=1),
    description="Like report_placement, but placed like the sorting step (needs a GPU when the inventory has one).",
)
def report_gpu_placement(context: dg.OpExecutionContext) -> None:
    import os

    context.log.info(
        "placement "
        + json.dumps(
            {name: os.environ.get(name) for name in (BACKEND_ENV, BATCH_SIZE_ENV, IMAGE_DIGEST_ENV)},
            sort_keys=True,
        )
    )


@dg.job(
    executor_def=placing_docker_executor,
    description="Smoke test of GPU placement: one step tagged ks_platform/needs=gpu.",
)
def gpu_placement_smoke_job() -> None:
    report_gpu_placement()

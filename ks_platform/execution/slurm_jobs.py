"""Reconstructable jobs whose steps run as SLURM batch jobs (``execute_job(reconstructable(...))``)."""

import json

import dagster as dg

from ks_platform.execution.slurm_executor import slurm_executor


def sort_session_on_slurm() -> dg.JobDefinition:
    """``sort_session`` with the SLURM executor; platform paths from ``KS_PLATFORM_*`` env."""
    from ks_platform.definitions import build_definitions

    return build_definitions(executor=slurm_executor).resolve_job_def("sort_session")


@dg.op(
    tags={"ks_platform/needs": "gpu"},
    retry_policy=dg.RetryPolicy(max_retries=1),
    config_schema={
        "hold_seconds": dg.Field(float, default_value=0.0),
        "first_attempt_only": dg.Field(
            bool, default_value=False, description="hold only in the first attempt (the retry runs at once)"
        ),
    },
    description="Reports its SLURM job (job id, node, partition, GPUs, GRES) and the sorter env; holds its GPU.",
)
def report_slurm_job(context: dg.OpExecutionContext) -> None:
    import os
    import time

    from ks_platform.core.lineage import slurm_job

    seen = {
        name: os.environ.get(name)
        for name in ("KS_PLATFORM_BACKEND", "KS_PLATFORM_BATCH_SIZE", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES")
    }
    seen.update(slurm_job())
    seen["environment_names"] = sorted(os.environ)
    seen["retry_number"] = context.retry_number
    context.log.info("slurm " + json.dumps(seen, sort_keys=True))
    if not context.op_config["first_attempt_only"] or context.retry_number == 0:
        time.sleep(context.op_config["hold_seconds"])


@dg.job(executor_def=slurm_executor, description="Smoke test of a SLURM deployment: one GPU step as a batch job.")
def slurm_gpu_smoke_job() -> None:
    report_slurm_job()

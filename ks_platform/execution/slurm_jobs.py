"""Smoke-test jobs whose steps run as SLURM batch jobs (``execute_job(reconstructable(...))``).

``sort_session`` with this executor is ``ks_platform.definitions.sort_session_on_slurm``.
"""

import json

import dagster as dg

from ks_platform.core.names import BACKEND_ENV, BATCH_SIZE_ENV, NEEDS_TAG
from ks_platform.execution.slurm_executor import slurm_executor


@dg.op(
    tags={NEEDS_TAG: "gpu"},
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
        name: os.environ.get(name) for name in (BACKEND_ENV, BATCH_SIZE_ENV, "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES")
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

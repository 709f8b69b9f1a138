"""Smoke-test jobs whose steps run through the SLURM executor (``execute_job(reconstructable(...))``).

``sort_session`` with this executor is ``ks_platform.definitions.sort_session_on_slurm``.
"""

import json

import dagster as dg

from ks_platform.core.names import BACKEND_ENV, BATCH_SIZE_ENV, NEEDS_TAG
from ks_platform.execution.slurm_executor import slurm_executor

HOLD_CONFIG = {
    "hold_seconds": dg.Field(float, default_value=0.0),
    "first_attempt_only": dg.Field(
        bool, default_value=False, description="hold only in the first attempt (the retry runs at once)"
    ),
}


def _report(context: dg.OpExecutionContext) -> None:
    """Log the step's SLURM job, sorter variables and environment names; print a line to its output; hold."""
    import os
    import time

    from ks_platform.core.lineage import slurm_job

    seen = {
        name: os.environ.get(name) for name in (BACKEND_ENV, BATCH_SIZE_ENV, "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES")
    }
    seen.update(slurm_job())
    seen["environment_names"] = sorted(os.environ)
    seen["retry_number"] = context.retry_number
    seen["pid"] = os.getpid()
    context.log.info("slurm " + json.dumps(seen, sort_keys=True))
    print(f"printed by {context.op.name} on stdout, attempt {context.retry_number}", flush=True)
    if not context.op_config["first_attempt_only"] or context.retry_number == 0:
        time.sleep(context.op_config["hold_seconds"])


@dg.op(
    tags={NEEDS_TAG: "gpu"},
    retry_policy=dg.RetryPolicy(max_retries=1),
    config_schema=HOLD_CONFIG,
    description="Reports its SLURM job (job id, node, partition, GPUs, GRES) and the sorter env; holds its GPU.",
)
def report_slurm_job(context: dg.OpExecutionContext) -> None:
    _report(context)


@dg.job(executor_def=slurm_executor, description="Smoke test of a SLURM deployment: one GPU step as a batch job.")
def slurm_gpu_smoke_job() -> None:
    report_slurm_job()


@dg.op(config_schema=HOLD_CONFIG, out=dg.Out(int), description="A CPU step: reports where it runs.")
def report_cpu_step(context: dg.OpExecutionContext) -> int:
    _report(context)
    return 1


@dg.op(config_schema=HOLD_CONFIG, description="A second CPU step, after the first.")
def report_cpu_step_after(context: dg.OpExecutionContext, previous: int) -> None:
    _report(context)


@dg.op(
    tags={NEEDS_TAG: "gpu"},
    config_schema=HOLD_CONFIG,
    out=dg.Out(int),
    description="A GPU step between two CPU steps: reports its SLURM job; holds its GPU.",
)
def report_gpu_step(context: dg.OpExecutionContext, previous: int) -> int:
    _report(context)
    return previous + 1


@dg.job(
    executor_def=slurm_executor,
    description="CPU step → GPU step → CPU step (the executor's cpu_steps decides where the CPU steps run: one job of "
    "the run, a job each, or this machine).",
)
def slurm_cpu_smoke_job() -> None:
    report_cpu_step_after(report_gpu_step(report_cpu_step()))


@dg.op(
    tags={NEEDS_TAG: "gpu"},
    config_schema={"key": str, "hold_seconds": dg.Field(float, default_value=0.0)},
    description="Holds, then publishes <store>/sessions/<key>/sorting through the store's atomic swap (as the sort "
    "does), naming its SLURM job in it.",
)
def publish_into_store(context: dg.OpExecutionContext) -> None:
    import os
    import time
    from pathlib import Path

    from ks_platform.core.names import STORE_ENV
    from ks_platform.core.store import SessionStore, atomic_directory

    time.sleep(context.op_config["hold_seconds"])
    store = SessionStore(Path(os.environ[STORE_ENV]), context.op_config["key"])
    with atomic_directory(store.sorting_dir) as staged:
        (staged / "published.json").write_text(
            json.dumps({"job_id": os.environ.get("SLURM_JOB_ID"), "run_id": context.run_id})
        )
    context.log.info(f"published {store.sorting_dir}")


@dg.job(executor_def=slurm_executor, description="One GPU step that publishes into the store after holding.")
def slurm_publish_job() -> None:
    publish_into_store()

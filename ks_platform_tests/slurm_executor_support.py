"""What the SLURM executor's tests share (test_slurm.py, test_slurm_orphan.py): the executor's settings for the
one-node test cluster (ks_platform_tests.slurm_support) and a run-worker script for the SLURM smoke jobs
(``RunWorker(..., code=RUN_WORKER)`` of ks_platform_tests.run_worker_support).
"""

from __future__ import annotations

from pathlib import Path

from ks_platform_tests.slurm_support import PARTITION

#: What the test instance's dagster.yaml (deploy/dagster.postgres.yaml) reads: jobs get them only when named.
INSTANCE_ENV = ("DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST", "DAGSTER_PG_DB", "DAGSTER_PG_PORT")
#: A run worker (``RunWorker(..., code=RUN_WORKER)``) for a smoke job of ``ks_platform.execution.slurm_jobs``.
RUN_WORKER = """
import json, sys
import dagster as dg
from ks_platform.execution import slurm_jobs
job, run_config, tags = getattr(slurm_jobs, sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
with dg.DagsterInstance.get() as instance:
    with dg.execute_job(dg.reconstructable(job), instance=instance, run_config=run_config, tags=tags) as result:
        print(f"run {result.run_id} success={result.success}", flush=True)
"""


def settings(tmp_path: Path, **overrides) -> dict:
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    return {
        "gpu_partition": PARTITION,
        "gres": "gpu:1",
        "backend": "cuda",
        "gpu_memory_mib": 16384,
        "time_limit": "10:00",
        "cpu_time_limit": "10:00",
        "mem": "1G",
        "cpu_mem": "1G",
        "cpus_per_task": 1,
        "cpu_cpus_per_task": 1,
        "workdir": str(tmp_path / "jobs"),
        "store": str(store),
        "poll_seconds": 1,
        "export": list(INSTANCE_ENV),
        **overrides,
    }

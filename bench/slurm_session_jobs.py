"""Benchmark (issue #25): SLURM jobs and wall time per session, steps as one job each vs the CPU steps of a run in one
job.

Starts the tests' one-node SLURM (ks_platform_tests/slurm_support.py: munged, slurmctld, slurmd on this machine) and a
PostgreSQL server (ks_platform_tests/postgres_support.py), writes one small synthetic SpikeGLX session per repeat
(``--duration`` s × 32 channels, 6 units) and runs the code location's ``sort_session`` job (every asset of the
session, checks included) with the SLURM executor, once per ``--cpu-steps`` mode, alternating, so both modes see the
same machine load. From the instance's event log and SLURM's job-completion log it reports per run:

* wall time: run start → run end;
* SLURM jobs submitted (sbatch calls) and, per step, its start-up: the step handed to SLURM (``STEP_WORKER_STARTING``)
  → ``STEP_START`` (the step's code runs): queueing, job start, Python start-up and loading the code location;
* the sort's own time (``STEP_START`` → ``STEP_SUCCESS`` of ``sorted_units``), the same work in every mode, and the
  wall time outside it (wall − sort): what the steps around the sort and their jobs cost.

    PYTHONPATH=. .venv/bin/python bench/slurm_session_jobs.py --repeats 2 --modes step_jobs,run_job,orchestrator
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "slurm_session_jobs.json"
FIRST_DATE = dt.date(2026, 5, 1)


def events(instance: dg.DagsterInstance, run_id: str, kind: dg.DagsterEventType) -> list:
    return [entry for entry in instance.all_logs(run_id, of_type=kind)]


def measure(instance: dg.DagsterInstance, run_id: str, jobcomp_before: set[str], jobcomp: Path) -> dict:
    """Wall time, jobs and per-step start-up of one run, from its event log and the job-completion log."""
    stats = instance.get_run_stats(run_id)
    starting = {e.step_key: e.timestamp for e in events(instance, run_id, dg.DagsterEventType.STEP_WORKER_STARTING)}
    started = {e.step_key: e.timestamp for e in events(instance, run_id, dg.DagsterEventType.STEP_START)}
    success = {e.step_key: e.timestamp for e in events(instance, run_id, dg.DagsterEventType.STEP_SUCCESS)}
    startup = {key: started[key] - starting[key] for key in started if key in starting}
    ended = [line for line in jobcomp.read_text().splitlines()] if jobcomp.exists() else []
    job_ids = {
        dict(part.split("=", 1) for part in line.split() if "=" in part).get("JobId") for line in ended
    } - jobcomp_before
    row = {
        "run_id": run_id,
        "wall_s": round(stats.end_time - stats.start_time, 1),
        "steps": len(started),
        "slurm_jobs": len(job_ids),
        "step_startup_s": {key: round(value, 1) for key, value in sorted(startup.items())},
        "startup_median_s": round(statistics.median(startup.values()), 1) if startup else None,
        "startup_sum_s": round(sum(startup.values()), 1),
        "sort_s": round(success["sorted_units"] - started["sorted_units"], 1) if "sorted_units" in success else None,
    }
    if row["sort_s"] is not None:
        row["outside_sort_s"] = round(row["wall_s"] - row["sort_s"], 1)  # what the steps around the sort cost
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument(
        "--modes", default="step_jobs,run_job,orchestrator", help="cpu_steps modes to compare (first: baseline)"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("PYTHONPATH", str(REPO))
    from ks_platform.core.sessions import SessionRef
    from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session
    from ks_platform.definitions import sort_session_on_slurm
    from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME
    from ks_platform_tests.postgres_support import postgres_server
    from ks_platform_tests.slurm_support import PARTITION, slurm_cluster

    modes = args.modes.split(",")
    results: list[dict] = []
    base = Path(tempfile.mkdtemp(prefix="ks-platform-bench-slurm-"))
    landing, store = base / "landing", base / "store"
    os.environ.update(
        {"KS_PLATFORM_STORE": str(store), "KS_PLATFORM_LANDING": f"rig1={landing}", "KS_PLATFORM_BACKEND": "cpu"}
    )
    with postgres_server() as url, slurm_cluster() as cluster:
        os.environ["SLURM_CONF"] = str(cluster.conf)
        from urllib.parse import urlparse

        parsed = urlparse(url)
        os.environ.update(
            {
                "DAGSTER_PG_USERNAME": parsed.username or "",
                "DAGSTER_PG_PASSWORD": "",
                "DAGSTER_PG_HOST": parsed.hostname or "",
                "DAGSTER_PG_DB": parsed.path[1:],
                "DAGSTER_PG_PORT": str(parsed.port),
            }
        )
        config = yaml.safe_load((REPO / "deploy" / "dagster.postgres.yaml").read_text())
        with dg.instance_for_test(overrides=config) as instance:
            for repeat in range(args.repeats):
                for mode in modes:
                    name = f"bench{repeat}_{mode}"
                    date = FIRST_DATE + dt.timedelta(days=len(results))
                    spec = DemoSessionSpec(duration_s=args.duration, n_channels=32, n_units=6, recording_date=date)
                    make_spikeglx_session(landing / name, spec)
                    key = SessionRef("rig1", name, spec.recording_date, "imec0").key
                    instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, [key])
                    settings = {
                        "gpu_partition": PARTITION,
                        "backend": "cpu",
                        "time_limit": "30:00",
                        "cpu_time_limit": "30:00",
                        "mem": "4G",
                        "cpu_mem": "2G",
                        # One CPU each, so a CPU job and the sort job fit the test node's 2 CPUs at once, as they
                        # would on a cluster's separate partitions (the node has no cgroups: Kilosort uses both).
                        "cpus_per_task": 1,
                        "cpu_cpus_per_task": 1,
                        "store": str(store),
                        "poll_seconds": 1,
                    }
                    settings["cpu_steps"] = mode
                    settings["export"] = [name for name in os.environ if name.startswith("DAGSTER_PG_")]
                    before = {
                        dict(part.split("=", 1) for part in line.split() if "=" in part).get("JobId")
                        for line in (cluster.jobcomp.read_text().splitlines() if cluster.jobcomp.exists() else [])
                    }
                    started = time.monotonic()
                    with dg.execute_job(
                        dg.reconstructable(sort_session_on_slurm),
                        instance=instance,
                        tags={"dagster/partition": key},
                        run_config={"execution": {"config": {"settings": settings}}},
                    ) as result:
                        run_id, success = result.run_id, result.success
                    time.sleep(2)  # the last job's completion record
                    row = {
                        "mode": mode,
                        "repeat": repeat,
                        "success": success,
                        **measure(instance, run_id, before, cluster.jobcomp),
                    }
                    row["driver_wall_s"] = round(time.monotonic() - started, 1)
                    results.append(row)
                    print(json.dumps(row), flush=True)
    summary = {}
    for mode in modes:
        rows = [row for row in results if row["mode"] == mode]
        summary[mode] = {
            "wall_s_median": statistics.median(row["wall_s"] for row in rows),
            "slurm_jobs": [row["slurm_jobs"] for row in rows],
            "steps": [row["steps"] for row in rows],
            "startup_sum_s_median": statistics.median(row["startup_sum_s"] for row in rows),
            "startup_median_s": statistics.median(row["startup_median_s"] for row in rows),
            "sort_s_median": statistics.median(row["sort_s"] or 0 for row in rows),
            "outside_sort_s_median": statistics.median(row.get("outside_sort_s", 0) for row in rows),
            "all_succeeded": all(row["success"] for row in rows),
        }
    for values in summary.values():
        baseline = summary[modes[0]]
        values["wall_ratio_to_baseline"] = round(values["wall_s_median"] / baseline["wall_s_median"], 3)
        values["outside_sort_ratio_to_baseline"] = round(
            values["outside_sort_s_median"] / baseline["outside_sort_s_median"], 3
        )
    output = {"machine": f"{os.cpu_count()} CPUs", "duration_s": args.duration, "runs": results, "summary": summary}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(output, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

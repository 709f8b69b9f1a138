"""Benchmark (issue #18, mass re-sort): how long the real ``dagster-daemon`` takes to turn one asset backfill of N
session partitions into queued runs, for three shapes of the same 5-asset chain (``bench/backfill_queue_defs.py``):
one run per session (today), chunks (``BackfillPolicy.multi_run(max_partitions_per_run=--chunk)``) and one run
(``BackfillPolicy.single_run()``).

Per shape: a fresh SQLite instance in a temporary ``DAGSTER_HOME`` whose run queue is closed
(``run_queue.max_concurrent_runs: 0``: runs are created and queued, none is launched), N dynamic partitions, one
asset backfill recorded as ``ks-platform backfill`` records it (``PartitionBackfill.from_asset_partitions``), then
``dagster-daemon run`` is started and the run records are polled until every partition is in a run. Reported: runs,
time from daemon start to the first and the last run, and the per-run cost between them ((last - first) / (runs - 1)).

    .venv/bin/python bench/backfill_queue.py --partitions 200 --chunk 20

Results: ``bench/results/backfill_queue.json`` (one row per invocation, appended).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform as host_platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "backfill_queue.json"
SHAPES = ("per_session", "chunked", "single_run")


def measure_shape(shape: str, n: int, chunk: int, timeout_s: float) -> dict:
    import dagster as dg
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id
    from dagster._time import get_current_timestamp

    with tempfile.TemporaryDirectory(prefix=f"backfill_queue_{shape}_") as tmp:
        home = Path(tmp)
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nrun_queue:\n  max_concurrent_runs: 0\n")
        (home / "workspace.yaml").write_text(
            f"load_from:\n  - python_file:\n      relative_path: {BENCH / 'backfill_queue_defs.py'}\n"
            f"      working_directory: {BENCH}\n"
        )
        env = {**os.environ, "DAGSTER_HOME": str(home), "BENCH_CHUNK": str(chunk)}
        os.environ.update(DAGSTER_HOME=str(home), BENCH_CHUNK=str(chunk))
        sys.path.insert(0, str(BENCH))
        import backfill_queue_defs as defs_module

        asset_graph = defs_module.defs.resolve_asset_graph()
        keys = [dg.AssetKey([shape, step]) for step in defs_module.STEPS]
        partitions = [f"2025-01-01__rig1__s{i:05d}__imec0" for i in range(n)]
        with dg.DagsterInstance.get() as instance:
            instance.add_dynamic_partitions(defs_module.SESSIONS.name, partitions)
            instance.add_backfill(
                PartitionBackfill.from_asset_partitions(
                    backfill_id=make_new_backfill_id(),
                    asset_graph=asset_graph,
                    partition_names=partitions,
                    asset_selection=keys,
                    backfill_timestamp=get_current_timestamp(),
                    tags={},
                    dynamic_partitions_store=instance,
                    all_partitions=False,
                    title=f"bench {shape}",
                    description=None,
                    run_config=None,
                )
            )
            log = open(home / "daemon.log", "w")
            start = time.time()
            daemon = subprocess.Popen(
                [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(home / "workspace.yaml")],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=home,
            )
            covered, records = 0, []
            try:
                while time.time() - start < timeout_s:
                    time.sleep(1.0)
                    records = instance.get_run_records()
                    covered = sum(_partitions_in(r.dagster_run, n) for r in records)
                    if covered >= n:
                        break
            finally:
                daemon.terminate()
                try:
                    daemon.wait(30)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                log.close()
            created = sorted(r.create_timestamp.timestamp() for r in records)
            statuses = sorted({r.dagster_run.status.value for r in records})
        sys.path.remove(str(BENCH))
        row = {
            "shape": shape,
            "partitions": n,
            "chunk": chunk if shape == "chunked" else None,
            "runs": len(records),
            "partitions_in_runs": covered,
            "complete": covered >= n,
            "run_statuses": statuses,
            "first_run_after_daemon_start_s": round(created[0] - start, 2) if created else None,
            "last_run_after_daemon_start_s": round(created[-1] - start, 2) if created else None,
            "per_run_s": round((created[-1] - created[0]) / (len(created) - 1), 4) if len(created) > 1 else None,
            "per_partition_s": round((created[-1] - start) / n, 4) if created else None,
        }
        print(json.dumps(row), flush=True)
        return row


def _partitions_in(run, n: int) -> int:
    """How many partitions one run covers (a single key, or a range tag of a chunked/single run)."""
    tags = run.tags
    if "dagster/partition" in tags:
        return 1
    first, last = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    if first and last:
        return int(last.split("__s")[1].split("__")[0]) - int(first.split("__s")[1].split("__")[0]) + 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--partitions", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=20)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per shape")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    rows = [measure_shape(shape, args.partitions, args.chunk, args.timeout) for shape in args.shapes]
    import dagster as dg

    result = {
        "command": f"python bench/backfill_queue.py --partitions {args.partitions} --chunk {args.chunk}",
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": {
            "nproc": os.cpu_count(),
            "python": host_platform.python_version(),
            "dagster": dg.__version__,
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "shapes": rows,
    }
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
        RESULTS.write_text(json.dumps([*previous, result], indent=1) + "\n")
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()

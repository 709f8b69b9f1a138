"""Benchmark (issue #16): does a date-range backfill keep the one sort slot busy?

Writes ``--sessions`` small synthetic SpikeGLX sessions (distinct recording dates) into a temp landing root, starts a
real ``dagster-daemon run -w workspace.yaml`` over a temp ``DAGSTER_HOME`` holding the project's dagster.yaml (CPU
backend, one ``kilosort`` pool slot), launches the real ``ks-platform backfill --start … --end …``, waits for every
run, then reads the instance's event log:

* sort intervals: ``STEP_START`` → ``STEP_SUCCESS`` of each run's ``sorted_units`` step ("sorting"), and
  ``STEP_WORKER_STARTING`` → ``STEP_SUCCESS`` (the pool slot is claimed before the step's process starts: "slot held");
* busy fraction = time some sort runs / (first sort start → last sort end), and over the whole backfill
  (backfill created → last run end); sort starts while another sort runs (must be 0 with one slot);
* per-run Dagster overhead: run created → ``RUN_STARTING`` (queue), ``RUN_STARTING`` → first ``STEP_START``,
  last step end → ``RUN_SUCCESS``; the backfill daemon's latency (backfill created → first run created).

Baseline, measured in the same run: the serial time Σ over runs of the run's own step durations (what running the
sessions strictly one after another would take with these step times); ratio = serial / backfill wall time.

    .venv/bin/python bench/backfill_busy.py --sessions 6 --duration 8 [--executor in_process|spawn]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "backfill_busy.json"
SORT_STEP = "sorted_units"
FIRST_DATE = dt.date(2026, 4, 1)


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by the intervals."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def overlapping_starts(intervals: list[tuple[float, float]]) -> int:
    """How many intervals start while another one is still open."""
    return sum(
        any(other is not interval and other[0] <= interval[0] < other[1] for other in intervals)
        for interval in intervals
    )


def run_timeline(instance, run_id: str) -> dict:
    """Timestamps of one run from its event log (seconds since the epoch)."""
    from dagster import DagsterEventType as T

    record = instance.get_run_record_by_id(run_id)
    first: dict[str, float] = {}
    steps: dict[str, dict[str, float]] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        kind = event.event_type
        first.setdefault(kind.value, entry.timestamp)
        if kind == T.RUN_SUCCESS or kind == T.RUN_FAILURE:
            first["RUN_END"] = entry.timestamp
        if event.step_key and kind in (
            T.STEP_WORKER_STARTING,
            T.STEP_START,
            T.STEP_SUCCESS,
            T.STEP_FAILURE,
        ):
            steps.setdefault(event.step_key, {})[kind.value] = entry.timestamp
    return {
        "run_id": run_id,
        "partition": record.dagster_run.tags.get("dagster/partition"),
        "status": record.dagster_run.status.value,
        "created": record.create_timestamp.timestamp(),
        "starting": first.get(T.RUN_STARTING.value),
        "end": first.get("RUN_END"),
        "steps": steps,
    }


def process_starts(timelines: list[dict]) -> dict | None:
    """Min/median/max of STEP_WORKER_STARTING → STEP_START (the step's own process starting; none in-process)."""
    import statistics

    starts = [
        s["STEP_START"] - s["STEP_WORKER_STARTING"]
        for run in timelines
        for s in run["steps"].values()
        if "STEP_START" in s and "STEP_WORKER_STARTING" in s
    ]
    if not starts:
        return None
    return {"n": len(starts), "min": min(starts), "median": statistics.median(starts), "max": max(starts)}


def summarize(timelines: list[dict], backfill_created: float, now: float | None = None) -> dict:
    """Busy fraction, overlaps, per-run overheads and the serial baseline from the run timelines.

    With ``now`` (a backfill still running), a sort in progress counts as busy until ``now`` and unfinished runs are
    left out of the per-run overheads."""
    import statistics

    def step_end(step: dict) -> float:
        return step.get("STEP_SUCCESS") or step["STEP_FAILURE"]

    sorting, held, per_run = [], [], []
    serial = 0.0
    for run in timelines:
        steps = [s for s in run["steps"].values() if "STEP_START" in s and ("STEP_SUCCESS" in s or "STEP_FAILURE" in s)]
        serial += sum(step_end(s) - s["STEP_START"] for s in steps)
        sort = run["steps"].get(SORT_STEP, {})
        sort_end = sort.get("STEP_SUCCESS") or (now if "STEP_START" in sort and "STEP_FAILURE" not in sort else None)
        if "STEP_START" in sort and sort_end:
            sorting.append((sort["STEP_START"], sort_end))
            held.append((sort.get("STEP_WORKER_STARTING", sort["STEP_START"]), sort_end))
        if run["end"] is None or not steps:
            continue
        first_step = min(s["STEP_START"] for s in steps)
        last_step = max(step_end(s) for s in steps)
        per_run.append(
            {
                "partition": run["partition"],
                "status": run["status"],
                "queued_s": run["starting"] - run["created"],
                "launch_to_first_step_s": first_step - run["starting"],
                "last_step_to_exit_s": run["end"] - last_step,
                "sort_s": sort["STEP_SUCCESS"] - sort["STEP_START"] if sort.get("STEP_SUCCESS") else None,
                "first_step_to_sort_launch_s": (sort["STEP_WORKER_STARTING"] - first_step)
                if sort.get("STEP_WORKER_STARTING")
                else None,
            }
        )
    sort_window = max(e for _, e in sorting) - min(s for s, _ in sorting)
    backfill_wall = (now or max(run["end"] for run in timelines)) - backfill_created
    busy_sorting = union_length(sorting)
    busy_held = union_length(held)

    def med(name: str) -> float | None:
        return statistics.median(r[name] for r in per_run) if per_run else None

    return {
        "complete": now is None,
        "runs": len(timelines),
        "runs_finished": len(per_run),
        "runs_succeeded": sum(r["status"] == "SUCCESS" for r in timelines),
        "sorts": len(sorting),
        "sort_busy_fraction": busy_sorting / sort_window,
        "slot_held_fraction": union_length(held) / (max(e for _, e in held) - min(s for s, _ in held)),
        "sort_busy_fraction_whole_backfill": busy_sorting / backfill_wall,
        "slot_held_fraction_whole_backfill": busy_held / backfill_wall,
        "sorts_started_while_another_ran": overlapping_starts(sorting),
        "sort_window_s": sort_window,
        "sort_time_sum_s": sum(e - s for s, e in sorting),
        "backfill_wall_s": backfill_wall,
        "daemon_latency_s": min(run["created"] for run in timelines) - backfill_created,
        "step_process_start_s": process_starts(timelines),
        "median_queued_s": med("queued_s"),
        "median_launch_to_first_step_s": med("launch_to_first_step_s"),
        "median_last_step_to_exit_s": med("last_step_to_exit_s"),
        "baseline_serial_step_time_s": serial,
        "ratio_serial_over_wall": serial / backfill_wall,
        "per_run": per_run,
    }


def summarize_home(home: Path, args: argparse.Namespace) -> int:
    """The row of the backfill in the instance at ``home`` (a backfill still running is summarized up to now)."""
    import dagster as dg
    from dagster._core.execution.backfill import BulkActionStatus

    os.environ["DAGSTER_HOME"] = str(home)
    instance = dg.DagsterInstance.get()
    [backfill] = instance.get_backfills()
    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))
    done = backfill.status != BulkActionStatus.REQUESTED and all(r.is_finished for r in runs)
    summary = summarize(
        [run_timeline(instance, r.run_id) for r in runs], backfill.backfill_timestamp, None if done else time.time()
    )
    row = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "dagster_home": str(home),
        "cpus": os.cpu_count(),
        "load_average_at_summary": load_average(),
        "executor": args.executor,
        **summary,
    }
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps([*rows, row], indent=2) + "\n")
    print(json.dumps(row, indent=2))
    return 0


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per session")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=2400.0, help="seconds to wait for the backfill")
    parser.add_argument(
        "--dagster-yaml",
        type=Path,
        default=REPO / "dagster.yaml",
        help="instance config to use",
    )
    parser.add_argument(
        "--executor",
        choices=["default", "in_process", "spawn"],
        default="default",
        help="the code location's executor: the project's (multiprocess, steps forked from a preloaded forkserver) or "
        "in_process (each run's steps in its run worker, so a sort starts without spawning a process) or spawn "
        "(Dagster's stock multiprocess executor, bench/spawn_location.py: the baseline for the forkserver)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (prints its path)")
    parser.add_argument(
        "--summarize",
        type=Path,
        metavar="DAGSTER_HOME",
        help="only read the backfill of a kept run's instance (still running: what finished so far) and append its row",
    )
    args = parser.parse_args()
    if args.summarize:
        return summarize_home(args.summarize, args)

    from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session

    tmp = Path(tempfile.mkdtemp(prefix="backfill_busy_"))
    home, landing, store = tmp / "dagster_home", tmp / "landing" / "rig1", tmp / "store"
    for path in (home, landing, store):
        path.mkdir(parents=True)
    shutil.copy(args.dagster_yaml, home / "dagster.yaml")
    dates = [FIRST_DATE + dt.timedelta(days=i) for i in range(args.sessions)]
    for i, date in enumerate(dates):
        spec = DemoSessionSpec(
            duration_s=args.duration,
            n_channels=args.channels,
            seed=100 + i,
            recording_date=date,
            n_units=8,
        )
        make_spikeglx_session(landing / f"bench_{date.isoformat()}", spec)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "KS_PLATFORM_STORE": str(store),
        "KS_PLATFORM_LANDING": f"rig1={landing}",
        "KS_PLATFORM_BACKEND": "cpu",
        "PYTHONUNBUFFERED": "1",
    }
    from ks_platform.core.names import EXECUTION_ENVS

    for name in EXECUTION_ENVS:
        env.pop(name, None)
    os.environ.update({k: env[k] for k in ("DAGSTER_HOME", "KS_PLATFORM_STORE", "KS_PLATFORM_LANDING")})
    workspace = REPO / "workspace.yaml"
    if args.executor == "in_process":  # the platform's own route (definitions.executor_from_env)
        env["KS_PLATFORM_EXECUTOR"] = "in_process"
    if args.executor == "spawn":
        workspace = tmp / "workspace.yaml"
        workspace.write_text(
            "load_from:\n  - python_file:\n"
            f"      relative_path: {REPO / 'bench' / 'spawn_location.py'}\n"
            f"      working_directory: {REPO}\n      attribute: defs\n      location_name: ks_platform\n"
        )
    bin_dir = Path(sys.executable).parent
    import dagster as dg
    from dagster._core.execution.backfill import BulkActionStatus

    instance = dg.DagsterInstance.get()  # create the SQLite storages before the daemon and the CLI open them
    instance.get_runs(limit=1), instance.get_backfills(), instance.all_instigator_state()
    load_before = load_average()
    log = open(tmp / "daemon.log", "wb")
    daemon = subprocess.Popen(
        [str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not instance.get_daemon_heartbeats().get("BACKFILL"):  # the daemon is up before the backfill is recorded
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not start, see {tmp / 'daemon.log'}")
            time.sleep(2)
        launched = subprocess.run(
            [
                str(bin_dir / "ks-platform"),
                "backfill",
                "--start",
                dates[0].isoformat(),
                "--end",
                dates[-1].isoformat(),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        print(launched.stdout, flush=True)
        [backfill] = instance.get_backfills()
        deadline = time.monotonic() + args.timeout
        terminal = {"SUCCESS", "FAILURE", "CANCELED"}
        while True:
            backfill = instance.get_backfill(backfill.backfill_id)
            runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))
            done = backfill.status != BulkActionStatus.REQUESTED and all(r.status.value in terminal for r in runs)
            if done and runs:
                break
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon exited or timeout; backfill {backfill.status}, see {tmp / 'daemon.log'}")
            time.sleep(5)
        load_after = load_average()
        timelines = [run_timeline(instance, run.run_id) for run in runs]
        summary = summarize(timelines, backfill.backfill_timestamp)
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
        log.close()
    row = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "sessions": args.sessions,
        "duration_s": args.duration,
        "channels": args.channels,
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "dagster_yaml": str(args.dagster_yaml),
        "executor": args.executor,
        **summary,
    }
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps([*rows, row], indent=2) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "per_run"}, indent=2))
    for run in summary["per_run"]:
        print(run)
    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if summary["runs_succeeded"] == summary["runs"] else 1


if __name__ == "__main__":
    sys.exit(main())

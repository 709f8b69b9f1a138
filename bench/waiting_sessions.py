"""Benchmark (issue #27): what do sessions waiting for the sort slot cost the sort that has it?

One configuration = one fresh ``DAGSTER_HOME`` (the project's dagster.yaml, ``pools.granularity`` per mode), one real
``dagster-daemon run``, the real ``ks-platform backfill`` CLI. Session S0 (``--duration`` s × 32 channels, ``nblocks: 0`` as the
test suite's session, the sort that is measured) is launched alone; once its ``sorted_units`` step runs, N more sessions (4 s each) are launched and
run their CPU steps; the window starts when every one of them waits for the ``kilosort`` pool (``op``: their run
worker waits inside its run; ``run``: the run coordinator holds their runs in the queue, no process). Until S0's sort
ends, every process of the daemon's session is sampled from ``/proc`` (utime + stime, plus reaped children) and
attributed by ancestry: S0's run worker (and its forkserver and sort process), the waiting runs' workers, the rest
(daemon, code servers). Then the hand-over: S0's sort end → the next session's sort start (the pipelining kept).

Modes: ``stock`` — op granularity with Dagster's own multiprocess loop (bench/stock_wait_location.py, the baseline);
``patient`` — op granularity with the project's executor (execution/step_processes.py); ``run`` — run granularity.

    PYTHONPATH=. .venv/bin/python bench/waiting_sessions.py --plan 0:patient,1:stock,1:patient,4:stock,4:patient,\
8:stock,8:patient,8:run,0:patient
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "waiting_sessions.json"
FIRST_DATE = dt.date(2026, 5, 1)
SORT_STEP = "sorted_units"
POOL = "kilosort"
TICKS = os.sysconf("SC_CLK_TCK")
PID_RE = re.compile(r"parent process \(pid: (\d+)\)")


def proc_table() -> dict[int, tuple[int, int, float]]:
    """``pid → (ppid, session id, CPU seconds of it and its reaped children)`` of every live process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu = sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS
        table[int(entry.name)] = (int(fields[1]), int(fields[3]), cpu)
    return table


def subtree(table: dict[int, tuple[int, int, float]], root: int) -> set[int]:
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _, _) in table.items() if ppid == parent and pid not in found]
        found.update(children)
        frontier.extend(children)
    return found & set(table)


def cpu_by_group(table: dict, session: int, groups: dict[str, int]) -> dict[str, dict[int, float]]:
    """CPU seconds per live process, grouped: each named run worker's subtree, and "rest" of the daemon's session."""
    result: dict[str, dict[int, float]] = {}
    claimed: set[int] = set()
    for name, root in groups.items():
        pids = subtree(table, root) if root in table else set()
        result[name] = {pid: table[pid][2] for pid in pids}
        claimed |= pids
    result["rest"] = {pid: cpu for pid, (_, sid, cpu) in table.items() if sid == session and pid not in claimed}
    return result


def used(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], name: str) -> float:
    """CPU seconds a group used between two samples: what each process alive at the second sample used since the
    first (a process started in between: all of it; one that ended in between is in its parent's reaped-children
    time)."""
    first, last = before.get(name, {}), after.get(name, {})
    return sum(last[pid] - first.get(pid, 0.0) for pid in last)


def step_times(instance, run_id: str) -> dict[str, dict[str, float]]:
    steps: dict[str, dict[str, float]] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is not None and event.step_key:
            steps.setdefault(event.step_key, {}).setdefault(event.event_type_value, entry.timestamp)
    return steps


def run_worker_pid(instance, run_id: str) -> int | None:
    for entry in instance.all_logs(run_id):
        match = PID_RE.search(entry.user_message or "")
        if match:
            return int(match.group(1))
    return None


def wait(what: str, probe, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(every)


def make_sessions(cache: Path, duration: float, waiting: int) -> list[Path]:
    """S0 and ``waiting`` short sessions in ``cache`` (made once, copied into each configuration's landing root)."""
    from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session

    folders = []
    for i in range(waiting + 1):
        date = FIRST_DATE + dt.timedelta(days=i)
        folder = cache / f"bench_{date.isoformat()}_{'sorted' if i == 0 else 'waiting'}"
        if not folder.exists():
            spec = DemoSessionSpec(duration_s=duration if i == 0 else 4.0, seed=200 + i, recording_date=date, n_units=8)
            make_spikeglx_session(folder, spec)
            # as the test suite's canonical session: no drift pass (half of a CPU sort; synthetic data does not drift)
            (folder / "kilosort4-settings.json").write_text('{"nblocks": 0}\n')
        folders.append(folder)
    return folders


def configuration(mode: str, waiting: int, sessions: list[Path], args: argparse.Namespace) -> dict:
    import dagster as dg
    import yaml

    tmp = Path(tempfile.mkdtemp(prefix=f"waiting_{mode}_{waiting}_"))
    home, landing, store = tmp / "dagster_home", tmp / "landing" / "rig1", tmp / "store"
    for path in (home, landing, store):
        path.mkdir(parents=True)
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config["concurrency"]["pools"]["granularity"] = "run" if mode == "run" else "op"
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    for folder in sessions[: waiting + 1]:
        shutil.copytree(folder, landing / folder.name)
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
    workspace = REPO / "workspace.yaml"
    if mode == "stock":
        workspace = tmp / "workspace.yaml"
        workspace.write_text(
            "load_from:\n  - python_file:\n"
            f"      relative_path: {REPO / 'bench' / 'stock_wait_location.py'}\n"
            f"      working_directory: {REPO}\n      attribute: defs\n      location_name: ks_platform\n"
        )
    os.environ["DAGSTER_HOME"] = str(home)
    instance = dg.DagsterInstance.get()
    instance.get_runs(limit=1), instance.get_backfills(), instance.all_instigator_state()
    bin_dir = Path(sys.executable).parent
    log = open(tmp / "daemon.log", "wb")
    daemon = subprocess.Popen(
        [str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    load_before = [round(v, 2) for v in os.getloadavg()]

    def backfill(first: int, last: int) -> None:
        start, end = (FIRST_DATE + dt.timedelta(days=d) for d in (first, last))
        subprocess.run(
            [str(bin_dir / "ks-platform"), "backfill", "--start", start.isoformat(), "--end", end.isoformat()],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )

    def runs_of(dates: range) -> list:
        keys = {f"{(FIRST_DATE + dt.timedelta(days=d)).isoformat()}__rig1__{sessions[d].name}__imec0" for d in dates}
        return [r for r in instance.get_runs() if r.tags.get("dagster/partition") in keys]

    try:
        wait("the daemon", lambda: instance.get_daemon_heartbeats().get("BACKFILL"), 300, 2)
        backfill(0, 0)
        [s0] = wait("S0's run", lambda: runs_of(range(1)), 300, 2)
        wait("S0's sort to start", lambda: "STEP_START" in step_times(instance, s0.run_id).get(SORT_STEP, {}), 1800, 2)
        s0_pid = wait("S0's run worker pid", lambda: run_worker_pid(instance, s0.run_id), 60)
        waiting_runs: list = []
        if waiting:
            backfill(1, waiting)
            waiting_runs = wait(
                "the waiting runs", lambda: (r := runs_of(range(1, waiting + 1))) and len(r) == waiting and r, 600, 2
            )
            if mode == "run":
                # queued in the run coordinator, or started (a run granularity run holds the slot for its whole run)
                wait(
                    "the runs to sit in the queue",
                    lambda: instance.get_run_by_id(s0.run_id).status.value == "STARTED",
                    60,
                )
                time.sleep(30)  # a few coordinator iterations over the queued runs
            else:
                running = min(waiting, config["concurrency"]["runs"]["max_concurrent_runs"] - 1)
                wait(
                    f"{running} runs to wait for the kilosort pool",
                    lambda: instance.event_log_storage.get_concurrency_info(POOL).pending_step_count >= running,
                    1800,
                    2,
                )
                time.sleep(5)
        sort = step_times(instance, s0.run_id)[SORT_STEP]
        if "STEP_SUCCESS" in sort or "STEP_FAILURE" in sort:
            raise RuntimeError("S0's sort ended before the waiting runs were in place: use a longer --duration")
        pids = {r.run_id: run_worker_pid(instance, r.run_id) for r in waiting_runs}
        groups = {"sort_run": s0_pid, **{f"waiting:{rid}": pid for rid, pid in pids.items() if pid}}
        before, start = cpu_by_group(proc_table(), daemon.pid, groups), time.monotonic()
        after, end = before, start
        while True:
            sort = step_times(instance, s0.run_id)[SORT_STEP]
            if "STEP_SUCCESS" in sort or "STEP_FAILURE" in sort:
                break
            after, end = cpu_by_group(proc_table(), daemon.pid, groups), time.monotonic()
            time.sleep(1)
        window = end - start
        waiting_cpu = sum(used(before, after, name) for name in groups if name.startswith("waiting:"))
        handover = None
        if waiting:

            def next_sort_start():
                starts = [step_times(instance, r.run_id).get(SORT_STEP, {}).get("STEP_START") for r in waiting_runs]
                return min((s for s in starts if s), default=None)

            try:
                handover = wait("the next sort", next_sort_start, args.handover_timeout, 1) - sort["STEP_SUCCESS"]
            except TimeoutError:
                handover = None
        from ks_platform.core.sorting import load_sort_result
        from ks_platform.defs.resources import PlatformResource

        key = s0.tags["dagster/partition"]
        summary = load_sort_result(PlatformResource(store_root=str(store)).store(key).sorting_dir)
        row = {
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "mode": mode,
            "waiting_sessions": waiting,
            "waiting_run_workers": sum(1 for pid in pids.values() if pid),
            "sorted_session": f"{args.duration:g} s x 32 channels",
            "window_s": round(window, 1),
            "waiting_cpu_s": round(waiting_cpu, 2),
            "waiting_cores": round(waiting_cpu / window, 4) if window else None,
            "waiting_cores_per_worker": round(waiting_cpu / window / max(1, len(groups) - 1), 4) if window else None,
            "sort_run_cpu_s": round(used(before, after, "sort_run"), 1),
            "daemon_and_code_servers_cpu_s": round(used(before, after, "rest"), 2),
            "sort_step_s": round(sort["STEP_SUCCESS"] - sort["STEP_START"], 1) if "STEP_SUCCESS" in sort else None,
            "kilosort_s": summary.seconds,
            "handover_s": round(handover, 1) if handover is not None else None,
            "load_average_before": load_before,
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
            "cpus": os.cpu_count(),
        }
    finally:
        try:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(daemon.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--plan", default="0:patient,1:stock,1:patient,4:stock,4:patient,8:stock,8:patient,8:run,0:patient"
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of the sorted session")
    parser.add_argument("--handover-timeout", type=float, default=180.0)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    plan = [(int(n), mode) for n, mode in (item.split(":") for item in args.plan.split(","))]
    cache = Path(tempfile.gettempdir()) / f"waiting_sessions_cache_{args.duration:g}"
    sessions = make_sessions(cache, args.duration, max(n for n, _ in plan))
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    for waiting, mode in plan:
        print(f"--- {mode}, {waiting} waiting session(s)", flush=True)
        row = configuration(mode, waiting, sessions, args)
        print(json.dumps(row), flush=True)
        rows.append(row)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

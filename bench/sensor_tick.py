"""Benchmark (issue #6): one ``new_session_sensor`` tick over a landing root with 10,000 existing sessions.

Makes ``--sessions`` tiny but valid SpikeGLX session folders laid out as SpikeGLX writes them
(``<run>_g0/<run>_g0_t0.nidq.{bin,meta}`` + ``<run>_g0_imec0/<run>_g0_t0.imec0.{ap,lf}.{bin,meta}``: 2
folders and 6 files per session; only the AP pair has content: a 250-byte .bin and its ~8 kB .meta), runs one warm-up tick
that opens all of them into the landing catalog (under the store), then times ticks of the real sensor function (called with
``build_sensor_context`` on a real instance) each with one new session added since the previous tick,
and ticks with nothing new; the row is appended to ``bench/results/sensor_tick.json``. Goal: a tick with
1 new session among 10,000 in ≤ 1 s.

    .venv/bin/python bench/sensor_tick.py --sessions 10000

The folders go to a temporary directory (``--workdir``, default the system temp dir; ~160 MB on ext4 for
10,000 sessions, removed at the end). Timings are with the folders' inodes in the kernel cache, which is
the steady state of a sensor that walks them every minute on a local disk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform as host_platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import dagster as dg

from ks_platform.core.synthetic import spikeglx_meta
from ks_platform.defs.resources import PlatformResource
from ks_platform.defs.sensors import build_new_session_sensor

N_AP = 4  # AP channels saved (+1 sync channel)
N_SAMPLES = 25
RESULTS = Path(__file__).parent / "results" / "sensor_tick.json"


def tiny_meta(file_size: int, date: dt.date) -> str:
    """The meta SpikeGLX writes for the AP file (``N_AP`` channels + sync; ``file_size`` bytes, checked here)."""
    assert file_size == N_SAMPLES * (N_AP + 1) * 2, file_size
    return spikeglx_meta(N_AP, N_SAMPLES, 30000.0, date)


def make_tiny_session(root: Path, index: int) -> Path:
    run = f"m{index // 100:03d}_s{index:05d}_g0"
    folder = root / run
    probe = folder / f"{run}_imec0"
    probe.mkdir(parents=True)
    data = os.urandom(N_SAMPLES * (N_AP + 1) * 2)
    date = dt.date(2026, 1, 1) + dt.timedelta(days=index % 365)
    (probe / f"{run}_t0.imec0.ap.bin").write_bytes(data)
    (probe / f"{run}_t0.imec0.ap.meta").write_text(tiny_meta(len(data), date))
    for name in (f"{run}_t0.imec0.lf.bin", f"{run}_t0.imec0.lf.meta"):
        (probe / name).touch()
    for name in (f"{run}_t0.nidq.bin", f"{run}_t0.nidq.meta"):
        (folder / name).touch()
    return folder


def disk_usage_mb(path: Path) -> float | None:
    try:
        out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True).stdout
        return round(int(out.split()[0]) / 1024, 1)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return None


def find_walk_seconds(path: Path) -> float | None:
    """Floor for the same stat walk in C: ``find -printf`` of every entry's size, mtime and ctime."""
    try:
        start = time.perf_counter()
        subprocess.run(["find", str(path), "-printf", "%s %T@ %C@ %p\\n"], stdout=subprocess.DEVNULL, check=True)
        return time.perf_counter() - start
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5, help="timed ticks with 1 new session (and as many with none)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory(dir=args.workdir, prefix="sensor_tick_") as tmp,
        dg.instance_for_test() as instance,
    ):
        tmp = Path(tmp)
        landing = tmp / "landing"
        landing.mkdir()
        t0 = time.perf_counter()
        for index in range(args.sessions):
            make_tiny_session(landing, index)
        create_s = time.perf_counter() - t0
        usage = disk_usage_mb(landing)
        print(f"{args.sessions} session folders made in {create_s:.1f} s ({usage} MB on disk)")

        platform = PlatformResource(store_root=str(tmp / "store"), landing_roots=f"rig1={landing}", backend="cpu")
        # Production settle rule (120 s), with the sensor's clock one hour ahead so fresh folders count as settled.
        sensor = build_new_session_sensor(
            settle_seconds=120, marker_name="", max_sessions_per_tick=None, clock=lambda: time.time() + 3600
        )

        def tick(cursor: str | None, quiet: bool = False) -> tuple[float, dg.SensorResult]:
            context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"platform": platform})
            if quiet:  # the warm-up would print one line per session
                context.log.setLevel(logging.WARNING)
            start = time.perf_counter()
            result = sensor(context)
            return time.perf_counter() - start, result

        warmup_s, result = tick(None, quiet=True)
        assert len(result.run_requests) == args.sessions, len(result.run_requests)
        cursor = result.cursor
        print(f"warm-up tick (opens all {args.sessions}): {warmup_s:.2f} s, cursor {len(cursor)} bytes")

        new_times, idle_times = [], []
        for repeat in range(args.repeats):
            make_tiny_session(landing, args.sessions + repeat)
            seconds, result = tick(cursor)
            assert len(result.run_requests) == 1, [r.run_key for r in result.run_requests]
            cursor = result.cursor
            new_times.append(seconds)
            seconds, result = tick(cursor)
            assert not result.run_requests and result.cursor == cursor
            idle_times.append(seconds)
        print(
            f"tick with 1 new session among {args.sessions}: median {statistics.median(new_times):.3f} s, max {max(new_times):.3f} s (goal ≤ 1 s)"
        )
        print(f"tick with nothing new: median {statistics.median(idle_times):.3f} s")
        find_s = find_walk_seconds(landing)
        if find_s is not None:
            print(f"reference: GNU find stat-walking the same tree: {find_s:.3f} s")
        load = os.getloadavg()[0]

    row = {
        "command": f"python bench/sensor_tick.py --sessions {args.sessions} --repeats {args.repeats}",
        "when": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "host": {
            "nproc": os.cpu_count(),
            "python": host_platform.python_version(),
            "kernel": host_platform.release(),
            "dagster": dg.__version__,
        },
        "sessions": args.sessions,
        "layout": "SpikeGLX-like: 2 folders + 6 files per session (AP pair a few hundred bytes, others empty)",
        "landing_disk_mb": usage,
        "create_s": round(create_s, 2),
        "warmup_tick_s": round(warmup_s, 3),
        "cursor_bytes": len(cursor),
        "tick_1_new_s": [round(t, 4) for t in new_times],
        "tick_1_new_median_s": round(statistics.median(new_times), 4),
        "tick_1_new_max_s": round(max(new_times), 4),
        "tick_nothing_new_median_s": round(statistics.median(idle_times), 4),
        "find_walk_reference_s": None if find_s is None else round(find_s, 4),
        "load_average_1min": round(load, 2),
        "goal_s": 1.0,
        "meets_goal": max(new_times) <= 1.0,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    rows = rows if isinstance(rows, list) else [rows]
    RESULTS.write_text(json.dumps([*rows, row], indent=1) + "\n")
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()

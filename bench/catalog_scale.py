"""Benchmark (issue #18): a lab's whole history — register, sensor and backfill planning over 5,000 and 20,000 sessions.

For each size (``--sizes``, default 5000 20000) a fresh child process builds that many tiny SpikeGLX sessions laid
out as SpikeGLX writes them (``bench/sensor_tick.py``'s layout and meta: 2 folders, 6 files each), spread over 3 rigs
(3 landing roots) and 2 years of recording dates, on a real SQLite instance (``DAGSTER_HOME`` with the project's
``dagster.yaml``), a store and landing roots in a temporary folder, and times the real entry points in-process:

* ``ks-platform register`` (``ks_platform.cli.main(["register"])``): first call, then again with nothing new;
* one ``new_session_sensor`` tick as ``bench/sensor_tick.py`` calls it: the first (no cursor), then one with
  nothing new;
* ``ks-platform backfill --dry-run`` of a 1-month and of a 2-year range;
* edge cases: session 0 has no date source from the start (its meta lacks ``fileCreateTime``: reported on every
  call, never registered); after the runs above one session is deleted, one renamed and one re-dated (its meta's
  ``fileCreateTime`` corrected), then ``register`` and a sensor tick run again.

Each step records wall and CPU time (``time.process_time``, all threads), its peak RSS (``VmHWM`` after resetting it
through ``/proc/self/clear_refs``), the data-file traffic and ``rchar`` (``/proc/self/io``: bytes of every
``read()`` of the process: SQLite, metas, everything). Data-file traffic is counted exactly at the level where a
file can be opened at all: an audit hook (``sys.addaudithook``) counts every ``open`` event of a ``.bin`` path
(``open()``, ``io.open``, ``os.open``, numpy's ``fromfile``/``memmap`` all raise it) and every ``mmap`` of a ``.bin``
file descriptor. No opening and no mapping means 0 bytes read from data files; when there are openings, the sum of
the opened files' sizes is reported as ``bin_open_bytes`` (the bytes a whole read of each would cost; tiny files
here). The ratio 20k/5k of each step is reported (goal ≤ 4.4× for 4× the sessions).

    .venv/bin/python bench/catalog_scale.py --sizes 5000 20000

Results: ``bench/results/catalog_scale.json`` (one row per invocation, appended).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import inspect
import io
import json
import logging
import os
import platform as host_platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
from sensor_tick import N_AP, N_SAMPLES, tiny_meta  # noqa: E402  (bench/ is not a package)

RESULTS = BENCH / "results" / "catalog_scale.json"
RIGS = ("rig1", "rig2", "rig3")
FIRST_DATE = dt.date(2025, 1, 1)
SPAN_DAYS = 730  # two years
MONTH = (dt.date(2025, 6, 1), dt.date(2025, 6, 30))
TWO_YEARS = (FIRST_DATE, FIRST_DATE + dt.timedelta(days=SPAN_DAYS - 1))
GOAL_RATIO = 4.4


def session_date(index: int, n: int) -> dt.date:
    return FIRST_DATE + dt.timedelta(days=index * SPAN_DAYS // n)


def run_name(index: int) -> str:
    return f"m{index // 100:03d}_s{index:05d}_g0"


def write_session(root: Path, index: int, date: dt.date | None) -> Path:
    """One tiny SpikeGLX session (``bench/sensor_tick.py``'s layout); ``date=None``: no ``fileCreateTime``."""
    run = run_name(index)
    folder = root / run
    probe = folder / f"{run}_imec0"
    probe.mkdir(parents=True)
    data = os.urandom(N_SAMPLES * (N_AP + 1) * 2)
    meta = tiny_meta(len(data), date or FIRST_DATE)
    if date is None:
        meta = "".join(line for line in meta.splitlines(keepends=True) if not line.startswith("fileCreateTime="))
    (probe / f"{run}_t0.imec0.ap.bin").write_bytes(data)
    (probe / f"{run}_t0.imec0.ap.meta").write_text(meta)
    for name in (f"{run}_t0.imec0.lf.bin", f"{run}_t0.imec0.lf.meta"):
        (probe / name).touch()
    for name in (f"{run}_t0.nidq.bin", f"{run}_t0.nidq.meta"):
        (folder / name).touch()
    return folder


class Traffic:
    """Counts ``.bin`` openings and mappings while ``active`` (an audit hook cannot be removed, only muted)."""

    def __init__(self) -> None:
        self.active = False
        self.opens = 0
        self.open_bytes = 0
        self.mmaps = 0
        self.mmap_bytes = 0
        sys.addaudithook(self._hook)

    def reset(self) -> None:
        self.opens = self.open_bytes = self.mmaps = self.mmap_bytes = 0

    def _hook(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if path.endswith(".bin"):
                self.active = False  # the stat below must not recurse
                try:
                    self.opens += 1
                    self.open_bytes += os.stat(path).st_size
                except OSError:
                    pass
                finally:
                    self.active = True
        elif event == "mmap.__new__" and isinstance(args[0], int) and args[0] >= 0:
            self.active = False
            try:
                if os.readlink(f"/proc/self/fd/{args[0]}").endswith(".bin"):
                    self.mmaps += 1
                    self.mmap_bytes += args[1] or os.fstat(args[0]).st_size
            except OSError:
                pass
            finally:
                self.active = True


def rchar() -> int | None:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def measure(traffic: Traffic, name: str, call) -> tuple[dict, object]:
    """Run ``call()`` once and return its costs (and its result); stdout/stderr are captured, not printed."""
    reset_peak_rss()
    traffic.reset()
    out, err = io.StringIO(), io.StringIO()
    r0, c0, t0 = rchar(), time.process_time(), time.perf_counter()
    traffic.active = True
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            result = call()
        error = None
    except Exception as exc:  # noqa: BLE001 - a step that fails is recorded, the others still run
        result, error = None, f"{type(exc).__name__}: {exc}"
    finally:
        traffic.active = False
    wall, cpu, r1 = time.perf_counter() - t0, time.process_time() - c0, rchar()
    row = {
        "step": name,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "peak_rss_mb": peak_rss_mb(),
        "bin_opens": traffic.opens,
        "bin_open_bytes": traffic.open_bytes,
        "bin_mmaps": traffic.mmaps,
        "bin_mmap_bytes": traffic.mmap_bytes,
        "rchar_bytes": None if r0 is None or r1 is None else r1 - r0,
        "stdout_lines": len(out.getvalue().splitlines()),
        "stderr_lines": len(err.getvalue().splitlines()),
        "stderr_head": err.getvalue().splitlines()[:3],
        "error": error,
    }
    if isinstance(result, int) and not isinstance(result, bool):
        row["exit_status"] = result
    print(
        f"  {name:<28} wall {wall:8.3f} s  cpu {cpu:8.3f} s  peak RSS {row['peak_rss_mb']} MB  "
        f".bin opens {traffic.opens} mmaps {traffic.mmaps}" + (f"  ERROR {error}" if error else ""),
        flush=True,
    )
    return row, result


def make_sensor():
    """The landing sensor built as ``bench/sensor_tick.py`` builds it (keywords the current signature accepts)."""
    from ks_platform.defs.sensors import build_new_session_sensor

    wanted = {
        "settle_seconds": 120,
        "marker_name": "",
        "max_sessions_per_tick": None,
        "clock": lambda: time.time() + 3600,  # fresh folders count as settled
    }
    accepted = inspect.signature(build_new_session_sensor).parameters
    return build_new_session_sensor(**{k: v for k, v in wanted.items() if k in accepted})


def child(n: int, workdir: Path | None) -> dict:
    """Everything for one size, in this (fresh) process."""
    import dagster as dg

    from ks_platform.cli import main as cli
    from ks_platform.core.names import RETIRE_AFTER_ENV
    from ks_platform.defs.resources import PlatformResource

    os.environ[RETIRE_AFTER_ENV] = "0"  # the deleted session is retired by the next refresh, as before the grace time
    traffic = Traffic()
    with tempfile.TemporaryDirectory(dir=workdir, prefix=f"catalog_scale_{n}_") as tmp:
        tmp = Path(tmp)
        home, store = tmp / "dagster_home", tmp / "store"
        home.mkdir()
        store.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        roots = {rig: tmp / "landing" / rig for rig in RIGS}
        for root in roots.values():
            root.mkdir(parents=True)
        landing = ",".join(f"{rig}={root}" for rig, root in roots.items())
        os.environ.update(DAGSTER_HOME=str(home), KS_PLATFORM_STORE=str(store), KS_PLATFORM_LANDING=landing)
        os.environ.setdefault("KS_PLATFORM_BACKEND", "cpu")

        t0 = time.perf_counter()
        folders = {}
        for index in range(n):
            folders[index] = write_session(
                roots[RIGS[index % 3]], index, None if index == 0 else session_date(index, n)
            )
        create_s = time.perf_counter() - t0
        print(f"{n} sessions made in {create_s:.1f} s (session 0 without a date source)", flush=True)

        platform = PlatformResource(store_root=str(store), landing_roots=landing, backend="cpu")
        sensor = make_sensor()
        cursor: list[str | None] = [None]

        def tick() -> int:
            with dg.DagsterInstance.get() as instance:
                context = dg.build_sensor_context(instance=instance, cursor=cursor[0], resources={"platform": platform})
                context.log.setLevel(logging.WARNING)
                result = sensor(context)
            cursor[0] = result.cursor
            return len(result.run_requests or [])

        def backfill(span: tuple[dt.date, dt.date]):
            return lambda: cli(["backfill", "--dry-run", "--start", span[0].isoformat(), "--end", span[1].isoformat()])

        rows = []
        steps = [
            ("register first", lambda: cli(["register"])),
            ("register nothing new", lambda: cli(["register"])),
            ("sensor tick first", tick),
            ("sensor tick nothing new", tick),
            ("backfill dry-run 1 month", backfill(MONTH)),
            ("backfill dry-run 2 years", backfill(TWO_YEARS)),
        ]
        for name, call in steps:
            row, result = measure(traffic, name, call)
            if name.startswith("sensor"):
                row["run_requests"] = result
            rows.append(row)

        # Lifecycle edge cases: one deleted, one renamed, one re-dated (its meta's fileCreateTime corrected).
        shutil.rmtree(folders[1])
        renamed = folders[2].with_name(folders[2].name.replace("_g0", "_renamed_g0"))
        folders[2].rename(renamed)
        [meta] = folders[3].rglob("*.ap.meta")
        old = session_date(3, n)
        meta.write_text(meta.read_text().replace(f"fileCreateTime={old}", f"fileCreateTime={old - dt.timedelta(1)}"))
        for name, call in (
            ("register after 3 changes", lambda: cli(["register"])),
            ("sensor tick after 3 changes", tick),
        ):
            row, result = measure(traffic, name, call)
            if name.startswith("sensor"):
                row["run_requests"] = result
            rows.append(row)
        with dg.DagsterInstance.get() as instance:
            from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME

            partitions = len(instance.get_dynamic_partitions(SESSIONS_PARTITIONS_NAME))
        return {
            "sessions": n,
            "create_s": round(create_s, 1),
            "partitions_at_end": partitions,
            "process_peak_rss_mb": peak_rss_mb(),
            "steps": rows,
        }


def code_state() -> dict:
    """Which code was measured: the commit, whether the working tree differs, whether a session catalog exists."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    catalog = REPO / "ks_platform" / "core" / "catalog.py"
    register_src = REPO / "ks_platform" / "cli" / "pipeline_commands.py"
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
        "catalog_module_exists": catalog.is_file(),
        "register_uses_catalog": register_src.is_file() and "catalog" in register_src.read_text(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary sessions go")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-save", action="store_true", help="print only, do not append to the results file")
    args = parser.parse_args()
    if args.child is not None:
        args.child_out.write_text(json.dumps(child(args.child, args.workdir)))
        return

    sizes = []
    for n in args.sizes:
        print(f"== {n} sessions", flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [sys.executable, __file__, "--child", str(n), "--child-out", out.name]
            subprocess.run(command + (["--workdir", str(args.workdir)] if args.workdir else []), check=True)
            sizes.append(json.loads(Path(out.name).read_text()))
    ratios = {}
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        scale = large["sessions"] / small["sessions"]
        for a, b in zip(small["steps"], large["steps"]):
            ratios[a["step"]] = {
                key: round(b[key] / a[key], 2) if a[key] else None for key in ("wall_s", "cpu_s", "peak_rss_mb")
            }
        goal = round(GOAL_RATIO * scale / 4, 2)
        print(f"ratio {large['sessions']}/{small['sessions']} ({scale:g}x sessions; goal <= {goal}x):")
        for step, values in ratios.items():
            print(f"  {step:<28} wall {values['wall_s']}x  cpu {values['cpu_s']}x  peak RSS {values['peak_rss_mb']}x")
    row = {
        "command": "python bench/catalog_scale.py --sizes " + " ".join(map(str, args.sizes)),
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": {
            "nproc": os.cpu_count(),
            "python": host_platform.python_version(),
            "kernel": host_platform.release(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "code_state": code_state(),
        "layout": "tiny SpikeGLX sessions (bench/sensor_tick.py), 3 landing roots, dates over 2 years",
        "bytes_read_method": "audit hook: .bin open/mmap events; rchar from /proc/self/io (all reads)",
        "sizes": sizes,
        "ratios_last_over_first": ratios,
        "goal_ratio_for_4x": GOAL_RATIO,
    }
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
        RESULTS.write_text(json.dumps([*rows, row], indent=1) + "\n")
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()

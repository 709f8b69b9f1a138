"""Benchmark (issue #24): one scan per step — how often discovery opens each file, and conversion speed, against
an earlier commit measured in the same run.

Part 1, discovery: writes ``--sessions`` small but valid SpikeGLX sessions (two gates of one probe each, every
tenth with a ``ks_session.json``), then calls ``ks_platform.core.discovery.discover`` (what ``register``, the
catalog and the sensor use to read a new folder) once over the landing root. An audit hook counts every ``open``
of a file under the root: header files (``.meta``, ``ks_session.json``) and data files (``.bin``). Goal: each header
file opened once.

Part 2, conversion: a two-gate SpikeGLX recording of ``--gb`` GB (385 channels; forced copy, so the multi-file
reader runs), converted by ``write_recording_binary`` from a cold page cache, alternating this code and the
baseline commit's, ``--repeats`` times each; MB/s and the ratio this/baseline per pair. Goal: ratio ≥ 0.95.

Both parts run each code in a fresh child process; the baseline runs from a ``git worktree`` of ``--baseline``
(default: the commit before #24's first change).

    .venv/bin/python bench/discovery_reads.py --sessions 2000 --gb 1 --repeats 3
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "discovery_reads.json"
BASELINE = "e39e261"  # the last commit before issue #24's work


def write_sessions(root: Path, n: int) -> None:
    from ks_platform.core.synthetic import GlxProbe, write_spikeglx_run

    for index in range(n):
        folder = root / f"m{index // 100:03d}_s{index:05d}"
        date = dt.date(2026, 1, 1) + dt.timedelta(days=index % 365)
        write_spikeglx_run(folder, (GlxProbe(saved_ap=(0, 1, 2, 3)),), gates=(0, 1), n_samples=20, date=date)
        if index % 10 == 0:
            (folder / "ks_session.json").write_text('{"kilosort": {"Th_universal": 9}}\n')


def discovery_child(root: Path) -> dict:
    """In this process: discover every session under ``root`` once, counting opens per file."""
    from ks_platform.core.discovery import discover

    opens: collections.Counter[str] = collections.Counter()
    prefix = str(root)
    active = [False]

    def hook(event: str, args: tuple) -> None:
        if active[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if path.startswith(prefix):
                opens[path] += 1

    sys.addaudithook(hook)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    active[0] = True
    found, rejected = discover({"rig1": root})
    active[0] = False
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    headers = {p: n for p, n in opens.items() if p.endswith((".meta", "ks_session.json"))}
    data = {p: n for p, n in opens.items() if p.endswith(".bin")}
    expected = [str(p) for p in root.rglob("*.meta")] + [str(p) for p in root.rglob("ks_session.json")]
    return {
        "partitions": len(found),
        "rejected": len(rejected),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "header_files": len(expected),
        "header_files_opened": len(headers),
        "header_opens": sum(headers.values()),
        "header_opens_max": max(headers.values(), default=0),
        "header_opens_histogram": dict(collections.Counter(headers.values())),
        "data_files_opened": len(data),
        "data_opens": sum(data.values()),
        "data_opens_max": max(data.values(), default=0),
    }


def conversion_child(session: Path, out: Path) -> dict:
    """In this process: convert ``session`` (forced copy) from a cold page cache; seconds and MB/s."""
    from ks_platform.core.conversion import write_recording_binary
    from ks_platform.core.formats import open_recording

    source = open_recording(session)
    for path in source.data_files:
        with open(path, "rb") as handle:  # on disk, then out of the page cache: a cold read
            os.fsync(handle.fileno())
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    started = time.perf_counter()
    binary = write_recording_binary(source, out, allow_zero_copy=False)
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in source.data_files if p.suffix == ".bin")
    return {"seconds": round(seconds, 3), "mb_s": round(size / 1e6 / seconds, 1), "checksum": binary.checksum}


def run_child(code: Path, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "discovery_reads.py"), "--child", *args],
        env=env,
        cwd=code,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"child failed ({code}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_conversion_source(folder: Path, gb: float) -> None:
    """Two gates of a 385-channel NP1.0 probe, ``gb`` GB together, written chunk by chunk."""
    import numpy as np

    from ks_platform.core.synthetic import GlxProbe, spikeglx_run_meta

    probe = GlxProbe()
    frames = int(gb * 1e9 / 2 / 385 / 2)
    rng = np.random.default_rng(0)
    block = rng.integers(-500, 500, (30_000, 385), dtype=np.int16)
    for gate in (0, 1):
        name = f"run_g{gate}_t0.imec0.ap.bin"
        path = folder / f"run_g{gate}" / f"run_g{gate}_imec0" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            for start in range(0, frames, len(block)):
                handle.write(block[: min(len(block), frames - start)].tobytes())
        meta = spikeglx_run_meta(probe, frames, 30000.0, dt.date(2026, 3, 2), name, gate * frames)
        path.with_suffix(".meta").write_text(meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--parts", nargs="+", choices=("discovery", "conversion"), default=["discovery", "conversion"])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        row = discovery_child(Path(rest[0])) if kind == "discover" else conversion_child(Path(rest[0]), Path(rest[1]))
        print(json.dumps(row))
        return

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        baseline = work / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline], cwd=REPO, check=True)
        try:
            codes = {"this": REPO, "baseline": baseline}
            discovery: dict = {}
            if "discovery" in args.parts:
                print(f"writing {args.sessions} sessions …", flush=True)
                landing = work / "landing"
                write_sessions(landing, args.sessions)
                discovery = {name: run_child(code, "discover", str(landing)) for name, code in codes.items()}
                for name, row in discovery.items():
                    print(f"discovery [{name}]: {row}", flush=True)
            session = work / "conversion"
            pairs = []
            if "conversion" in args.parts:
                write_conversion_source(session, args.gb)
                subprocess.run(["sync"], check=True)
            for repeat in range(args.repeats if "conversion" in args.parts else 0):
                order = list(codes) if repeat % 2 == 0 else list(reversed(codes))
                pair = {}
                for name in order:
                    out = work / f"out_{name}_{repeat}"
                    subprocess.run(["sync"], check=True)
                    time.sleep(1.0)
                    pair[name] = run_child(codes[name], "convert", str(session), str(out))
                    subprocess.run(["rm", "-rf", str(out)], check=True)
                pair["ratio"] = round(pair["this"]["mb_s"] / pair["baseline"]["mb_s"], 3)
                pair["same_binary"] = pair["this"]["checksum"] == pair["baseline"]["checksum"]
                print(f"conversion repeat {repeat}: {pair}", flush=True)
                pairs.append(pair)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=REPO, check=False)
    row = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {os.cpu_count()} cpu",
        "load": os.getloadavg(),
        "baseline": args.baseline,
        "sessions": args.sessions,
        "discovery": discovery,
        "conversion_gb": args.gb,
        "conversion": pairs,
        "conversion_ratio_median": statistics.median(p["ratio"] for p in pairs) if pairs else None,
        "conversion_mb_s_median": {
            name: statistics.median(p[name]["mb_s"] for p in pairs) for name in ("this", "baseline") if pairs
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.write_text(json.dumps([*rows, row], indent=1) + "\n")
    print(json.dumps({k: row[k] for k in ("discovery", "conversion_ratio_median", "conversion_mb_s_median")}, indent=1))


if __name__ == "__main__":
    main()

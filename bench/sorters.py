"""Benchmark (issue #29): every sorter on the same synthetic sessions, in one run: well-detected units and time.

For each shape (channels × seconds) one SpikeGLX session with ground truth is written, taken through the platform's
own steps once (observe, probe map, binary), then sorted by each sorter through ``pipeline.run_sorter_into`` (the
path ``sorted_units`` and ``compared_sortings`` take: Kilosort 4 natively, the others through SpikeInterface), each
with its defaults (``--no-motion-correction``: Kilosort 4's ``nblocks`` 0 and SpykingCircus2's motion correction off;
the synthetic sessions do not drift, and Kilosort's drift pass is half of a CPU sort). Each sorting is scored against the ground truth (accuracy ≥ 0.8)
and every sorting is compared with Kilosort 4's (``core/agreement.py``). CPU, one process, sorters one after the
other. Rows are appended to bench/results/sorters.json.

    .venv/bin/python bench/sorters.py [--shapes 32x15,384x5] [--sorters kilosort4,spykingcircus2,...] [--no-motion-correction]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path

from ks_platform.core import pipeline
from ks_platform.core.agreement import compare_pair, ground_truth_scores, load_sorting
from ks_platform.core.conversion import load_recording_binary
from ks_platform.core.formats import scan_session
from ks_platform.core.lineage import git_commit, package_versions
from ks_platform.core.sorters import SORTERS, sorter_version
from ks_platform.core.store import SessionStore
from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session

RESULTS = Path(__file__).parent / "results" / "sorters.json"


#: ``--no-motion-correction``: the session config that turns every sorter's drift/motion correction off.
NO_MOTION_CORRECTION = {"kilosort": {"nblocks": 0}, "spykingcircus2": {"apply_motion_correction": False}}


def run_shape(
    channels: int, seconds: float, units: int, names: list[str], work: Path, config: dict | None = None
) -> list[dict]:
    spec = DemoSessionSpec(duration_s=seconds, n_channels=channels, n_units=units, seed=42)
    folder = make_spikeglx_session(work / f"session_{channels}ch", spec)
    if config:
        (folder / "ks_session.json").write_text(json.dumps(config))
    scan = scan_session(folder)
    store = SessionStore.in_folder(work / f"out_{channels}ch")
    pipeline.observe_raw_recording(scan, store)
    pipeline.build_probe_map(scan, store)
    pipeline.build_recording_binary(scan, store)
    inputs = pipeline._checked_inputs(scan, store, None)
    probe_config = scan.probe_config(None)
    truth = folder / "ground_truth.json"
    rows, folders = [], {}
    for name in names:
        output = store.compared_sorting_dir(name)
        started = time.perf_counter()
        result = pipeline.run_sorter_into(name, scan, store, output, inputs, probe_config, backend="cpu")
        wall = time.perf_counter() - started
        folders[name] = output
        score = ground_truth_scores(store, {name: output}, truth, spec.sampling_frequency)[name]
        row = {
            "sorter": name,
            "version": sorter_version(name),
            "channels": channels,
            "seconds": seconds,
            "gt_units": units,
            "units_found": result.n_units,
            "well_detected": score["well_detected_units"],
            "sort_wall_s": round(wall, 1),
            "motion_correction": config is None,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    if "kilosort4" in folders:
        fs = load_recording_binary(store.binary_dir).sampling_frequency
        sortings = {name: load_sorting(path, fs) for name, path in folders.items()}
        for row in rows:
            if row["sorter"] != "kilosort4":
                pair, _ = compare_pair("kilosort4", row["sorter"], sortings)
                row["matched_with_kilosort4"] = pair["matched"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="32x15,384x5", help="channels x seconds, comma-separated")
    parser.add_argument("--sorters", default=",".join(SORTERS))
    parser.add_argument("--units", type=int, default=10, help="ground-truth units (at least; 384 ch: 60)")
    parser.add_argument("--no-motion-correction", action="store_true", help="drift/motion correction off for all")
    args = parser.parse_args()
    names = args.sorters.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            channels, seconds = shape.split("x")
            units = max(args.units, args.units * int(channels) // 64)
            config = NO_MOTION_CORRECTION if args.no_motion_correction else None
            rows += run_shape(int(channels), float(seconds), units, names, Path(tmp), config)
    record = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "commit": git_commit(),
        "versions": package_versions(),
        "rows": rows,
    }
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.write_text(json.dumps([*previous, record], indent=1) + "\n")
    print(f"appended {len(rows)} rows to {RESULTS}")


if __name__ == "__main__":
    main()

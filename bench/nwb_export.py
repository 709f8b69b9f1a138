"""Benchmark: writing a large sorting's Units table to NWB, ours against the usual ways, in one run.

A synthetic sorting (default 600 units, 10 million spikes, 30 kHz, ~1 h; Poisson-like times, unit sizes spread
over two orders of magnitude) is saved as ``spike_times.npy`` / ``spike_clusters.npy``. Each writer then runs in its
own child process, so its peak RSS (``ru_maxrss`` of that child)
is its own (``os.wait4`` returns that child's rusage); an ``imports`` child (the same imports, no writing) gives the floor to compare with:

* ``ours``     - ``nwb_export.write_units_nwb``: memory-mapped inputs, one ``lexsort`` index, spike times streamed
  through an hdmf ``GenericDataChunkIterator`` (1 M spikes a chunk, gzip 4), plus what a versioned export adds: the
  content identifier (a hash of the spike trains and tables) and the file's sha256 for ``nwb/versions.json``;
* ``neuroconv`` - SpikeInterface ``NumpySorting`` → neuroconv ``write_sorting_to_nwbfile`` (its default backend configuration);
* ``add_unit`` - pynwb ``nwbfile.add_unit(spike_times=…)`` per unit, times grouped with one argsort (the plain
  pynwb loop, not the quadratic mask-per-unit variant).

Each file is read back (the number of spikes in ``units/spike_times`` must equal the sorting's).

``--probes 2`` makes a two-probe session of the same totals (each probe half the units and spikes, its own sorting):
each writer then writes one file per probe, one probe after the other in one child, as ``units_nwb`` does per
partition (``add_unit`` is left out there).

    .venv/bin/python bench/nwb_export.py --units 600 --spikes 10000000 [--probes 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FS = 30000.0
START = dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.timezone.utc)
METHODS = ("imports", "ours", "neuroconv", "add_unit")


def make_sorting(folder: Path, n_units: int, n_spikes: int, seed: int = 0) -> None:
    """Spike samples (sorted, int64) and clusters (int32) of a synthetic sorting, as Kilosort saves them."""
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 1.2, n_units)
    clusters = rng.choice(n_units, size=n_spikes, p=weights / weights.sum()).astype(np.int32)
    samples = np.sort(rng.integers(0, int(FS * 3600), n_spikes, dtype=np.int64))
    np.save(folder / "spike_times.npy", samples)
    np.save(folder / "spike_clusters.npy", clusters)


def _imports() -> None:
    import pandas  # noqa: F401
    import pynwb  # noqa: F401

    from ks_platform.core import nwb_export  # noqa: F401


def _electrodes():
    import pandas as pd

    return pd.DataFrame(
        {
            "x_um": np.tile([0.0, 32.0], 192),
            "y_um": np.repeat(np.arange(192) * 20.0, 2),
            "shank": 0,
            "channel": np.arange(384),
        }
    )


def write_ours(folder: Path, out: Path) -> None:
    from ks_platform.core import nwb_export

    source = nwb_export.UnitsSource(
        spike_samples=np.load(folder / "spike_times.npy", mmap_mode="r"),
        spike_clusters=np.load(folder / "spike_clusters.npy", mmap_mode="r"),
        sampling_frequency=FS,
        session_start_time=START,
        identifier="bench-ours",
        session_id="bench",
        electrodes=_electrodes(),
        device={"name": "probe", "description": "synthetic 384 channels", "manufacturer": "none"},
    )
    source.identifier = nwb_export.content_identifier(source, "bench")
    nwb_export.write_units_nwb(source, out)
    nwb_export.file_sha256(out)


def write_neuroconv(folder: Path, out: Path) -> None:
    from neuroconv.tools.spikeinterface import write_sorting_to_nwbfile
    from spikeinterface.core import NumpySorting

    sorting = NumpySorting.from_samples_and_labels(
        [np.load(folder / "spike_times.npy")], [np.load(folder / "spike_clusters.npy")], FS
    )
    metadata = {
        "NWBFile": {"session_description": "bench", "identifier": "bench-neuroconv", "session_start_time": START}
    }
    write_sorting_to_nwbfile(sorting=sorting, nwbfile_path=out, metadata=metadata, overwrite=True)


def write_add_unit(folder: Path, out: Path) -> None:
    from pynwb import NWBHDF5IO, NWBFile

    samples, clusters = np.load(folder / "spike_times.npy"), np.load(folder / "spike_clusters.npy")
    order = np.argsort(clusters, kind="stable")
    ids, starts = np.unique(clusters[order], return_index=True)
    bounds = [*starts[1:], order.size]
    nwbfile = NWBFile(session_description="bench", identifier="bench-add-unit", session_start_time=START)
    for unit, start, end in zip(ids, starts, bounds):
        nwbfile.add_unit(spike_times=samples[order[start:end]] / FS, id=int(unit))
    with NWBHDF5IO(str(out), "w") as io:
        io.write(nwbfile)


def probe_folders(folder: Path) -> list[Path]:
    """The session's probe folders (``probe0``, ``probe1``, …), each holding one sorting."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("probe"))


def child(method: str, folder: Path) -> None:
    _imports()
    start = time.perf_counter()
    if method != "imports":
        for probe in probe_folders(folder):
            {"ours": write_ours, "neuroconv": write_neuroconv, "add_unit": write_add_unit}[method](
                probe, probe / f"{method}.nwb"
            )
    print(json.dumps({"seconds": time.perf_counter() - start}))


def measure(method: str, folder: Path) -> dict:
    """Run one writer in a fresh child; its wall time, peak RSS (``os.wait4``: that child's own rusage) and the
    spikes found in the files it wrote (one per probe)."""
    import h5py

    log = folder / f"{method}.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", method, "--folder", str(folder)],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(proc.pid, 0)
    lines = log.read_text().strip().splitlines()
    if os.waitstatus_to_exitcode(status) != 0:
        return {"method": method, "error": lines[-1] if lines else f"status {status}"}
    result = {
        "method": method,
        "seconds": round(json.loads(lines[-1])["seconds"], 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }
    outs = [p / f"{method}.nwb" for p in probe_folders(folder) if (p / f"{method}.nwb").exists()]
    if outs:
        spikes = 0
        for out in outs:
            with h5py.File(out, "r") as handle:
                spikes += int(handle["units/spike_times"].shape[0])
        result["spikes_in_files"] = spikes
        result["files"] = len(outs)
        result["file_mib"] = round(sum(out.stat().st_size for out in outs) / 2**20, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=600)
    parser.add_argument("--spikes", type=int, default=10_000_000)
    parser.add_argument("--probes", type=int, default=1, help="split the session over this many probes")
    parser.add_argument("--child", choices=METHODS)
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--out", type=Path, help="write the results JSON here too")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.folder)
    methods = METHODS if args.probes == 1 else tuple(m for m in METHODS if m != "add_unit")
    with tempfile.TemporaryDirectory(prefix="nwb_export_bench_") as tmp:
        folder = Path(tmp)
        for probe in range(args.probes):
            (folder / f"probe{probe}").mkdir()
            make_sorting(folder / f"probe{probe}", args.units // args.probes, args.spikes // args.probes, seed=probe)
        results = [measure(method, folder) for method in methods]
    by = {r["method"]: r for r in results}
    ratios = {
        f"{m}/ours": {
            "time": round(by[m]["seconds"] / by["ours"]["seconds"], 2),
            "peak_rss": round(by[m]["peak_rss_mib"] / by["ours"]["peak_rss_mib"], 2),
        }
        for m in ("neuroconv", "add_unit")
        if "seconds" in by.get(m, {})
    }
    report = {
        "units": args.units,
        "spikes": args.spikes,
        "probes": args.probes,
        "machine": f"{os.cpu_count()} cpus, {platform.machine()}",
        "results": results,
        "ratios": ratios,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

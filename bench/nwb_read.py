"""Benchmark: reading a gzip-chunked NWB ElectricalSeries, ours against SpikeInterface, in one run.

The file is written the way neuroconv writes a recording (``write_recording_to_nwbfile``: its default HDF5 backend
configuration, gzip level 4 and ~10 MB chunks of at most 64 channels) from SpikeInterface's noise generator
(int16, 384 channels, noise of ~20 bits as on a Neuropixels 1.0 AP band). Without neuroconv it is written with
pynwb and the same gzip/chunk settings. Then, back to back in this process, with the file already in the page cache
(read once with ``cat`` before each pass):

* ``ours`` - ``nwb.open_recording`` and every ``read_chunk`` in the block the converter uses
  (``conversion._chunk_samples``: 1 MiB of the wider frame, 1365 samples for 384 int16 channels);
* ``si``   - ``spikeinterface.extractors.read_nwb_recording`` and ``get_traces`` in 1 s chunks (SpikeInterface's
  default ``chunk_duration``), raw int16.

Both read every sample once; a checksum of the samples is compared so neither can skip work. With ``--convert``
the full conversion (``write_recording_binary``: read, xxh3, write and fsync of the int16 binary) is timed too.

    .venv/bin/python bench/nwb_read.py --seconds 60
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
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

START = dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.timezone.utc)
SERIES = "ElectricalSeriesRaw"


def _recording(seconds: float, channels: int, fs: float):
    from probeinterface import generate_linear_probe
    from spikeinterface.core.generate import NoiseGeneratorRecording

    recording = NoiseGeneratorRecording(
        num_channels=channels,
        sampling_frequency=fs,
        durations=[seconds],
        noise_levels=20.0,
        dtype="float32",
        seed=1,
        strategy="tile_pregenerated",
    ).astype("int16")
    probe = generate_linear_probe(num_elec=channels, ypitch=20)
    probe.set_device_channel_indices(np.arange(channels))
    recording = recording.set_probe(probe) or recording
    recording.set_channel_gains(2.34375)
    recording.set_channel_offsets(0.0)
    return recording


def write_file(path: Path, seconds: float, channels: int, fs: float) -> str:
    """Write the benchmark NWB at ``path``; return how it was written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    recording = _recording(seconds, channels, fs)
    metadata = {
        "NWBFile": {
            "session_description": "nwb read benchmark",
            "identifier": "nwb-read-bench",
            "session_start_time": START,
        }
    }
    try:
        from neuroconv.tools.spikeinterface import write_recording_to_nwbfile
    except ImportError:
        return _write_with_pynwb(path, recording, metadata)
    write_recording_to_nwbfile(recording, nwbfile_path=path, metadata=metadata, overwrite=True)
    return "neuroconv write_recording_to_nwbfile (defaults)"


def _write_with_pynwb(path: Path, recording, metadata: dict) -> str:
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from hdmf.data_utils import GenericDataChunkIterator
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import ElectricalSeries

    n, channels = recording.get_num_samples(), recording.get_num_channels()
    chunk = (max(1, 10_000_000 // (2 * min(64, channels))), min(64, channels))  # neuroconv's ~10 MB chunks

    class Traces(GenericDataChunkIterator):
        def _get_data(self, selection):
            return recording.get_traces(start_frame=selection[0].start, end_frame=selection[0].stop)[:, selection[1]]

        def _get_maxshape(self):
            return (n, channels)

        def _get_dtype(self):
            return np.dtype("int16")

    nwbfile = NWBFile(**metadata["NWBFile"])
    device = nwbfile.create_device(name="probe")
    group = nwbfile.create_electrode_group(name="0", description="", location="unknown", device=device)
    for x, y in recording.get_channel_locations():
        nwbfile.add_electrode(group=group, location="unknown", rel_x=float(x), rel_y=float(y))
    region = nwbfile.create_electrode_table_region(list(range(channels)), "all")
    data = H5DataIO(
        Traces(buffer_shape=(chunk[0], channels), chunk_shape=chunk, display_progress=False),
        compression="gzip",
        compression_opts=4,
    )
    nwbfile.add_acquisition(
        ElectricalSeries(
            name=SERIES, data=data, electrodes=region, rate=recording.get_sampling_frequency(), conversion=2.34375e-6
        )
    )
    with NWBHDF5IO(str(path), mode="w") as io:
        io.write(nwbfile)
    return "pynwb, gzip 4, neuroconv-sized chunks (neuroconv not installed)"


def _warm(path: Path) -> None:
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)


def time_ours(folder: Path) -> tuple[float, int, int]:
    from ks_platform.core.conversion import _chunk_samples
    from ks_platform.core.formats import nwb

    started = time.perf_counter()
    source = nwb.open_recording(folder)
    step = _chunk_samples(source)
    total = 0
    for start in range(0, source.n_samples, step):
        block = source.read_chunk(start, min(start + step, source.n_samples))
        total += _strided_sum(block, start)
    return time.perf_counter() - started, step, total


def time_conversion(folder: Path, out: Path) -> float:
    import shutil

    from ks_platform.core.conversion import write_recording_binary
    from ks_platform.core.formats import nwb

    started = time.perf_counter()
    write_recording_binary(nwb.open_recording(folder), out)
    seconds = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def time_spikeinterface(path: Path) -> tuple[float, int, int]:
    from spikeinterface.extractors import read_nwb_recording

    started = time.perf_counter()
    recording = read_nwb_recording(path, electrical_series_path=f"acquisition/{SERIES}")
    step = int(recording.get_sampling_frequency())  # chunk_duration="1s"
    total, n = 0, recording.get_num_samples()
    for start in range(0, n, step):
        traces = recording.get_traces(start_frame=start, end_frame=min(start + step, n), return_in_uV=False)
        total += _strided_sum(traces, start)
    return time.perf_counter() - started, step, total


def _strided_sum(traces: np.ndarray, start: int) -> int:
    """Sum of every 97th frame (counted from the file's start) and every 7th channel: a checksum both paths share."""
    first = (-start) % 97
    return int(traces[first::97, ::7].sum(dtype=np.int64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--fs", type=float, default=30000.0)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the file (default: a temp dir in /tmp)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--convert", action="store_true", help="also time write_recording_binary (the whole conversion)"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "nwb_read.json")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    base = args.dir or Path(tempfile.mkdtemp(prefix="nwb_read_"))
    path = base / "session" / "bench.nwb"
    started = time.perf_counter()
    how = write_file(path, args.seconds, args.channels, args.fs)
    write_s = time.perf_counter() - started
    import h5py

    with h5py.File(path) as handle:
        data = handle[f"acquisition/{SERIES}/data"]
        layout = f"{data.dtype} {data.shape}, chunks {data.chunks}, {data.compression} {data.compression_opts}"
    size_mb = path.stat().st_size / 1e6
    print(f"file: {path} ({size_mb:.0f} MB; {layout}; {how}; written in {write_s:.1f} s)")
    rows = []
    for repeat in range(args.repeats):
        order = ("ours", "si") if repeat % 2 == 0 else ("si", "ours")
        times = {}
        for who in order:
            _warm(path)
            seconds, step, checksum = time_ours(path.parent) if who == "ours" else time_spikeinterface(path)
            times[who] = (seconds, step, checksum)
        assert times["ours"][2] == times["si"][2], f"checksums differ: {times['ours'][2]} vs {times['si'][2]}"
        row = {"ours_s": times["ours"][0], "si_s": times["si"][0], "ours_block": times["ours"][1]}
        row["si_block"] = times["si"][1]
        if args.convert:
            _warm(path)
            row["convert_s"] = time_conversion(path.parent, base / "binary")
        rows.append(row)
    print()
    print(
        "| run | data | ours (read_chunk, block) | SpikeInterface (get_traces, block) | ours / SI | our whole "
        "conversion |"
    )
    print("|---|---|---|---|---|---|")
    for i, row in enumerate(rows):
        data = f"{args.seconds:g} s x {args.channels} ch int16, {size_mb:.0f} MB gzip"
        ours = f"{row['ours_s']:.1f} s ({row['ours_block']} samples)"
        si = f"{row['si_s']:.1f} s ({row['si_block']} samples)"
        convert = f"{row['convert_s']:.1f} s" if "convert_s" in row else "-"
        print(f"| {i + 1} | {data} | {ours} | {si} | {row['ours_s'] / row['si_s']:.2f} | {convert} |")
    record = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, {platform.platform()}",
        "seconds": args.seconds,
        "channels": args.channels,
        "file_mb": round(size_mb, 1),
        "layout": layout,
        "written_by": how,
        "runs": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(args.json.read_text()) if args.json.exists() else []
    args.json.write_text(json.dumps(existing + [record], indent=2) + "\n")
    if args.dir is None:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Cost of the NWB range pass (every sample checked before the first read), against the conversion of the same file
in the same run.

    .venv/bin/python bench/nwb_range_pass.py --gb 2 --repeats 2

Writes a float32 volts NWB (``writers.write_nwb_session``: 384 channels at 30 kHz, uncompressed, chunks of 30000
samples x all channels) of about ``--gb`` GB, larger than the bounded scan at open (``nwb.SCAN_BYTES``), so the pass
runs. Then, per repeat, with the file in the page cache (read once before each timed step):

* ``open``: ``formats.open_recording`` (header, geometry and the bounded scan that picks the step);
* ``pass``: the range pass alone (the first ``read_chunk`` runs it; a 0-sample read returns nothing else);
* ``convert``: ``write_recording_binary`` of the same source, whose pass is then done: the conversion baseline.

Prints one JSON line per repeat and a summary (s/GB of the pass, pass / convert).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ks_platform.core import formats
from ks_platform.core.conversion import write_recording_binary
from ks_platform.core.formats import nwb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: the tests' writers

from ks_platform_tests.formats import synthetic as syn  # noqa: E402
from ks_platform_tests.writers import write_nwb_session  # noqa: E402

CHANNELS = 384
FS = 30000.0


def write_file(folder: Path, gb: float) -> Path:
    """A float32 NWB of about ``gb`` GB of samples (noise of ~80 bits tiled from one second)."""
    n_samples = int(gb * 1e9 / (CHANNELS * 4))
    one_second = np.random.default_rng(1).normal(0, 80, (int(FS), CHANNELS)).astype(np.int16)
    traces = np.lib.format.open_memmap(folder / "traces.npy", mode="w+", dtype=np.int16, shape=(n_samples, CHANNELS))
    for start in range(0, n_samples, len(one_second)):
        stop = min(start + len(one_second), n_samples)
        traces[start:stop] = one_second[: stop - start]
    positions = np.column_stack([np.zeros(CHANNELS), np.arange(CHANNELS) * 20.0])
    session = write_nwb_session(folder / "session", traces, FS, positions, syn.DATE, as_float=True)
    del traces
    (folder / "traces.npy").unlink()
    return session


def _warm(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(64 * 1024 * 1024):
            pass


def one_repeat(session: Path, out: Path) -> dict[str, float]:
    nwb._SCAN_CACHE.clear()  # a fresh process would not have it either
    file = session / "session.nwb"
    _warm(file)
    started = time.perf_counter()
    source = formats.open_recording(session)
    opened = time.perf_counter() - started
    assert "range-checked before the first read" in source.scaling_note, source.scaling_note
    _warm(file)
    started = time.perf_counter()
    source.read_chunk(0, 0)
    checked = time.perf_counter() - started
    _warm(file)
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    write_recording_binary(source, out)
    converted = time.perf_counter() - started
    gb = file.stat().st_size / 1e9
    return {
        "file_gb": round(gb, 3),
        "open_s": round(opened, 2),
        "pass_s": round(checked, 2),
        "convert_s": round(converted, 2),
        "pass_s_per_gb": round(checked / gb, 3),
        "pass_over_convert": round(checked / converted, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the file (default: a temp dir)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(dir=args.dir, prefix="nwb_range_pass_"))
    try:
        session = write_file(base, args.gb)
        rows = [one_repeat(session, base / "binary") for _ in range(args.repeats)]
        for row in rows:
            print(json.dumps(row))
        median = {key: float(np.median([row[key] for row in rows])) for key in rows[0]}
        print(json.dumps({"machine": f"{platform.machine()} {platform.node()}", "median": median}))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

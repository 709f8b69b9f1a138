"""What the fault tests share (test_faults.py, test_faults_instance.py): a watcher for incomplete output under a
final name, byte-for-byte comparisons of output folders, and a raw session big enough that converting it takes a
visible moment."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from ks_platform.core import conversion
from ks_platform.core.names import BOMBCELL_TSV, PROBE_MANIFEST, SUMMARY_FILE, TRACK_ID_TSV
from ks_platform.core.synthetic import np1_probe

#: What makes each step's final folder complete; a final folder without it would be a partial output.
COMPLETE_MARKERS = {
    "binary": conversion.MANIFEST_NAME,
    "sorting": SUMMARY_FILE,
    "phy": "params.py",
    "probe": PROBE_MANIFEST,
}


class FinalNameWatcher(threading.Thread):
    """Samples the session's final output folders while a worker runs; records any seen incomplete."""

    def __init__(self, session_dir: Path) -> None:
        super().__init__(daemon=True)
        self.session_dir = session_dir
        self.partial_seen: list[str] = []
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for step, marker in COMPLETE_MARKERS.items():
                folder = self.session_dir / step
                try:
                    present = folder.is_dir()
                    complete = (folder / marker).exists()
                except OSError:
                    continue
                # Re-check: the folder may have been swapped between the two stats.
                if present and not complete and folder.is_dir() and not (folder / marker).exists():
                    self.partial_seen.append(step)
            self.samples += 1
            time.sleep(0.002)

    def stop(self) -> None:
        self._halt.set()
        self.join()


#: Files unit_labels adds to a Phy folder after phy_bundle (the shared reference ran it, a bare phy_bundle does not).
AFTER_SORT_PHY_COLUMNS = (BOMBCELL_TSV, TRACK_ID_TSV)
#: Lineage fields that differ between two runs of one sort: the Dagster run and wall-clock timings.
RUN_DEPENDENT_LINEAGE = ("dagster_run_id", "sort_seconds", "stage_seconds")


def lineage_of_the_sort(path: Path) -> dict:
    """``lineage.json`` without the fields that name the run or time it (each attempt's ``seconds`` included)."""
    lineage = {k: v for k, v in json.loads(path.read_text()).items() if k not in RUN_DEPENDENT_LINEAGE}
    lineage["attempts"] = [{k: v for k, v in a.items() if k != "seconds"} for a in lineage.get("attempts", [])]
    return lineage


def same_phy_folder(a: Path, b: Path) -> list[str]:
    """Files that differ between two Phy folders made from the same sort, lineage compared without its timings."""
    differ = same_bytes(a, b, skip=(*AFTER_SORT_PHY_COLUMNS, "lineage.json"))
    if lineage_of_the_sort(a / "lineage.json") != lineage_of_the_sort(b / "lineage.json"):
        differ.append("lineage.json")
    return differ


def same_bytes(a: Path, b: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Names of files that differ between folders ``a`` and ``b`` (missing counts as different)."""
    names = {p.name for p in a.iterdir() if p.is_file()} | {p.name for p in b.iterdir() if p.is_file()}
    return sorted(
        n
        for n in names - set(skip)
        if not ((a / n).is_file() and (b / n).is_file() and (a / n).read_bytes() == (b / n).read_bytes())
    )


def write_raw_int16_session(folder: Path, seconds: float, n_channels: int = 64, fs: float = 30000.0) -> Path:
    """A plain int16 binary + sidecar + probe, big enough that converting it takes a visible moment."""
    import probeinterface as pi

    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    n_samples = int(seconds * fs)
    with open(folder / "recording.bin", "wb") as handle:
        for start in range(0, n_samples, 300_000):
            handle.write(
                rng.integers(-300, 300, size=(min(300_000, n_samples - start), n_channels), dtype=np.int16).tobytes()
            )
    probe = np1_probe(n_channels)
    group = pi.ProbeGroup()
    group.add_probe(probe)
    pi.write_probeinterface(folder / "probe.json", group)
    sidecar = {
        "sampling_frequency": fs,
        "n_channels": n_channels,
        "dtype": "int16",
        "probe_file": "probe.json",
        "recording_date": "2026-03-04",
        "uv_per_bit": 0.195,
    }
    (folder / "recording.json").write_text(json.dumps(sidecar))
    return folder

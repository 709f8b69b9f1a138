"""Is Kilosort deterministic on this device? Sort the same binary again and compare the outputs.

Kilosort 4 seeds numpy/torch itself; CPU runs are expected to be bit-identical, GPU runs are reported
nondeterministic upstream (Kilosort #907). :func:`check_determinism` measures it on the chosen device.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ks_platform.core.conversion import RecordingBinary, load_recording_binary
from ks_platform.core.errors import SessionInputError
from ks_platform.core.probes import kilosort_probe_from_json
from ks_platform.core.settings import effective_settings, read_overrides_file
from ks_platform.core.sorting import sort_recording

#: Arrays compared between runs (times in samples, cluster ids, per-spike amplitudes, templates).
COMPARED = ("spike_times.npy", "spike_clusters.npy", "amplitudes.npy", "templates.npy")


@dataclass
class ArrayDifference:
    """One output array of two sortings: equal bit for bit, else shapes and the largest absolute difference."""

    name: str
    identical: bool
    shape_a: list[int]
    shape_b: list[int]
    max_abs_diff: float | None

    @classmethod
    def of(cls, name: str, a: np.ndarray, b: np.ndarray) -> ArrayDifference:
        same_shape = a.shape == b.shape
        identical = same_shape and np.array_equal(a, b)
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if same_shape and a.size else None
        return cls(name, bool(identical), list(a.shape), list(b.shape), 0.0 if identical else diff)


@dataclass
class DeterminismReport:
    """Two (or more) sorts of one binary on one device, compared with the first."""

    device: str
    identical: bool
    n_spikes: list[int]
    n_clusters: list[int]
    spikes_at_same_times: list[float]
    arrays: list[list[dict[str, Any]]]
    sort_seconds: list[float]
    outputs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "IDENTICAL" if self.identical else "DIFFERENT"
        lines = [
            f"{verdict} on {self.device}: spikes {self.n_spikes}, clusters {self.n_clusters}, sort seconds "
            f"{self.sort_seconds}"
        ]
        for run, arrays in enumerate(self.arrays, start=1):
            for entry in arrays:
                if not entry["identical"]:
                    lines.append(
                        f"  run {run + 1} vs run 1: {entry['name']} differs (shapes {entry['shape_a']} vs "
                        f"{entry['shape_b']}, max |Δ| {entry['max_abs_diff']})"
                    )
            if len(self.spikes_at_same_times) >= run:
                lines.append(
                    f"  run {run + 1} vs run 1: {self.spikes_at_same_times[run - 1]:.4f} of spikes at identical sample "
                    "times"
                )
        return "\n".join(lines)


def compare_sortings(first: Path, second: Path) -> tuple[list[ArrayDifference], float]:
    """Per-array differences of two Kilosort output folders, and the fraction of spike times found in both."""
    diffs = [ArrayDifference.of(name, np.load(first / name), np.load(second / name)) for name in COMPARED]
    times_a, times_b = np.load(first / "spike_times.npy").ravel(), np.load(second / "spike_times.npy").ravel()
    values_a, counts_a = np.unique(times_a, return_counts=True)
    values_b, counts_b = np.unique(times_b, return_counts=True)
    _, in_a, in_b = np.intersect1d(values_a, values_b, assume_unique=True, return_indices=True)
    matched = int(np.minimum(counts_a[in_a], counts_b[in_b]).sum())  # spikes sharing a sample count once per pair
    return diffs, matched / max(times_a.size, times_b.size, 1)


def load_binary(binary: Path) -> RecordingBinary:
    """A recording binary by its folder (with ``binary.json``, as ``recording_binary`` writes it) or that manifest."""
    binary = Path(binary)
    folder = binary.parent if binary.is_file() and binary.suffix == ".json" else binary
    if not folder.is_dir():
        raise SessionInputError(
            binary, "not a recording-binary folder", "give the store's <session>/binary folder (it holds binary.json)"
        )
    return load_recording_binary(folder)  # a missing or dangling binary: one error naming it and the fix


def load_kilosort_probe(path: Path) -> dict:
    """The Kilosort probe dict from ``kilosort_probe.json`` (probe_map's output) or any file ``kilosort.io.load_probe`` reads."""
    path = Path(path)
    if not path.is_file():
        raise SessionInputError(
            path, "the probe file does not exist", "give the store's <session>/probe/kilosort_probe.json"
        )
    try:
        return kilosort_probe_from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, UnicodeDecodeError):
        from kilosort.io import load_probe

        try:
            return load_probe(path)
        except Exception as exc:
            raise SessionInputError(
                path,
                f"not a probe file Kilosort reads ({exc})",
                "give kilosort_probe.json, a .prb, a .mat or a Kilosort .json probe",
            ) from None


def check_determinism(
    binary: Path,
    probe: Path,
    workdir: Path,
    device: str = "cpu",
    runs: int = 2,
    reference: Path | None = None,
    settings_file: Path | None = None,
    log=None,
) -> DeterminismReport:
    """Sort ``binary`` ``runs`` times on ``device`` (or once per extra run after a ``reference`` sorting) and compare."""
    recording = load_binary(binary)
    ks_probe = load_kilosort_probe(probe)
    overrides = read_overrides_file(Path(settings_file)) if settings_file else {}
    settings = effective_settings(recording.n_chan_bin, recording.sampling_frequency, "generic", overrides)
    outputs: list[Path] = [Path(reference)] if reference else []
    seconds: list[float] = []
    device_name = device
    while len(outputs) < max(runs, 2):  # a reference sorting counts as the first run
        out = Path(workdir) / f"run{len(outputs) + 1}"
        started = time.perf_counter()
        result = sort_recording(recording, ks_probe, settings, out, backend=device, log=log)
        seconds.append(round(time.perf_counter() - started, 1))
        device_name = f"{result.backend['backend']}: {result.backend['device_name']}"
        outputs.append(out)
    arrays, shared = [], []
    for other in outputs[1:]:
        diffs, fraction = compare_sortings(outputs[0], other)
        arrays.append([asdict(d) for d in diffs])
        shared.append(round(fraction, 6))
    n_spikes = [int(np.load(o / "spike_times.npy").size) for o in outputs]
    n_clusters = [int(np.unique(np.load(o / "spike_clusters.npy")).size) for o in outputs]
    identical = all(entry["identical"] for run in arrays for entry in run)
    return DeterminismReport(
        device_name, identical, n_spikes, n_clusters, shared, arrays, seconds, [str(o) for o in outputs]
    )

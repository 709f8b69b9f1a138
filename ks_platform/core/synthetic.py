"""Realistic demo sessions made locally: SpikeGLX files from SpikeInterface's ground-truth generator."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: NP1.0 AP scaling used for the synthetic file: 0.6 V / 512 / gain 500 = 2.34375 µV per bit.
NP1_UV_PER_BIT = 0.6 / 512 / 500 * 1e6
GROUND_TRUTH_FILE = "ground_truth.npz"
GROUND_TRUTH_SPEC = "ground_truth.json"


@dataclass(frozen=True)
class DemoSessionSpec:
    """What to generate. Defaults match the test suite: 15 s, 32 channels, 10 units, seed 42."""

    duration_s: float = 15.0
    n_channels: int = 32
    n_units: int = 10
    seed: int = 42
    sampling_frequency: float = 30000.0
    recording_date: dt.date = dt.date(2026, 3, 2)
    firing_rate_hz: float = 12.0
    noise_uv: float = 6.0
    #: The session's declared ground-truth bar (see ``ground_truth.json``).
    min_well_detected_units: int = 5


def np1_probe(n_channels: int):
    """The first ``n_channels`` bank-0 contacts of a Neuropixels 1.0 probe (built offline)."""
    from probeinterface.neuropixels_tools import build_neuropixels_probe

    full = build_neuropixels_probe("NP1000")
    probe = full.get_slice(np.arange(n_channels))
    probe.set_device_channel_indices(np.arange(n_channels))
    return probe


def _imro_np1(n_total: int = 384) -> str:
    entries = "".join(f"({ch} 0 0 500 250 1)" for ch in range(n_total))
    return f"(0,{n_total}){entries}"


def spikeglx_meta(n_saved_ap: int, n_samples: int, fs: float, date: dt.date) -> str:
    """A SpikeGLX 3B/NP1.0 meta for an AP file saving channels 0..n-1 plus the sync channel (768)."""
    n_saved = n_saved_ap + 1
    fields = {
        "acqApLfSy": "384,384,1",
        "appVersion": "20230425",
        "fileCreateTime": f"{date.isoformat()}T10:00:00",
        "fileName": "demo_g0_t0.imec0.ap.bin",
        "fileSizeBytes": str(n_samples * n_saved * 2),
        "fileTimeSecs": f"{n_samples / fs:.6f}",
        "firstSample": "0",
        "imAiRangeMax": "0.6",
        "imAiRangeMin": "-0.6",
        "imDatPrb_pn": "PRB_1_4_0480_1",
        "imDatPrb_sn": "18005116022",
        "imDatPrb_type": "0",
        "imMaxInt": "512",
        "imSampRate": f"{fs:g}",
        "imroTbl": _imro_np1(),
        "nSavedChans": str(n_saved),
        "snsApLfSy": "384,0,1",
        "snsChanMap": "(384,0,1)" + "".join(f"(AP{c};{c}:{c})" for c in range(n_saved_ap)) + "(SY0;768:768)",
        "snsSaveChanSubset": f"0:{n_saved_ap - 1},768",
        "typeImEnabled": "1",
        "typeThis": "imec",
    }
    lines = []
    for key, value in fields.items():
        prefix = "~" if key in ("imroTbl", "snsChanMap") else ""
        lines.append(f"{prefix}{key}={value}")
    return "\n".join(lines) + "\n"


def make_spikeglx_session(folder: Path, spec: DemoSessionSpec = DemoSessionSpec(), chunk_s: float = 2.0) -> Path:
    """Write ``folder/demo_g0_t0.imec0.ap.{bin,meta}`` plus ground truth; return the folder.

    Samples are written chunk by chunk; the sync channel carries a 1 Hz square wave as on a rig.
    """
    from spikeinterface.core import generate_ground_truth_recording

    folder.mkdir(parents=True, exist_ok=True)
    probe = np1_probe(spec.n_channels)
    recording, sorting = generate_ground_truth_recording(
        durations=[spec.duration_s],
        sampling_frequency=spec.sampling_frequency,
        probe=probe,
        num_units=spec.n_units,
        generate_sorting_kwargs={"firing_rates": spec.firing_rate_hz, "refractory_period_ms": 4.0},
        noise_kwargs={"noise_levels": spec.noise_uv, "strategy": "on_the_fly"},
        seed=spec.seed,
    )
    n_samples = recording.get_num_samples()
    fs = spec.sampling_frequency
    bin_path = folder / "demo_g0_t0.imec0.ap.bin"
    step = int(chunk_s * fs)
    with open(bin_path, "wb") as handle:
        for start in range(0, n_samples, step):
            stop = min(start + step, n_samples)
            traces = recording.get_traces(start_frame=start, end_frame=stop).astype(np.float64)
            block = np.empty((stop - start, spec.n_channels + 1), dtype=np.int16)
            block[:, :-1] = np.clip(np.rint(traces / NP1_UV_PER_BIT), -32768, 32767)
            block[:, -1] = ((np.arange(start, stop) // int(fs / 2)) % 2) * 64
            handle.write(block.tobytes())
    bin_path.with_suffix(".meta").write_text(spikeglx_meta(spec.n_channels, n_samples, fs, spec.recording_date))
    samples, labels = sorting.to_spike_vector()["sample_index"], sorting.to_spike_vector()["unit_index"]
    np.savez(folder / GROUND_TRUTH_FILE, samples=samples.astype(np.int64), labels=labels.astype(np.int64), sampling_frequency=fs)
    (folder / GROUND_TRUTH_SPEC).write_text(
        json.dumps(
            {
                "spike_file": GROUND_TRUTH_FILE,
                "well_detected_accuracy": 0.8,
                "min_well_detected_units": spec.min_well_detected_units,
                "generator": "spikeinterface.core.generate_ground_truth_recording",
                "seed": spec.seed,
                "n_units": spec.n_units,
            },
            indent=2,
        )
        + "\n"
    )
    return folder

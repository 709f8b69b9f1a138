"""Rig-shaped test sessions with ground truth: several probes per run, saved subsets, several gates."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from ks_platform.core.synthetic import (
    GROUND_TRUTH_SPEC,
    NP1_UV_PER_BIT,
    DemoSessionSpec,
    make_spikeglx_session,
    np1_probe,
)
from ks_platform_tests.conftest import TEST_SPEC
from ks_platform_tests.writers import (
    OpenEphysProbe,
    openephys_channels,
    openephys_stream_entry,
    write_openephys_node,
)

#: The canonical test recording (6 s at 30 Hz, 32 channels, 10 units: as many spikes per unit as the demo's 15 s at
#: 12 Hz); 10 s at 12 Hz sorted too few units (4 of 10 found, 0 well detected) to tell a broken channel map from a
#: short recording.
PROBE_SPEC = replace(TEST_SPEC, min_well_detected_units=4)
#: A saved subset as SpikeGLX writes it (``snsSaveChanSubset=96:127,768``): acquired channels 96–127, 960 µm up the
#: shank. (A subset with a 480 µm gap sorted too few units at this size for a ground-truth bar: 3 of 10.)
SUBSET_CHANNELS = tuple(range(96, 128))
#: The Open Ephys rig's probes: the demo recording on bank-0 channels 0-31 (ProbeA) and 32-63 (ProbeB, 320 µm
#: higher), so each stream needs its own NP_PROBE geometry. The generator places units relative to the contacts,
#: so both sort alike (a saved subset with a gap, as imec1 above, sorted 3 well-detected units of 10 here).
OPENEPHYS_PROBES = {"ProbeA": PROBE_SPEC, "ProbeB": replace(PROBE_SPEC, saved_channels=tuple(range(32, 64)))}
#: The Neuropixels-PXI plugin's NP1.0 x positions are the catalogue's + 11 µm (27/59/11/43 µm).
PLUGIN_X_OFFSET_UM = 11.0


def _patch_meta(text: str, **values: object) -> str:
    keys = {key: str(value) for key, value in values.items()}
    lines = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].lstrip("~")
        lines.append(f"{line.split('=', 1)[0]}={keys[key]}" if key in keys else line)
    return "\n".join(lines) + "\n"


def write_gated_probe(
    session: Path,
    run: str,
    probe: str,
    spec: DemoSessionSpec,
    parts: tuple[tuple[int, int], ...],
    scratch: Path,
    first_sample: int = 0,
    gaps: tuple[int, ...] | None = None,
) -> list[Path]:
    """One probe's ground-truth recording split into equal files, one per (gate, trigger) of ``parts``, nested as
    SpikeGLX writes a run: ``<run>_g<G>/<run>_g<G>_<probe>/<run>_g<G>_t<T>.<probe>.ap.{bin,meta}``. The files lie on
    the acquisition clock as the rig put them: the first at ``first_sample``, each one ``gaps[k]`` samples after the
    one before (``firstSample`` in its meta). The truth goes to the session folder as ``ground_truth.<probe>.json``,
    its spike times on that acquisition clock."""
    generated = make_spikeglx_session(
        scratch / f"{run}_{probe}",
        spec,
        file_name=f"whole.{probe}.ap.bin",
        ground_truth_name=f"ground_truth.{probe}.json",
    )
    whole = generated / f"whole.{probe}.ap.bin"
    meta = whole.with_suffix(".meta").read_text()
    n_saved = len(spec.channels) + 1
    frames = np.fromfile(whole, dtype=np.int16).reshape(-1, n_saved)
    bounds = np.linspace(0, len(frames), len(parts) + 1).astype(int)
    gaps = gaps or (0,) * len(parts)
    shifts = first_sample + np.cumsum(gaps)  # acquisition sample of whole-recording row 0, per part
    written = []
    for (gate, trigger), start, stop, shift in zip(parts, bounds[:-1], bounds[1:], shifts):
        name = f"{run}_g{gate}_t{trigger}.{probe}.ap.bin"
        path = session / f"{run}_g{gate}" / f"{run}_g{gate}_{probe}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frames[start:stop].tofile(path)
        seconds = (stop - start) / spec.sampling_frequency
        values = {"fileName": name, "fileSizeBytes": (stop - start) * n_saved * 2, "fileTimeSecs": f"{seconds:.6f}"}
        path.with_suffix(".meta").write_text(_patch_meta(meta, **values, firstSample=int(shift + start)))
        written.append(path)
    truth_file = generated / f"{Path(GROUND_TRUTH_SPEC).stem}.{probe}.npz"
    truth = dict(np.load(truth_file))
    part = np.searchsorted(bounds[1:], truth["samples"], side="right")
    truth["samples"] = truth["samples"] + shifts[part]
    np.savez(truth_file, **truth)
    for item in generated.iterdir():
        if item.name.startswith(Path(GROUND_TRUTH_SPEC).stem):
            shutil.move(item, session / item.name)
    return written


#: imec0 of the two-probe run: two triggers of gate 0, the second one second after the first ends, the first at
#: sample 1000 of the acquisition clock (its spike times must come back on that clock).
IMEC0_PARTS, IMEC0_FIRST_SAMPLE, IMEC0_GAP = ((0, 0), (0, 1)), 1000, 30_000


def write_two_probe_two_gate_run(session: Path, scratch: Path, run: str = "mouse7") -> dict[str, list[Path]]:
    """A SpikeGLX run with imec0 (32 contiguous channels; two triggers with a 1 s gap) and imec1 (a saved subset;
    gates g0 and g1 back to back), plus an NI-DAQ file per gate (not a probe: listed as skipped)."""
    files = {
        "imec0": write_gated_probe(
            session, run, "imec0", PROBE_SPEC, IMEC0_PARTS, scratch, IMEC0_FIRST_SAMPLE, (0, IMEC0_GAP)
        ),
        "imec1": write_gated_probe(
            session, run, "imec1", replace(PROBE_SPEC, saved_channels=SUBSET_CHANNELS), ((0, 0), (1, 0)), scratch
        ),
    }
    for gate in (0, 1):
        nidq = session / f"{run}_g{gate}" / f"{run}_g{gate}_t0.nidq.bin"
        np.zeros((1000, 9), dtype=np.int16).tofile(nidq)
        nidq.with_suffix(".meta").write_text("typeThis=nidq\nniSampRate=25000\nnSavedChans=9\nfileSizeBytes=18000\n")
    return files


#: The Open Ephys node's first sample number (acquisition ran 1 s before recording started, as on a rig).
OPENEPHYS_FIRST_SAMPLE = 30_000


def write_openephys_two_probe_node(session: Path, scratch: Path) -> dict[str, np.ndarray]:
    """One Open Ephys Record Node holding ProbeA and ProbeB (``OPENEPHYS_PROBES``; NP1.0 part number with the
    plugin's positions; ``bit_volts`` = the NP1.0 µV per bit; no AUX/ADC channels, as the plugin records) plus an
    NI-DAQ board (not a probe: skipped). Each probe's truth goes to the session folder as
    ``ground_truth.<probe>.{json,npz}``. Returns each probe's int16 ephys traces ``[samples, 32]`` as written."""
    traces: dict[str, np.ndarray] = {}
    probes = []
    for name, spec in OPENEPHYS_PROBES.items():
        generated = make_spikeglx_session(
            scratch / name, spec, file_name=f"whole.{name}.ap.bin", ground_truth_name=f"ground_truth.{name}.json"
        )
        n_saved = len(spec.channels) + 1  # the SpikeGLX file ends with its sync channel
        frames = np.memmap(generated / f"whole.{name}.ap.bin", dtype=np.int16, mode="r").reshape(-1, n_saved)
        traces[name] = frames[:, :-1]
        positions = np1_probe(spec.n_channels, spec.channels).contact_positions + [PLUGIN_X_OFFSET_UM, 0.0]
        probes.append(OpenEphysProbe(name, traces[name], positions, part_number="PRB_1_4_0480_1"))
        truth_file = generated / f"{Path(GROUND_TRUTH_SPEC).stem}.{name}.npz"
        truth = dict(np.load(truth_file))
        truth["samples"] = truth["samples"] + OPENEPHYS_FIRST_SAMPLE  # the truth on the acquisition clock
        np.savez(truth_file, **truth)
        for item in generated.iterdir():
            if item.name.startswith(Path(GROUND_TRUTH_SPEC).stem):
                shutil.move(item, session / item.name)
    nidaq = openephys_stream_entry(
        "NI-DAQmx", 102, "PXIe-6341", 30000.0, openephys_channels([f"AI{i}" for i in range(8)], 0.000305, "V")
    )
    write_openephys_node(
        session,
        probes,
        PROBE_SPEC.sampling_frequency,
        PROBE_SPEC.recording_date,
        uv_per_bit=NP1_UV_PER_BIT,
        extra_channels=(),
        extra_streams=[nidaq],
        first_sample=OPENEPHYS_FIRST_SAMPLE,
    )
    return traces

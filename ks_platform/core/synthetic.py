"""Realistic demo sessions made locally: SpikeGLX files from SpikeInterface's ground-truth generator."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ks_platform.core.names import GROUND_TRUTH_SPEC, SUBJECT_JSON

#: NP1.0 AP scaling used for the synthetic file: 0.6 V / 512 / gain 500 = 2.34375 µV per bit.
NP1_UV_PER_BIT = 0.6 / 512 / 500 * 1e6


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
    #: Acquired NP1.0 channel ids saved in the file (SpikeGLX ``snsSaveChanSubset``); None: ``0..n_channels-1``.
    saved_channels: tuple[int, ...] | None = None

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(range(self.n_channels)) if self.saved_channels is None else tuple(self.saved_channels)


def np1_probe(n_channels: int, channels: tuple[int, ...] | None = None):
    """Bank-0 contacts ``channels`` (default the first ``n_channels``) of a Neuropixels 1.0 probe (built offline)."""
    from probeinterface.neuropixels_tools import build_neuropixels_probe

    full = build_neuropixels_probe("NP1000")
    probe = full.get_slice(np.asarray(channels if channels is not None else np.arange(n_channels)))
    probe.set_device_channel_indices(np.arange(probe.get_contact_count()))
    return probe


def _imro_np1(n_total: int = 384) -> str:
    entries = "".join(f"({ch} 0 0 500 250 1)" for ch in range(n_total))
    return f"(0,{n_total}){entries}"


def spikeglx_meta(
    n_saved_ap: int,
    n_samples: int,
    fs: float,
    date: dt.date,
    channels: tuple[int, ...] | None = None,
    file_name: str = "demo_g0_t0.imec0.ap.bin",
) -> str:
    """A SpikeGLX 3B/NP1.0 meta for an AP file saving ``channels`` (default 0..n-1) plus the sync channel (768)."""
    channels = tuple(range(n_saved_ap)) if channels is None else tuple(channels)
    n_saved = len(channels) + 1
    fields = {
        "acqApLfSy": "384,384,1",
        "appVersion": "20230425",
        "fileCreateTime": f"{date.isoformat()}T10:00:00",
        "fileName": file_name,
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
        "snsApLfSy": f"{len(channels)},0,1",
        "snsChanMap": "(384,0,1)" + "".join(f"(AP{c};{c}:{c})" for c in channels) + "(SY0;768:768)",
        "snsSaveChanSubset": _subset_text((*channels, 768)),
        "typeImEnabled": "1",
        "typeThis": "imec",
    }
    lines = []
    for key, value in fields.items():
        prefix = "~" if key in ("imroTbl", "snsChanMap") else ""
        lines.append(f"{prefix}{key}={value}")
    return "\n".join(lines) + "\n"


def make_spikeglx_session(
    folder: Path,
    spec: DemoSessionSpec = DemoSessionSpec(),
    chunk_s: float = 2.0,
    file_name: str = "demo_g0_t0.imec0.ap.bin",
    ground_truth_name: str = GROUND_TRUTH_SPEC,
) -> Path:
    """Write ``folder/<file_name>`` and its ``.meta`` plus ground truth (``ground_truth_name``); return the folder.

    Samples are written chunk by chunk; the sync channel carries a 1 Hz square wave as on a rig.
    """
    from spikeinterface.core import generate_ground_truth_recording

    probe = np1_probe(spec.n_channels, spec.channels)
    recording, sorting = generate_ground_truth_recording(
        durations=[spec.duration_s],
        sampling_frequency=spec.sampling_frequency,
        probe=probe,
        num_units=spec.n_units,
        generate_sorting_kwargs={"firing_rates": spec.firing_rate_hz, "refractory_period_ms": 4.0},
        noise_kwargs={"noise_levels": spec.noise_uv, "strategy": "on_the_fly"},
        seed=spec.seed,
    )
    return write_spikeglx_session(folder, recording, sorting, spec, file_name, ground_truth_name, chunk_s)


def write_spikeglx_session(
    folder: Path,
    recording,
    sorting,
    spec: DemoSessionSpec,
    file_name: str = "demo_g0_t0.imec0.ap.bin",
    ground_truth_name: str = GROUND_TRUTH_SPEC,
    chunk_s: float = 2.0,
) -> Path:
    """Write a generated ``recording`` (µV) as a SpikeGLX NP1.0 AP file with its meta, and ``sorting`` as the
    ground truth (its unit ids as the truth's labels); return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    n_saved = recording.get_num_channels()
    n_samples = recording.get_num_samples()
    fs = spec.sampling_frequency
    bin_path = folder / file_name
    step = int(chunk_s * fs)
    with open(bin_path, "wb") as handle:
        for start in range(0, n_samples, step):
            stop = min(start + step, n_samples)
            traces = recording.get_traces(start_frame=start, end_frame=stop).astype(np.float64)
            block = np.empty((stop - start, n_saved + 1), dtype=np.int16)
            block[:, :-1] = np.clip(np.rint(traces / NP1_UV_PER_BIT), -32768, 32767)
            block[:, -1] = ((np.arange(start, stop) // int(fs / 2)) % 2) * 64
            handle.write(block.tobytes())
    bin_path.with_suffix(".meta").write_text(
        spikeglx_meta(n_saved, n_samples, fs, spec.recording_date, spec.channels, file_name)
    )
    vector = sorting.to_spike_vector()
    samples, labels = vector["sample_index"], np.asarray(sorting.unit_ids)[vector["unit_index"]]
    spike_file = Path(ground_truth_name).stem + ".npz"
    np.savez(
        folder / spike_file, samples=samples.astype(np.int64), labels=labels.astype(np.int64), sampling_frequency=fs
    )
    (folder / ground_truth_name).write_text(
        json.dumps(
            {
                "spike_file": spike_file,
                "well_detected_accuracy": 0.8,
                "min_well_detected_units": spec.min_well_detected_units,
                "generator": "spikeinterface.core.generate_ground_truth_recording",
                "seed": spec.seed,
                "n_units": int(sorting.get_num_units()),
            },
            indent=2,
        )
        + "\n"
    )
    return folder


# ------------------------------------------------------------------------------------------------ SpikeGLX runs
@dataclass(frozen=True)
class GlxProbe:
    """One probe of a generated SpikeGLX run: NP1.0 (gain 500, sync id 768) or NP2.0 4-shank NP2013 (gain 100,
    no LF, sync id 384); ``saved_ap`` lists the acquired AP channel ids saved (None: all 384)."""

    name: str = "imec0"
    saved_ap: tuple[int, ...] | None = None
    np2: bool = False

    @property
    def saved_ids(self) -> tuple[int, ...]:
        ap = tuple(range(384)) if self.saved_ap is None else tuple(self.saved_ap)
        return (*ap, 384 if self.np2 else 768)


def _subset_text(ids: tuple[int, ...]) -> str:
    """``0:35,72:95,384``: runs of consecutive ids as SpikeGLX writes ``snsSaveChanSubset``."""
    runs: list[list[int]] = []
    for channel in ids:
        if runs and channel == runs[-1][-1] + 1:
            runs[-1].append(channel)
        else:
            runs.append([channel])
    return ",".join(f"{r[0]}:{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def spikeglx_run_meta(
    probe: GlxProbe,
    n_samples: int,
    fs: float,
    date: dt.date,
    file_name: str,
    first_sample: int = 0,
    catgt_gates: tuple[int, int] | None = None,
    catgt_triggers: tuple[int, int] | None = None,
) -> str:
    """The meta of one AP file of ``probe`` as SpikeGLX writes it (the keys the readers use); CatGT output also
    names the gates and triggers it covers (``catGVals``/``catTVals``)."""
    ids = probe.saved_ids
    if probe.np2:
        imro = "(2013,384)" + "".join(f"({c} {c // 96} 0 0 {c % 96})" for c in range(384))
        fields = {
            "acqApLfSy": "384,0,1",
            "imAiRangeMax": "0.62",
            "imAiRangeMin": "-0.62",
            "imChan0apGain": "100",
            "imDatPrb_pn": "NP2013",
            "imDatPrb_type": "2013",
            "imMaxInt": "2048",
        }
    else:
        imro = _imro_np1()
        fields = {
            "acqApLfSy": "384,384,1",
            "imAiRangeMax": "0.6",
            "imAiRangeMin": "-0.6",
            "imDatPrb_pn": "PRB_1_4_0480_1",
            "imDatPrb_type": "0",
            "imMaxInt": "512",
        }
    fields.update(
        {
            "appVersion": "20230425",
            "fileCreateTime": f"{date.isoformat()}T10:00:00",
            "fileName": file_name,
            "fileSizeBytes": str(n_samples * len(ids) * 2),
            "fileTimeSecs": f"{n_samples / fs:.9f}",
            "firstSample": str(first_sample),
            "imSampRate": f"{fs:g}",
            "nSavedChans": str(len(ids)),
            "snsApLfSy": f"{len(ids) - 1},0,1",
            "snsSaveChanSubset": _subset_text(ids),
            "typeThis": "imec",
            "~imroTbl": imro,
            "~snsChanMap": f"({fields['acqApLfSy']})"
            + "".join(f"(AP{c};{c}:{c})" for c in ids[:-1])
            + f"(SY0;{ids[-1]}:{ids[-1]})",
        }
    )
    if catgt_gates is not None:
        fields["catGVals"] = f"{catgt_gates[0]},{catgt_gates[1]}"
        fields["catTVals"] = f"{catgt_triggers[0]},{catgt_triggers[1]}" if catgt_triggers else "0,0"
    return "".join(f"{key}={value}\n" for key, value in sorted(fields.items(), key=lambda kv: kv[0].lstrip("~")))


def write_spikeglx_run(
    folder: Path,
    probes: tuple[GlxProbe, ...] = (GlxProbe(),),
    gates: tuple[int, ...] = (0,),
    triggers: tuple[int, ...] = (0,),
    run: str = "run",
    n_samples: int = 200,
    fs: float = 30000.0,
    date: dt.date = dt.date(2026, 3, 2),
    catgt: bool = False,
    other_streams: bool = False,
    seed: int = 0,
    first_samples: dict[tuple[int, int], int] | None = None,
    catgt_gates: tuple[int, ...] | None = None,
) -> dict[str, list[Path]]:
    """Write a SpikeGLX run as SpikeGLX nests it (``<run>_gG/<run>_gG_imecN/<run>_gG_tT.imecN.ap.{bin,meta}``).

    Every gate × trigger file of every probe holds ``n_samples`` random int16 frames (sync channel last); its
    ``firstSample`` is ``first_samples[(gate, trigger)]`` (default: the files back to back from sample 0).
    ``catgt``: also ``catgt_<run>_g<first gate>/…_tcat.imecN.ap.bin`` holding the files of ``catgt_gates`` (default
    all) of a probe laid end to end, its meta naming the gates and triggers it covers;
    ``other_streams``: also an NI-DAQ file per gate/trigger and an LF file per AP file. Returns each probe's raw
    AP files in time order (gate, then trigger).
    """
    rng = np.random.default_rng(seed)
    written: dict[str, list[Path]] = {probe.name: [] for probe in probes}
    order = [(gate, trigger) for gate in gates for trigger in triggers]
    starts = first_samples or {key: i * n_samples for i, key in enumerate(order)}
    for gate in gates:
        gate_dir = folder / f"{run}_g{gate}"
        for trigger in triggers:
            for probe in probes:
                name = f"{run}_g{gate}_t{trigger}.{probe.name}.ap.bin"
                data = rng.integers(-500, 500, (n_samples, len(probe.saved_ids)), dtype=np.int16)
                path = _write_glx_file(
                    gate_dir / f"{run}_g{gate}_{probe.name}" / name,
                    data,
                    spikeglx_run_meta(probe, n_samples, fs, date, name, starts[(gate, trigger)]),
                )
                written[probe.name].append(path)
                if other_streams:
                    _write_glx_file(
                        path.with_name(name.replace(".ap.bin", ".lf.bin")),
                        data[::12],
                        "typeThis=imec\nsnsApLfSy=0,384,1\n",
                    )
            if other_streams:
                _write_glx_file(
                    gate_dir / f"{run}_g{gate}_t{trigger}.nidq.bin",
                    rng.integers(-9, 9, (n_samples, 9), dtype=np.int16),
                    "typeThis=nidq\nniSampRate=25000\n",
                )
    if catgt:
        covered = tuple(catgt_gates or gates)
        keep = [i for i, (gate, _) in enumerate(order) if gate in covered]
        for probe in probes:
            data = np.concatenate(
                [np.fromfile(written[probe.name][i], np.int16).reshape(-1, len(probe.saved_ids)) for i in keep]
            )
            name = f"{run}_g{covered[0]}_tcat.{probe.name}.ap.bin"
            meta = spikeglx_run_meta(
                probe,
                len(data),
                fs,
                date,
                name,
                starts[order[keep[0]]],
                (min(covered), max(covered)),
                (min(triggers), max(triggers)),
            )
            _write_glx_file(
                folder / f"catgt_{run}_g{covered[0]}" / f"{run}_g{covered[0]}_{probe.name}" / name, data, meta
            )
    return written


def _write_glx_file(path: Path, data: np.ndarray, meta: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data.tofile(path)
    path.with_suffix(".meta").write_text(meta)
    return path


# ------------------------------------------------------------------------------------------------ chronic sessions
@dataclass(frozen=True)
class ChronicSpec:
    """One implant recorded on several days: the same neurons every day, moved along the probe by ``drift_um`` from
    one day to the next, ``lost_per_day`` of them gone and ``new_per_day`` new ones each day after the first.

    Neuron ``n`` is the same cell on every day it is recorded: the ground truth of each day labels spikes with these
    ids, so matches across days can be scored."""

    subject_id: str = "mouse_chronic"
    n_days: int = 2
    n_neurons: int = 12
    lost_per_day: int = 2
    new_per_day: int = 2
    drift_um: float = 6.0
    duration_s: float = 5.0
    n_channels: int = 32
    firing_rate_hz: float = 20.0
    noise_uv: float = 6.0
    seed: int = 7
    start_date: dt.date = dt.date(2026, 4, 6)
    sampling_frequency: float = 30000.0

    @property
    def first_day_neurons(self) -> int:
        return self.n_neurons - self.new_per_day * (self.n_days - 1)

    def neurons_on(self, day: int) -> list[int]:
        """The neuron ids recorded on ``day`` (0-based)."""
        return list(range(self.lost_per_day * day, self.first_day_neurons + self.new_per_day * day))

    def session_name(self, day: int) -> str:
        return f"{self.subject_id}_day{day + 1}"


def make_chronic_sessions(root: Path, spec: ChronicSpec = ChronicSpec()) -> list[Path]:
    """Write ``spec.n_days`` SpikeGLX sessions of one subject under ``root`` (``<subject>_day<N>/``), each with its
    ``subject.json`` and ground truth (global neuron ids); return the session folders, first day first."""
    from spikeinterface.core import generate_ground_truth_recording
    from spikeinterface.core.generate import generate_sorting, generate_templates, generate_unit_locations

    if spec.first_day_neurons < 1 or spec.lost_per_day * (spec.n_days - 1) >= spec.first_day_neurons:
        raise ValueError(f"{spec}: every day must record at least one neuron")
    probe = np1_probe(spec.n_channels)
    locations = generate_unit_locations(
        spec.n_neurons,
        probe.contact_positions,
        margin_um=10.0,
        minimum_z=5.0,
        maximum_z=40.0,
        minimum_distance=25.0,
        seed=spec.seed,
    )
    folders = []
    for day in range(spec.n_days):
        moved = locations.copy()
        moved[:, 1] += spec.drift_um * day
        # One draw over the whole population (same seed): every neuron keeps its waveform parameters on every day.
        templates = generate_templates(
            probe.contact_positions, moved, spec.sampling_frequency, 1.0, 3.0, seed=spec.seed, dtype="float32"
        )
        present = spec.neurons_on(day)
        sorting = generate_sorting(
            num_units=len(present),
            sampling_frequency=spec.sampling_frequency,
            durations=[spec.duration_s],
            firing_rates=spec.firing_rate_hz,
            refractory_period_ms=4.0,
            seed=spec.seed * 100 + day,
        )
        sorting = sorting.select_units(sorting.unit_ids, renamed_unit_ids=np.asarray(present))
        recording, _ = generate_ground_truth_recording(
            durations=[spec.duration_s],
            sampling_frequency=spec.sampling_frequency,
            probe=probe,
            sorting=sorting,
            templates=templates[present],
            ms_before=1.0,
            ms_after=3.0,
            noise_kwargs={"noise_levels": spec.noise_uv, "strategy": "on_the_fly"},
            seed=spec.seed * 100 + 50 + day,
        )
        day_spec = DemoSessionSpec(
            duration_s=spec.duration_s,
            n_channels=spec.n_channels,
            n_units=len(present),
            seed=spec.seed,
            sampling_frequency=spec.sampling_frequency,
            recording_date=spec.start_date + dt.timedelta(days=day),
            firing_rate_hz=spec.firing_rate_hz,
            noise_uv=spec.noise_uv,
            min_well_detected_units=1,
        )
        folder = root / spec.session_name(day)
        write_spikeglx_session(folder, recording, sorting, day_spec, f"{spec.session_name(day)}_g0_t0.imec0.ap.bin")
        (folder / SUBJECT_JSON).write_text(
            json.dumps(
                {
                    "subject_id": spec.subject_id,
                    "species": "Mus musculus",
                    "sex": "F",
                    "age": "P90D",
                    "electrode_location": "root",
                }
            )
            + "\n"
        )
        folders.append(folder)
    return folders

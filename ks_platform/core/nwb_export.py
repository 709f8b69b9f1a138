"""Units to NWB: one probe's (curated) sorting as an NWB file with pynwb, streamed with bounded memory.

The Units table holds spike times in seconds, Kilosort's label, the Phy label when a curation applies, the
quality metrics of ``unit_metrics`` and mean waveforms; the electrodes table holds the probe geometry
(``rel_x``/``rel_y``) with one electrode group per shank. Spike times are written per unit from one sorted index
(``np.lexsort``) through an hdmf ``GenericDataChunkIterator``: no Python list of spikes is ever built.

Provenance: ``general/source_script`` names ks_platform and its commit, ``general/data_collection`` holds the
lineage as JSON (why there: docs/decisions.md, "NWB export: where provenance goes").
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from hdmf.data_utils import GenericDataChunkIterator

from ks_platform.core.names import (
    EFFECTIVE_SETTINGS_FILE,
    LINEAGE_FILE,
    METRICS_CSV,
    NWB_FILE,
    SUBJECT_JSON,
    TIMEZONE_ENV,
)
from ks_platform.core.progress import Progress, StageProgress
from ks_platform.core.store import SessionStore, atomic_directory, read_json
from ks_platform.core.timeline import TimelineSegment, segments_from_manifest, to_acquisition_seconds

#: unit_metrics columns copied into the Units table, with their descriptions.
METRIC_COLUMNS = {
    "firing_rate": "firing rate (Hz), SpikeInterface quality metric",
    "snr": "signal-to-noise ratio of the mean waveform, SpikeInterface quality metric",
    "isi_violations_ratio": "ISI-violation ratio (Hill et al.; 1.5 ms refractory period), SpikeInterface",
    "isi_violations_count": "number of ISI violations, SpikeInterface quality metric",
    "presence_ratio": "fraction of time bins with spikes, SpikeInterface quality metric",
    "amplitude_cutoff": "estimated fraction of missed spikes, SpikeInterface quality metric",
    "x_um": "estimated unit position on the probe, x (µm, monopolar triangulation)",
    "y_um": "estimated unit position on the probe, y (µm, monopolar triangulation)",
}


class SpikeTimesIterator(GenericDataChunkIterator):
    """Spike times in seconds on the acquisition clock, unit after unit, read chunk by chunk from ``times[order]``
    (binary rows) mapped through the recording's timeline."""

    def __init__(
        self,
        times: np.ndarray,
        order: np.ndarray,
        sampling_frequency: float,
        timeline: tuple[TimelineSegment, ...] = (),
        chunk_spikes: int = 1_000_000,
    ):
        self._times, self._order, self._fs, self._timeline = times, order, float(sampling_frequency), timeline
        n = max(int(order.size), 1)
        chunk = min(chunk_spikes, n)
        super().__init__(chunk_shape=(chunk,), buffer_shape=(chunk,), display_progress=False)

    def _get_data(self, selection: tuple[slice]) -> np.ndarray:
        return to_acquisition_seconds(self._times[self._order[selection[0]]], self._timeline, self._fs)

    def _get_maxshape(self) -> tuple[int]:
        return (int(self._order.size),)

    def _get_dtype(self) -> np.dtype:
        return np.dtype("float64")


@dataclass
class UnitsSource:
    """Everything the NWB file is made of (in memory only the per-unit tables and the spike index)."""

    spike_samples: np.ndarray
    spike_clusters: np.ndarray
    sampling_frequency: float
    session_start_time: dt.datetime
    identifier: str
    session_id: str
    electrodes: pd.DataFrame  # x_um, y_um, shank, channel (binary row)
    device: dict[str, str]
    kilosort_labels: dict[int, str] = field(default_factory=dict)
    curated_labels: dict[int, str] | None = None
    metrics: pd.DataFrame | None = None
    waveforms: np.ndarray | None = None  # (n_units, n_samples, n_electrodes) in volts
    lineage: dict[str, Any] = field(default_factory=dict)
    description: str = "Kilosort 4 units"
    subject: dict[str, str] | None = None
    location: str = "unknown"
    #: Where each file of the recording lies on the acquisition clock (spike times are written on that clock).
    timeline: tuple[TimelineSegment, ...] = ()


def unit_index(clusters: np.ndarray, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(unit_ids, ends, order)``: spikes ordered by unit then time, and where each unit's spikes end."""
    order = np.lexsort((samples, clusters))
    unit_ids, counts = np.unique(clusters, return_counts=True)
    return unit_ids.astype(np.int64), np.cumsum(counts).astype(np.int64), order


def _electrodes(nwbfile, source: UnitsSource) -> None:
    device = nwbfile.create_device(
        name=source.device["name"], description=source.device["description"], manufacturer=source.device["manufacturer"]
    )
    groups = {}
    for shank in sorted(source.electrodes["shank"].unique()):
        groups[shank] = nwbfile.create_electrode_group(
            name=f"shank{int(shank)}",
            description=f"shank {int(shank)} of {device.name}",
            location=source.location,
            device=device,
        )
    nwbfile.add_electrode_column(name="rel_x", description="contact x position on the probe (µm)")
    nwbfile.add_electrode_column(name="rel_y", description="contact y position on the probe (µm)")
    nwbfile.add_electrode_column(
        name="channel", description="row of the channel in the sorted binary (Kilosort chanMap)"
    )
    for row in source.electrodes.itertuples():
        nwbfile.add_electrode(
            group=groups[row.shank],
            location=source.location,
            rel_x=float(row.x_um),
            rel_y=float(row.y_um),
            channel=int(row.channel),
        )


def _column(name: str, description: str, data) -> Any:
    from hdmf.common import VectorData

    return VectorData(name=name, description=description, data=data)


def _units(nwbfile, source: UnitsSource):
    from hdmf.backends.hdf5 import H5DataIO
    from hdmf.common import DynamicTableRegion, VectorIndex
    from pynwb.misc import Units

    unit_ids, ends, order = unit_index(source.spike_clusters, source.spike_samples)
    times = _column(
        "spike_times",
        "spike times (s) on the probe's acquisition clock (SpikeGLX firstSample / Open Ephys sample number / fs)",
        H5DataIO(
            SpikeTimesIterator(source.spike_samples, order, source.sampling_frequency, source.timeline),
            compression="gzip",
            compression_opts=4,
        ),
    )
    columns = [
        VectorIndex(name="spike_times_index", data=ends, target=times),
        times,
    ]  # index first: hdmf's length check
    ids = [int(u) for u in unit_ids]
    columns.append(
        _column(
            "kilosort_label",
            "Kilosort's label (good/mua; empty for clusters made in Phy)",
            [source.kilosort_labels.get(u, "") for u in ids],
        )
    )
    if source.curated_labels is not None:
        columns.append(
            _column(
                "curated_label",
                "label given in Phy (good/mua/noise/unsorted)",
                [source.curated_labels.get(u, "unsorted") for u in ids],
            )
        )
    if source.metrics is not None:
        table = source.metrics.set_index("unit_id").reindex(ids)
        columns += [
            _column(name, text, table[name].to_numpy(dtype=float))
            for name, text in METRIC_COLUMNS.items()
            if name in table
        ]
    kwargs = {}
    if source.waveforms is not None:
        n_electrodes = source.waveforms.shape[2]
        region = DynamicTableRegion(
            name="electrodes",
            description="electrodes of the mean waveform",
            data=np.tile(np.arange(n_electrodes), len(ids)),
            table=nwbfile.electrodes,
        )
        columns += [
            region,
            VectorIndex(name="electrodes_index", data=np.arange(1, len(ids) + 1) * n_electrodes, target=region),
        ]
        columns.append(
            _column(
                "waveform_mean",
                "mean waveform on every electrode (V), 300 Hz high-passed",
                source.waveforms.astype(np.float32),
            )
        )
        kwargs = {"waveform_rate": float(source.sampling_frequency), "waveform_unit": "volts"}
    return Units(
        name="units",
        description=source.description,
        id=ids,
        columns=columns,
        resolution=1.0 / source.sampling_frequency,
        **kwargs,
    )


def _segments_table(source: UnitsSource):
    """The recording's files as time intervals on the acquisition clock, with where each lies in the sorted binary."""
    from pynwb.epoch import TimeIntervals

    table = TimeIntervals(
        name="recording_segments",
        description="the files the sorted recording was made of, on the acquisition clock (gaps between them were "
        "zero-filled in the sorted binary, overlaps skipped)",
    )
    columns = {
        "segment": "gate/trigger (SpikeGLX) or recording (Open Ephys) of the file",
        "file": "the file, relative to the session folder",
        "first_sample": "the file's first sample on the acquisition clock",
        "binary_start": "row of the sorted binary where the file's samples start",
        "n_samples": "samples of the file in the sorted binary",
        "skipped_samples": "samples at the file's start skipped as an overlap with the file before",
        "zeros_before": "zero samples filled in before the file (a gap)",
    }
    for name, text in columns.items():
        table.add_column(name=name, description=text)
    fs = source.sampling_frequency
    for s in source.timeline:
        table.add_interval(
            start_time=s.acquisition_start / fs,
            stop_time=(s.acquisition_start + s.n_samples) / fs,
            segment=s.label,
            file=s.file,
            first_sample=int(s.first_sample),
            binary_start=int(s.binary_start),
            n_samples=int(s.n_samples),
            skipped_samples=int(s.file_offset),
            zeros_before=int(s.zeros_before),
        )
    return table


def write_units_nwb(source: UnitsSource, path: Path) -> Path:
    """Write the NWB file to ``path`` (the caller makes it atomic); spike times streamed from a sorted index."""
    from pynwb import NWBHDF5IO, NWBFile

    lineage = source.lineage
    nwbfile = NWBFile(
        session_description=source.description,
        identifier=source.identifier,
        session_start_time=source.session_start_time,
        session_id=source.session_id,
        source_script=f"ks_platform {lineage.get('versions', {}).get('ks_platform', '?')} (git "
        f"{lineage.get('git_commit') or 'unknown'})",
        source_script_file_name="ks_platform/core/nwb_export.py",
        data_collection=json.dumps(lineage, sort_keys=True, default=str),
    )
    if source.subject:
        from pynwb.file import Subject

        nwbfile.subject = Subject(**{k: v for k, v in source.subject.items() if k != LOCATION_KEY})
    _electrodes(nwbfile, source)
    nwbfile.units = _units(nwbfile, source)
    if source.timeline:
        nwbfile.add_time_intervals(_segments_table(source))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path


SUBJECT_KEYS = ("subject_id", "species", "sex", "age", "date_of_birth", "strain", "genotype", "description")
#: Not a Subject field: where the probe sits (an Allen CCF term for mice, e.g. "VISp"); electrodes say "unknown"
#: without.
LOCATION_KEY = "electrode_location"
SUBJECT_FIX = (
    'write {"subject_id": "mouse12", "species": "Mus musculus", "sex": "F", "age": "P90D"} (sex M/F/U/O, age ISO 8601)'
)


def read_subject(session_dir: Path) -> dict[str, Any] | None:
    """The animal, from ``subject.json`` in the session folder (NWB ``Subject`` fields); None without one."""
    from ks_platform.core.errors import SessionInputError

    path = Path(session_dir) / SUBJECT_JSON
    if not path.is_file():
        return None
    try:
        subject = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SessionInputError(path, f"not valid JSON ({exc})", SUBJECT_FIX) from None
    unknown = sorted(set(subject) - {*SUBJECT_KEYS, LOCATION_KEY}) if isinstance(subject, dict) else ["(not an object)"]
    missing = [k for k in ("subject_id", "species", "sex") if not isinstance(subject, dict) or not subject.get(k)]
    if unknown or missing or subject["sex"] not in ("M", "F", "U", "O"):
        raise SessionInputError(path, f"unknown keys {unknown}, missing {missing} or sex not M/F/U/O", SUBJECT_FIX)
    if "date_of_birth" in subject:
        subject["date_of_birth"] = dt.datetime.fromisoformat(subject["date_of_birth"]).replace(tzinfo=lab_timezone())
    return {k: v for k, v in subject.items()}


def lab_timezone() -> ZoneInfo:
    """The lab's time zone for recording clocks without one (``KS_PLATFORM_TIMEZONE``, default UTC)."""
    return ZoneInfo(os.environ.get(TIMEZONE_ENV, "UTC") or "UTC")


_OE_FOLDER = re.compile(r"(\d{4}-\d{2}-\d{2})_(\d{2})-(\d{2})-(\d{2})")


def session_start_time(
    manifest: dict[str, Any], tz: ZoneInfo | None = None, session_dir: Path | None = None
) -> dt.datetime:
    """When the recording started: SpikeGLX ``fileCreateTime``, an Open Ephys ``YYYY-MM-DD_HH-MM-SS`` folder, else
    midnight of the recording date; in the lab's time zone (the acquisition clocks are local and carry none)."""
    tz = tz or lab_timezone()
    meta = Path(str(manifest.get("probe_file", "")))
    if session_dir is not None and manifest.get("session_dir") and meta.is_relative_to(manifest["session_dir"]):
        meta = Path(session_dir) / meta.relative_to(manifest["session_dir"])  # the landing folder as it is now
    if meta.suffix == ".meta" and meta.is_file():
        for line in meta.read_text(errors="replace").splitlines():
            if line.startswith("fileCreateTime="):
                return dt.datetime.fromisoformat(line.split("=", 1)[1].strip()).replace(tzinfo=tz)
    for name in manifest.get("data_files", []):
        match = _OE_FOLDER.search(str(name))
        if match:
            return dt.datetime.fromisoformat(f"{match[1]}T{match[2]}:{match[3]}:{match[4]}").replace(tzinfo=tz)
    return dt.datetime.combine(dt.date.fromisoformat(manifest["recording_date"]), dt.time(), tzinfo=tz)


def probe_electrodes(store: SessionStore) -> tuple[pd.DataFrame, dict[str, str]]:
    """Electrodes in Kilosort's channel order (position, shank, binary row) and the device of the probe."""
    from ks_platform.core.probes import load_probe_map

    ks_probe, manifest = load_probe_map(store)
    table = pd.DataFrame(
        {
            "x_um": ks_probe["xc"],
            "y_um": ks_probe["yc"],
            "shank": np.asarray(ks_probe["kcoords"]).astype(int),
            "channel": ks_probe["chanMap"],
        }
    )
    model = manifest.get("model_name") or manifest.get("probe_kind") or "probe"
    device = {
        "name": f"probe_{store.key.rsplit('__', 1)[-1]}",
        "description": f"{model} ({manifest.get('probe_kind', '')}, {manifest.get('n_contacts')} contacts)",
        "manufacturer": manifest.get("manufacturer") or "unknown",
    }
    return table, device


def mean_waveforms(store: SessionStore, samples: np.ndarray, clusters: np.ndarray, max_spikes: int = 300) -> np.ndarray:
    """Mean waveform (V) per unit on every electrode, from up to ``max_spikes`` spikes, on the 300 Hz high-passed binary."""
    import spikeinterface.core as si

    from ks_platform.core.quality import spike_band_recording

    recording, _ = spike_band_recording(store)
    sorting = si.NumpySorting.from_samples_and_labels(
        [samples.astype(np.int64)], [clusters.astype(np.int64)], recording.sampling_frequency
    )
    analyzer = si.create_sorting_analyzer(sorting, recording, sparse=False, format="memory")
    analyzer.compute(
        {"random_spikes": {"max_spikes_per_unit": max_spikes, "seed": 0}, "templates": {}}, n_jobs=1, progress_bar=False
    )
    return analyzer.get_extension("templates").get_data(operator="average") * 1e-6


@dataclass(frozen=True)
class NwbExport:
    path: Path
    n_units: int
    n_spikes: int
    curation_status: str
    identifier: str


def store_units_source(
    store: SessionStore, session_dir: Path | None = None, with_waveforms: bool = True
) -> tuple[UnitsSource, str]:
    """The session's units as the curation record says (curated merges applied when it applies), and its status."""
    from ks_platform.core import curation

    record = curation.current_record(store) or curation.record_curation(store)
    samples = np.load(store.sorting_dir / "spike_times.npy", mmap_mode="r").ravel()
    clusters = curation.curated_spike_clusters(store, record)
    manifest = read_json(store.raw_manifest)
    electrodes, device = probe_electrodes(store)
    metrics_csv = store.metrics_dir / METRICS_CSV
    lineage = {
        **read_json(store.sorting_dir / LINEAGE_FILE),
        "kilosort_settings": read_json(store.sorting_dir / EFFECTIVE_SETTINGS_FILE).get("as_run"),
    }
    folder = session_dir or manifest.get("session_dir")
    subject = read_subject(Path(folder)) if folder else None
    lineage["curation"] = {
        k: record.to_json()[k]
        for k in (
            "status",
            "sorting_version",
            "curation_basis",
            "fingerprint",
            "recorded_at",
            "merges",
            "splits",
            "note",
        )
    }
    seed = f"ks_platform:{store.key}:{record.sorting_version}:{record.fingerprint if record.status == curation.CURATED else '-'}"
    source = UnitsSource(
        spike_samples=samples,
        spike_clusters=clusters,
        sampling_frequency=float(manifest["sampling_frequency"]),
        session_start_time=session_start_time(manifest, session_dir=session_dir),
        timeline=tuple(segments_from_manifest(manifest)),
        identifier=str(uuid.uuid5(uuid.NAMESPACE_URL, seed)),
        session_id=store.key,
        electrodes=electrodes,
        device=device,
        kilosort_labels=record.kilosort_labels,
        curated_labels=record.labels if record.status == curation.CURATED else None,
        metrics=pd.read_csv(metrics_csv) if metrics_csv.is_file() else None,
        waveforms=mean_waveforms(store, np.asarray(samples), clusters) if with_waveforms else None,
        lineage=lineage,
        subject=subject,
        location=(subject or {}).get(LOCATION_KEY, "unknown"),
        description=f"Kilosort {lineage.get('versions', {}).get('kilosort', '4')} units of {store.key}, curation: "
        f"{record.status}",
    )
    return source, record.status


def export_units_nwb(
    store: SessionStore,
    session_dir: Path | None = None,
    verify: Callable[[], None] | None = None,
    progress: Progress | None = None,
) -> NwbExport:
    """Write ``<store>/<key>/nwb/units.nwb`` atomically from the sorting, its curation, metrics and probe; ``verify``
    runs before it is published (raises when the input changed); ``progress`` hears of each stage."""
    stages = StageProgress(progress, ["units, mean waveforms and metrics", "writing the NWB file"])
    stages.start("units, mean waveforms and metrics")
    source, status = store_units_source(store, session_dir)
    with atomic_directory(store.dir / "nwb") as staged:
        stages.start("writing the NWB file")
        write_units_nwb(source, staged / NWB_FILE)
        if verify is not None:
            verify()
    stages.finish(f"{int(source.spike_clusters.size)} spikes")
    return NwbExport(
        store.dir / "nwb" / NWB_FILE,
        len(np.unique(source.spike_clusters)),
        int(source.spike_clusters.size),
        status,
        source.identifier,
    )


def inspect_nwb(path: Path) -> list[dict[str, str]]:
    """nwbinspector's messages for the file: ``importance``, ``check``, ``location``, ``message``."""
    from nwbinspector import inspect_nwbfile

    return [
        {
            "importance": m.importance.name,
            "check": m.check_function_name,
            "location": str(m.location),
            "message": m.message,
        }
        for m in inspect_nwbfile(nwbfile_path=str(path))
    ]


#: nwbinspector importances that fail the export.
BLOCKING = ("CRITICAL", "BEST_PRACTICE_VIOLATION", "ERROR", "PYNWB_VALIDATION")

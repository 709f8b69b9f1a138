"""Units to NWB: one probe's (curated) sorting as an NWB file with pynwb, streamed with bounded memory, versioned.

The Units table holds spike times in seconds, Kilosort's label, the Phy label and where each curated unit came from
(merged / split Kilosort clusters) when a curation applies, the quality metrics of ``unit_metrics``, mean waveforms
and each unit's electrode group (the shank of its largest mean waveform); the electrodes table holds the probe
geometry (``rel_x``/``rel_y``) with one electrode group per shank. Spike times are written per unit from one sorted
index (``np.lexsort``) through an hdmf ``GenericDataChunkIterator``: no Python list of spikes is ever built.

What the lab shares comes from the session folder: ``subject.json`` (NWB ``Subject``) and ``session_metadata.json``
(experimenter, institution, lab, keywords, session description, protocol, …), both validated with the fix named.

**Versions.** A file is named by what it contains: its identifier is a UUID derived from the spike trains, the
curation, the metadata, the metrics, the probe and the lineage, so any change gives a new identifier (and a new
``units_nwb`` data version) and a new file ``nwb/versions/<identifier>.nwb``. Files are never overwritten or deleted:
``nwb/versions.json`` lists every one (which sorting, which curation, which metadata), ``nwb/units.nwb`` links to
the current one. When a re-sort makes the latest curation stale, that curation keeps (or gets) its own file.

Provenance: ``general/source_script`` names ks_platform and its commit, ``general/was_generated_by`` the software,
``general/data_collection`` holds the lineage as JSON without host names or local paths (why there:
docs/decisions.md, "NWB export: where provenance goes"); the store keeps the full lineage.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import xxhash
from hdmf.data_utils import GenericDataChunkIterator

from ks_platform.core.errors import SessionInputError
from ks_platform.core.names import (
    EFFECTIVE_SETTINGS_FILE,
    LINEAGE_FILE,
    MANIFEST_NAME,
    METRICS_CSV,
    NWB_FILE,
    SUBJECT_JSON,
    TIMEZONE_ENV,
)
from ks_platform.core.progress import Progress, StageProgress
from ks_platform.core.store import (
    TEMP_MARK,
    SessionStore,
    read_json,
    replace_path,
    session_lock,
    write_json_atomic,
)
from ks_platform.core.timeline import TimelineSegment, segments_from_manifest, to_acquisition_seconds

#: The session folder's metadata for sharing (NWBFile fields), beside ``subject.json``.
SESSION_METADATA_JSON = "session_metadata.json"
#: Bump when the file's layout changes: a new layout is a new version of every file.
NWB_LAYOUT = "units-nwb-2"
VERSIONS_DIR, VERSIONS_JSON = "versions", "versions.json"

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
    subject: dict[str, Any] | None = None
    location: str = "unknown"
    #: Where each file of the recording lies on the acquisition clock (spike times are written on that clock).
    timeline: tuple[TimelineSegment, ...] = ()
    #: NWBFile fields from ``session_metadata.json`` (experimenter, institution, lab, keywords, …).
    session: dict[str, Any] = field(default_factory=dict)
    #: Kilosort clusters each curated unit was merged from / took part of (split), when a curation applies.
    merged_from: dict[int, list[int]] = field(default_factory=dict)
    split_from: dict[int, list[int]] = field(default_factory=dict)
    #: bombcell's label per Kilosort cluster and the unit's track id across days, for the current sorting only.
    bombcell_labels: dict[int, str] | None = None
    track_ids: dict[int, int] | None = None


def unit_index(clusters: np.ndarray, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(unit_ids, ends, order)``: spikes ordered by unit then time, and where each unit's spikes end."""
    order = np.lexsort((samples, clusters))
    unit_ids, counts = np.unique(clusters, return_counts=True)
    return unit_ids.astype(np.int64), np.cumsum(counts).astype(np.int64), order


def _electrodes(nwbfile, source: UnitsSource) -> dict[int, Any]:
    """The device, one electrode group per shank and the electrodes table; returns the groups by shank."""
    device = nwbfile.create_device(
        name=source.device["name"], description=source.device["description"], manufacturer=source.device["manufacturer"]
    )
    groups = {}
    for shank in sorted(source.electrodes["shank"].unique()):
        groups[int(shank)] = nwbfile.create_electrode_group(
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
            group=groups[int(row.shank)],
            location=source.location,
            rel_x=float(row.x_um),
            rel_y=float(row.y_um),
            channel=int(row.channel),
        )
    return groups


def _column(name: str, description: str, data) -> Any:
    from hdmf.common import VectorData

    return VectorData(name=name, description=description, data=data)


def _units(nwbfile, source: UnitsSource, groups: dict[int, Any]):
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
        columns.append(
            _column(
                "merged_from",
                "Kilosort clusters merged into this unit in Phy, comma-separated (empty: not a merge)",
                [",".join(map(str, source.merged_from.get(u, []))) for u in ids],
            )
        )
        columns.append(
            _column(
                "split_from",
                "Kilosort clusters this unit took part of the spikes of (a split in Phy), comma-separated",
                [",".join(map(str, source.split_from.get(u, []))) for u in ids],
            )
        )
    columns += label_and_track_columns(source, ids)
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
        peak = np.ptp(source.waveforms, axis=1).argmax(axis=1)  # the electrode of each unit's largest waveform
        shanks = source.electrodes["shank"].to_numpy().astype(int)
        columns.append(
            _column(
                "electrode_group",
                "electrode group (shank) of the unit's largest mean waveform",
                [groups[int(shanks[e])] for e in peak],
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
    versions = lineage.get("versions", {})
    generated_by = [["ks_platform", str(versions.get("ks_platform", "?"))]]
    generated_by += [
        [name, str(versions[name])] for name in ("kilosort", "spikeinterface", "phylib") if versions.get(name)
    ]
    session = dict(source.session)
    nwbfile = NWBFile(
        session_description=session.pop("session_description", None) or source.description,
        identifier=source.identifier,
        session_start_time=source.session_start_time,
        session_id=source.session_id,
        source_script=f"ks_platform {versions.get('ks_platform', '?')} (git {lineage.get('git_commit') or 'unknown'})",
        source_script_file_name="ks_platform/core/nwb_export.py",
        was_generated_by=generated_by,
        data_collection=json.dumps(lineage, sort_keys=True, default=str),
        **session,
    )
    if source.subject:
        from pynwb.file import Subject

        nwbfile.subject = Subject(**{k: v for k, v in source.subject.items() if k != LOCATION_KEY})
    groups = _electrodes(nwbfile, source)
    nwbfile.units = _units(nwbfile, source, groups)
    if source.timeline:
        nwbfile.add_time_intervals(_segments_table(source))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path


# --- What the lab shares: subject.json and session_metadata.json ----------------------------------------------------

SUBJECT_KEYS = (
    "subject_id",
    "species",
    "sex",
    "age",
    "age__reference",
    "date_of_birth",
    "strain",
    "genotype",
    "description",
    "weight",
)
#: Not a Subject field: where the probe sits (an Allen CCF term for mice, e.g. "VISp"); electrodes say "unknown"
#: without.
LOCATION_KEY = "electrode_location"
SUBJECT_FIX = (
    'write {"subject_id": "mouse12", "species": "Mus musculus", "sex": "F", "age": "P90D"} (sex M/F/U/O, age an ISO '
    '8601 duration or date_of_birth "2025-12-01"; optional: strain, genotype, description, weight "25 g", '
    "age__reference birth/gestational, electrode_location)"
)
#: NWBFile fields a ``session_metadata.json`` may set: text, and lists of text.
SESSION_TEXT_KEYS = (
    "session_description",
    "experiment_description",
    "institution",
    "lab",
    "protocol",
    "notes",
    "pharmacology",
    "surgery",
    "virus",
    "stimulus_notes",
    "slices",
)
SESSION_LIST_KEYS = ("experimenter", "keywords", "related_publications")
SESSION_FIX = (
    'write {"experimenter": ["Doe, Jane"], "institution": "…", "lab": "…", "keywords": ["…"], '
    '"session_description": "…", "protocol": "…"} (experimenter as "Last, First"; publications as "doi:…"; '
    f"also: {', '.join(k for k in SESSION_TEXT_KEYS + SESSION_LIST_KEYS if k not in ('experimenter', 'keywords'))})"
)
#: DANDI's person-name pattern (dandischema ``NAME_PATTERN``), as nwbinspector checks it.
NAME_PATTERN = re.compile(r"^([\w\s\-\.']+),\s+([\w\s\-\.']+)$")
SPECIES_PATTERN = re.compile(r"([A-Z][a-z]* [a-z]+)|(http://purl\.obolibrary\.org/obo/NCBITaxon_\d+)")
DURATION = r"P(?!$)(\d+(\.\d+)?Y)?(\d+(\.\d+)?M)?(\d+(\.\d+)?W)?(\d+(\.\d+)?D)?(T(?=\d)(\d+(\.\d+)?H)?(\d+(\.\d+)?M)?(\d+(\.\d+)?S)?)?"
AGE_PATTERN = re.compile(rf"{DURATION}|({DURATION})?/({DURATION})?")
WEIGHT_PATTERN = re.compile(r"(?i)^\d+(\.\d+)? (kg|g|mg|ug|μg|ng|pg)$")


def _read_object(path: Path, fix: str) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SessionInputError(path, f"not valid JSON ({exc})", fix) from None
    if not isinstance(payload, dict):
        raise SessionInputError(path, f"a JSON {type(payload).__name__}, not an object", fix)
    return payload


def read_subject(session_dir: Path) -> dict[str, Any] | None:
    """The animal, from ``subject.json`` in the session folder (NWB ``Subject`` fields, checked as nwbinspector and
    DANDI check them); None without one."""
    path = Path(session_dir) / SUBJECT_JSON
    if not path.is_file():
        return None
    subject = _read_object(path, SUBJECT_FIX)

    def refuse(problem: str) -> SessionInputError:
        return SessionInputError(path, problem, SUBJECT_FIX)

    unknown = sorted(set(subject) - {*SUBJECT_KEYS, LOCATION_KEY})
    if unknown:
        raise refuse(f"unknown keys {unknown} (NWB Subject fields: {', '.join(SUBJECT_KEYS)}, and {LOCATION_KEY})")
    if not_text := sorted(k for k, v in subject.items() if not isinstance(v, str) or not v.strip()):
        raise refuse(f"{', '.join(not_text)} must be non-empty text")
    missing = [k for k in ("subject_id", "species", "sex") if k not in subject]
    if missing:
        raise refuse(f"missing {', '.join(missing)}")
    if "age" not in subject and "date_of_birth" not in subject:
        raise refuse("neither age nor date_of_birth: DANDI needs one")
    if "/" in subject["subject_id"]:
        raise refuse(f"subject_id {subject['subject_id']!r} contains '/'")
    if subject["sex"] not in ("M", "F", "U", "O"):
        raise refuse(f"sex {subject['sex']!r} is not M, F, U or O")
    if not SPECIES_PATTERN.fullmatch(subject["species"]):
        raise refuse(f"species {subject['species']!r} is neither a Latin binomial ('Mus musculus') nor an NCBI URL")
    if "age" in subject and not AGE_PATTERN.fullmatch(subject["age"]):
        raise refuse(f"age {subject['age']!r} is not an ISO 8601 duration ('P90D', 'P12W', range 'P90D/P120D')")
    if subject.get("age__reference", "birth") not in ("birth", "gestational"):
        raise refuse(f"age__reference {subject['age__reference']!r} is not birth or gestational")
    if "weight" in subject and not WEIGHT_PATTERN.fullmatch(subject["weight"]):
        raise refuse(f"weight {subject['weight']!r} is not a number and a unit ('25 g', '0.025 kg')")
    if "date_of_birth" in subject:
        try:
            born = dt.datetime.fromisoformat(subject["date_of_birth"])
        except ValueError:
            raise refuse(f"date_of_birth {subject['date_of_birth']!r} is not an ISO date ('2025-12-01')") from None
        subject["date_of_birth"] = born if born.tzinfo else born.replace(tzinfo=lab_timezone())
    return subject


def read_session_metadata(session_dir: Path) -> dict[str, Any]:
    """NWBFile fields for sharing from ``session_metadata.json`` in the session folder ({} without one); lists are
    lists of text, ``experimenter`` in DANDI's "Last, First" form."""
    path = Path(session_dir) / SESSION_METADATA_JSON
    if not path.is_file():
        return {}
    payload = _read_object(path, SESSION_FIX)

    def refuse(problem: str) -> SessionInputError:
        return SessionInputError(path, problem, SESSION_FIX)

    unknown = sorted(set(payload) - {*SESSION_TEXT_KEYS, *SESSION_LIST_KEYS})
    if unknown:
        raise refuse(f"unknown keys {unknown}")
    session: dict[str, Any] = {}
    for key, value in payload.items():
        if key in SESSION_LIST_KEYS:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
                raise refuse(f"{key} must be a non-empty list of text")
            session[key] = [v.strip() for v in items]
        elif not isinstance(value, str) or not value.strip():
            raise refuse(f"{key} must be non-empty text")
        else:
            session[key] = value.strip()
    if bad := [name for name in session.get("experimenter", []) if not NAME_PATTERN.fullmatch(name)]:
        raise refuse(f"experimenter {bad} not written 'Last, First' as DANDI requires")
    if bad := [p for p in session.get("related_publications", []) if not p.lower().startswith(("doi:", "http"))]:
        raise refuse(f"related_publications {bad} are neither 'doi:…' nor a URL")
    return session


def metadata_version(session_dir: Path | None) -> str:
    """Hash of the validated ``subject.json`` and ``session_metadata.json`` (``none`` without either)."""
    if session_dir is None:
        return "none"
    payload = {"subject": read_subject(session_dir), "session": read_session_metadata(session_dir)}
    if payload == {"subject": None, "session": {}}:
        return "none"
    return xxhash.xxh3_64_hexdigest(json.dumps(payload, sort_keys=True, default=str).encode())


def lab_timezone() -> ZoneInfo:
    """The lab's time zone for recording clocks without one (``KS_PLATFORM_TIMEZONE``, default UTC)."""
    return ZoneInfo(os.environ.get(TIMEZONE_ENV, "UTC") or "UTC")


# --- No host names or local paths in a shared file ------------------------------------------------------------------

#: Lineage keys that name a machine or a local folder: kept in the store, left out of shared files.
PRIVATE_KEYS = ("host", "hostname", "node", "prefix", "exported_on_host")


def shareable(value: Any, bases: tuple[Path, ...] = (), host: str | None = None) -> Any:
    """``value`` (lineage JSON) without host names and local paths: keys of ``PRIVATE_KEYS`` dropped, paths under one
    of ``bases`` made relative to it, other absolute paths reduced to their file name, the host's name replaced."""
    host = host or socket.gethostname()
    if isinstance(value, dict):
        return {k: shareable(v, bases, host) for k, v in value.items() if k not in PRIVATE_KEYS}
    if isinstance(value, (list, tuple)):
        return [shareable(v, bases, host) for v in value]
    if isinstance(value, str):
        if value.startswith("/") and "\n" not in value:
            path = Path(value)
            for base in bases:
                if path.is_relative_to(base):
                    return str(path.relative_to(base))
            return path.name
        return value.replace(host, "<host>") if host and len(host) > 2 else value
    return value


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


# --- From the store: the current sorting and its curation, or a kept earlier curation -------------------------------


@dataclass(frozen=True)
class NwbExport:
    path: Path
    n_units: int
    n_spikes: int
    curation_status: str
    identifier: str
    #: Every NWB version of the session (``nwb/versions.json``), oldest first.
    versions: list[dict[str, Any]] = field(default_factory=list)
    #: Identifiers of the files this export wrote (none when the current content was already written).
    written: list[str] = field(default_factory=list)


def content_identifier(source: UnitsSource, waveform_inputs: str) -> str:
    """A UUID of everything the file holds: spike trains, units, metadata, probe, timeline and lineage."""
    hasher = xxhash.xxh3_128()
    for array in (source.spike_samples, source.spike_clusters):
        hasher.update(memoryview(np.ascontiguousarray(array)))  # the buffer itself: no copy of the spikes
    described = {
        "layout": NWB_LAYOUT,
        "fs": source.sampling_frequency,
        "start": source.session_start_time.isoformat(),
        "session_id": source.session_id,
        "electrodes": source.electrodes.to_dict(orient="list"),
        "device": source.device,
        "kilosort_labels": source.kilosort_labels,
        "curated_labels": source.curated_labels,
        "merged_from": source.merged_from,
        "split_from": source.split_from,
        "metrics": None if source.metrics is None else source.metrics.to_csv(index=False),
        "waveforms": waveform_inputs if source.waveforms is not None else None,
        "lineage": source.lineage,
        "description": source.description,
        "subject": source.subject,
        "session": source.session,
        "location": source.location,
        "timeline": [s.to_json() for s in source.timeline],
        "bombcell_labels": source.bombcell_labels,
        "track_ids": source.track_ids,
    }
    hasher.update(json.dumps(described, sort_keys=True, default=str).encode())
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ks_platform:nwb:{hasher.hexdigest()}"))


def _binary_checksum(store: SessionStore) -> str | None:
    manifest = store.binary_dir / MANIFEST_NAME
    return read_json(manifest).get("checksum") if manifest.is_file() else None


def _units_source(
    store: SessionStore,
    session_dir: Path | None,
    sorting: Path,
    clusters: np.ndarray,
    kilosort: dict[int, str],
    curation_facts: dict[str, Any],
    curated: tuple[dict[int, str], dict[int, list[int]], dict[int, list[int]]] | None,
    metrics: Path | None,
    with_waveforms: bool,
) -> UnitsSource:
    """The file's content from one sorting folder (``sorting/`` or an archived one) and the clusters to write."""
    samples = np.load(sorting / "spike_times.npy", mmap_mode="r").ravel()
    manifest = read_json(store.raw_manifest)
    electrodes, device = probe_electrodes(store)
    named = session_dir or manifest.get("session_dir")
    folder = Path(named) if named else None
    subject = read_subject(folder) if folder is not None else None
    session = read_session_metadata(folder) if folder is not None else {}
    lineage = {
        **(read_json(sorting / LINEAGE_FILE) if (sorting / LINEAGE_FILE).is_file() else {}),
        "kilosort_settings": read_json(sorting / EFFECTIVE_SETTINGS_FILE).get("as_run")
        if (sorting / EFFECTIVE_SETTINGS_FILE).is_file()
        else None,
        "curation": curation_facts,
        "metadata_version": metadata_version(folder),
    }
    bases = tuple(p for p in (folder, store.dir, store.root) if p is not None)
    lineage = shareable(lineage, tuple(Path(b).resolve() for b in bases) + bases)
    # Mean waveforms need the binary this sorting was made from: the current one, unless the recording changed.
    binary = _binary_checksum(store)
    same_binary = binary is not None and lineage.get("input_checksum") in (None, binary)
    waveforms = mean_waveforms(store, np.asarray(samples), clusters) if with_waveforms and same_binary else None
    labels, merged, split = curated if curated is not None else (None, {}, {})
    status = curation_facts.get("status", "uncurated")
    bombcell_labels, track_ids = labels_and_tracks(store, sorting)
    source = UnitsSource(
        spike_samples=samples,
        spike_clusters=clusters,
        sampling_frequency=float(manifest["sampling_frequency"]),
        session_start_time=session_start_time(manifest, session_dir=session_dir),
        timeline=tuple(segments_from_manifest(manifest)),
        identifier="",
        session_id=store.key,
        electrodes=electrodes,
        device=device,
        kilosort_labels=kilosort,
        curated_labels=labels,
        metrics=pd.read_csv(metrics) if metrics is not None and metrics.is_file() else None,
        waveforms=waveforms,
        lineage=lineage,
        subject=subject,
        location=(subject or {}).get(LOCATION_KEY, "unknown"),
        session=session,
        merged_from=merged,
        split_from=split,
        bombcell_labels=bombcell_labels,
        track_ids=track_ids,
        description=f"{sorter_name(lineage)} units of {store.key}, curation: {status}",
    )
    source.identifier = content_identifier(source, f"mean_waveforms:300:seed0:{binary}")
    return source


def _curation_facts(record_json: dict[str, Any]) -> dict[str, Any]:
    keys = ("status", "sorting_version", "curation_basis", "fingerprint", "saved_at", "merges", "splits", "note")
    return {k: record_json.get(k) for k in keys}


def sorter_name(lineage: dict[str, Any]) -> str:
    """The sorter of a sorting's lineage as the NWB description names it (``Kilosort 4.1.7``, ``SpykingCircus2 …``)."""
    sorter = lineage.get("sorter") or {"name": "kilosort4"}
    if sorter.get("name") == "kilosort4":
        return f"Kilosort {lineage.get('versions', {}).get('kilosort', '4')}"
    return f"{sorter.get('label', sorter.get('name'))} {sorter.get('version', '')}".strip()


def store_units_source(
    store: SessionStore, session_dir: Path | None = None, with_waveforms: bool = True
) -> tuple[UnitsSource, str]:
    """The session's units as the curation record says (curated merges applied when it applies), and its status."""
    from ks_platform.core import curation

    record = curation.current_record(store) or curation.record_curation(store)
    clusters = curation.curated_spike_clusters(store, record)
    applies = record.status == curation.CURATED
    metrics = store.metrics_dir / METRICS_CSV
    source = _units_source(
        store,
        session_dir,
        store.sorting_dir,
        clusters,
        record.kilosort_labels,
        _curation_facts(record.to_json()),
        (record.labels, record.merges, record.split_from) if applies else None,
        metrics,
        with_waveforms,
    )
    return source, record.status


def kept_units_source(
    store: SessionStore, basis: str, fingerprint: str, session_dir: Path | None = None, with_waveforms: bool = True
) -> UnitsSource:
    """A kept curation (of the current or an earlier sorting) as an NWB file's content."""
    from ks_platform.core import curation

    kept = curation.kept_curation(store, basis, fingerprint)
    found = kept.curation
    facts = {
        "status": curation.CURATED,
        "sorting_version": basis,
        "curation_basis": basis,
        "fingerprint": fingerprint,
        "saved_at": kept.saved_at,
        "merges": found.merges,
        "splits": found.splits,
        "note": f"curation kept in curation/{curation.HISTORY}/{kept.snapshot.name}",
    }
    metrics = kept.snapshot / METRICS_CSV
    return _units_source(
        store,
        session_dir,
        kept.sorting,
        kept.spike_clusters(),
        kept.kilosort_labels,
        facts,
        (found.labels, found.merges, found.split_from),
        metrics if metrics.is_file() else None,
        with_waveforms,
    )


# --- Versions: one file per content, never overwritten, listed in nwb/versions.json ---------------------------------


def nwb_dir(store: SessionStore) -> Path:
    return store.dir / "nwb"


def list_versions(store: SessionStore) -> dict[str, Any]:
    """``nwb/versions.json``: ``{"current": identifier, "versions": [...], "last_export": [identifiers]}``."""
    path = nwb_dir(store) / VERSIONS_JSON
    return read_json(path) if path.is_file() else {"current": None, "versions": [], "last_export": []}


def _adopt_legacy_file(store: SessionStore, index: dict[str, Any]) -> None:
    """A ``units.nwb`` written before versions existed becomes a version of its own (moved, never deleted, listed in
    ``index`` and on disk at once, still the current file until a new one is published)."""
    import h5py

    legacy = nwb_dir(store) / NWB_FILE
    if not legacy.is_file() or legacy.is_symlink():
        return
    with h5py.File(legacy, "r") as handle:
        identifier = handle.attrs.get("identifier")
        identifier = identifier.decode() if isinstance(identifier, bytes) else str(identifier or uuid.uuid4())
    target = nwb_dir(store) / VERSIONS_DIR / f"{identifier}.nwb"
    if target.exists():  # the same identifier as a version already kept: keep both files
        identifier = f"{identifier}-{uuid.uuid4().hex[:8]}"
        target = target.with_name(f"{identifier}.nwb")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(legacy, target)
    index["versions"].append(
        {
            "identifier": identifier,
            "file": f"{VERSIONS_DIR}/{target.name}",
            "written_at": dt.datetime.fromtimestamp(target.stat().st_mtime, dt.timezone.utc).isoformat(),
            "note": "written before NWB versions were kept",
        }
    )
    index["current"] = identifier
    write_json_atomic(nwb_dir(store) / VERSIONS_JSON, index)  # listed and linked before anything else happens
    _point_current(store, identifier)


def _point_current(store: SessionStore, identifier: str) -> None:
    """``nwb/units.nwb`` → ``versions/<identifier>.nwb`` (a relative link, swapped atomically)."""
    link = nwb_dir(store) / f".{NWB_FILE}{TEMP_MARK}{uuid.uuid4().hex[:8]}"
    os.symlink(f"{VERSIONS_DIR}/{identifier}.nwb", link)
    replace_path(link, nwb_dir(store) / NWB_FILE)


def _publish(
    store: SessionStore,
    source: UnitsSource,
    facts: dict[str, Any],
    verify: Callable[[], None] | None,
    current: bool,
) -> tuple[dict[str, Any], bool]:
    """Write ``source`` as ``nwb/versions/<identifier>.nwb`` unless that content is already there; list it; make it
    the current file when ``current``. Nothing is created under ``nwb/`` when writing or ``verify`` fails."""
    final = nwb_dir(store) / VERSIONS_DIR / f"{source.identifier}.nwb"
    index = list_versions(store)
    _adopt_legacy_file(store, index)
    written = False
    if not final.is_file():
        staged = store.dir / f".{source.identifier}{TEMP_MARK}{uuid.uuid4().hex[:8]}.nwb"
        try:
            write_units_nwb(source, staged)
            if verify is not None:
                verify()
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(staged, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(staged, final)
        finally:
            staged.unlink(missing_ok=True)
        written = True
    elif verify is not None:
        verify()
    entry = next((v for v in index["versions"] if v["identifier"] == source.identifier), None)
    if entry is None:
        entry = {
            "identifier": source.identifier,
            "file": f"{VERSIONS_DIR}/{final.name}",
            "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "sorting_version": facts.get("sorting_version"),
            "sorting_checksum": facts.get("sorting_checksum"),
            "curation_status": facts.get("status"),
            "curation_fingerprint": facts.get("fingerprint") if facts.get("status") == "curated" else None,
            "curation_saved_at": facts.get("saved_at") if facts.get("status") == "curated" else None,
            "metadata_version": source.lineage.get("metadata_version"),
            "n_units": int(len(np.unique(source.spike_clusters))),
            "n_spikes": int(source.spike_clusters.size),
            "size_bytes": final.stat().st_size,
            "sha256": file_sha256(final),
        }
        index["versions"].append(entry)
    if current:
        index["current"] = source.identifier
    write_json_atomic(nwb_dir(store) / VERSIONS_JSON, index)
    if current:
        _point_current(store, source.identifier)
    return entry, written


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_units_nwb(
    store: SessionStore,
    session_dir: Path | None = None,
    verify: Callable[[], None] | None = None,
    progress: Progress | None = None,
) -> NwbExport:
    """Write the current sorting and the curation that applies to it as a new NWB version (``nwb/units.nwb`` then
    links to it). When the latest curation was made on an earlier sorting (STALE), that curation keeps its own
    version: written now if it has none yet. ``verify`` runs before anything is published (raises when the input
    changed); ``progress`` hears of each stage. Holds the session's write lock."""
    from ks_platform.core import curation

    stages = StageProgress(progress, ["units, mean waveforms and metrics", "writing the NWB file"])
    with session_lock(store):
        stages.start("units, mean waveforms and metrics")
        source, status = store_units_source(store, session_dir)
        stages.start("writing the NWB file")
        record = curation.load_record(store)
        facts = {**_curation_facts(record.to_json()), "sorting_checksum": record.sorting_checksum}
        _, wrote = _publish(store, source, facts, verify, current=True)
        published, written = [source.identifier], [source.identifier] if wrote else []
        if record.status == curation.STALE and record.curation_basis and record.fingerprint:
            exported = [v.get("curation_fingerprint") for v in list_versions(store)["versions"]]
            if record.fingerprint not in exported:
                kept = _export_kept(store, record.curation_basis, record.fingerprint, session_dir, verify)
                published.append(kept[0])
                written += kept[1]
        _set_last_export(store, published)
    stages.finish(f"{int(source.spike_clusters.size)} spikes")
    return NwbExport(
        nwb_dir(store) / NWB_FILE,
        len(np.unique(source.spike_clusters)),
        int(source.spike_clusters.size),
        status,
        source.identifier,
        list_versions(store)["versions"],
        written,
    )


def _set_last_export(store: SessionStore, identifiers: list[str]) -> None:
    """Record which versions the latest export published (the inspector check reads each of them)."""
    index = list_versions(store)
    index["last_export"] = identifiers
    write_json_atomic(nwb_dir(store) / VERSIONS_JSON, index)


def _export_kept(
    store: SessionStore, basis: str, fingerprint: str, session_dir: Path | None, verify: Callable[[], None] | None
) -> tuple[str, list[str]]:
    source = kept_units_source(store, basis, fingerprint, session_dir)
    facts = {"status": "curated", "sorting_version": basis, "fingerprint": fingerprint}
    facts["saved_at"] = source.lineage.get("curation", {}).get("saved_at")
    _, wrote = _publish(store, source, facts, verify, current=False)
    return source.identifier, [source.identifier] if wrote else []


def export_kept_curation(
    store: SessionStore,
    basis: str,
    fingerprint: str,
    session_dir: Path | None = None,
    verify: Callable[[], None] | None = None,
) -> Path:
    """Write a kept curation (of an earlier sorting, or an earlier curation of this one) as its own NWB version,
    without changing which file is current (``ks-platform curation export``); the file's path."""
    with session_lock(store):
        identifier, _ = _export_kept(store, basis, fingerprint, session_dir, verify)
        _set_last_export(store, [identifier])
    return nwb_dir(store) / VERSIONS_DIR / f"{identifier}.nwb"


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


# --- bombcell labels and track ids (issue #28) ----------------------------------------------------------------------
def label_and_track_columns(source: UnitsSource, unit_ids: list[int]) -> list:
    """Units-table columns from ``unit_labels`` and ``unit_tracks``: bombcell's label (``""`` for a cluster made in
    Phy) and the unit's track id across its implant's sessions (-1: none). A column is left out when that step has not
    run on this sorting."""
    columns = []
    if source.bombcell_labels is not None:
        known = source.bombcell_labels
        columns.append(
            _column(
                "bombcell_label",
                "bombcell's label (GOOD/MUA/NOISE/NON-SOMA) of Kilosort's cluster; empty for clusters made in Phy",
                [known.get(u, "") for u in unit_ids],
            )
        )
    if source.track_ids is not None:
        tracks = source.track_ids
        columns.append(
            _column(
                "track_id",
                "the unit's identity across the sessions of its implant (UnitMatch; same id = same neuron); -1: not "
                "tracked",
                np.array([tracks.get(u, -1) for u in unit_ids], dtype=np.int64),
            )
        )
    return columns


def labels_and_tracks(store: SessionStore, sorting: Path) -> tuple[dict[int, str] | None, dict[int, int] | None]:
    """bombcell's labels and the track ids of ``sorting`` when it is the session's current sorting (both describe
    only that one: an earlier sorting's clusters get neither)."""
    from ks_platform.core.unit_labels import current_labels
    from ks_platform.core.unit_tracks import current_track_ids

    if Path(sorting).resolve() != store.sorting_dir.resolve():
        return None, None
    labels = current_labels(store)
    return (labels.labels if labels is not None else None), current_track_ids(store)

"""NWB (HDF5, or Zarr through hdmf-zarr): every wideband ``ElectricalSeries`` in ``/acquisition`` is one probe.

Listing: one probe per ElectricalSeries sampled at >= 10 kHz, named by the series (``<file stem>-<series>`` only
when two files of the folder use the same name); slower series (LFP) and spike snippets are listed as skipped.

Geometry, first that works: ``rel_x``/``rel_y`` (µm on the probe), Allen's ``probe_horizontal_position``/
``probe_vertical_position``, a Neuropixels probe rebuilt offline from probeinterface's catalogue (part number in the
device model/description, channels from ``electrode_name``/``contact_ids`` such as ``e12``/``s1e12``), else none (a
probe file named in the session config). ``x``/``y``/``z`` are brain coordinates in NWB and are never used.

Samples: each reader opens its file once and reads chunk-aligned blocks (whole rows of HDF5/Zarr chunks, each
decompressed once, with h5py's chunk cache sized to a row). int16 with one µV/bit is returned as stored; anything
else is scaled to int16 at a µV/bit chosen so that no sample clips (from the dtype's range, or from a scan of the
data's largest value), or refused with the number of samples that would clip.
"""

from __future__ import annotations

import json
import math
import re
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from probeinterface import Probe

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats.base import (
    INT16_LIMIT,
    BufferPool,
    ChunkReader,
    ProbeListing,
    ReadOptions,
    RecordingSource,
    scale_to_int16,
)

FORMAT = "nwb"
SUFFIXES = (".nwb",)
ZARR_SUFFIXES = (".zarr",)
#: Scaled series use this resolution (Intan's step, ±6.39 mV) unless a larger one is needed to avoid clipping.
FLOAT_UV_PER_BIT = 0.195
#: A coarser step than this would blur spikes (noise is ~5-10 µV): such series are refused, not scaled.
MAX_UV_PER_BIT = 5.0
#: Float series are scanned for their largest value over at most this many bytes (as stored, decompressed): the
#: whole series when it fits, else blocks spread over it. Bounded so that discovery (which opens every probe in the
#: sensor) stays quick whatever the file's size.
SCAN_BYTES = 128 * 1024 * 1024
#: A partial scan's largest value is doubled for the µV/bit; a block that still exceeds it is refused when read.
SCAN_HEADROOM = 2.0
#: Series sampled slower than this (LFP, downsampled bands) are never sorted.
MIN_SPIKE_BAND_RATE = 10_000.0
#: Blocks read from the file: whole rows of chunks, at least this many bytes...
BLOCK_BYTES = 8 * 1024 * 1024
#: ...unless a single row of chunks is larger than this (then unaligned blocks and a capped chunk cache).
MAX_BLOCK_BYTES = 512 * 1024 * 1024
_UNIT_TO_UV = {
    "volts": 1e6,
    "volt": 1e6,
    "v": 1e6,
    "millivolts": 1e3,
    "mv": 1e3,
    "microvolts": 1.0,
    "uv": 1.0,
    "µv": 1.0,
}
_POSITION_COLUMNS = (("rel_x", "rel_y"), ("probe_horizontal_position", "probe_vertical_position"))
_CONTACT_ID_COLUMNS = ("electrode_name", "contact_ids", "contact_id")
_BRAIN_COLUMNS = ("x", "y", "z")
_CATALOGUE_GEOMETRY = (
    "num_shanks",
    "cols_per_shank",
    "rows_per_shank",
    "electrode_pitch_horz_um",
    "electrode_pitch_vert_um",
    "even_row_horz_offset_left_edge_to_leftmost_electrode_center_um",
    "odd_row_horz_offset_left_edge_to_leftmost_electrode_center_um",
    "shank_pitch_um",
)
_PEAK_CACHE: dict[tuple, _Peak] = {}


# ------------------------------------------------------------------------------------------- detection


def _is_zarr(path: Path) -> bool:
    """A Zarr-backed NWB folder: ``*.zarr``, or a ``*.nwb`` folder holding Zarr metadata."""
    name = path.name.lower()
    if not path.is_dir():
        return False
    return name.endswith(ZARR_SUFFIXES) or (
        name.endswith(SUFFIXES) and any((path / m).exists() for m in (".zgroup", ".zattrs", "zarr.json"))
    )


def find_files(session_dir: Path) -> list[Path]:
    """The ``.nwb`` files and Zarr-backed NWB folders (``.nwb.zarr``, ``.zarr``) directly in the session folder."""
    return sorted(
        p for p in session_dir.iterdir() if (p.is_file() and p.name.lower().endswith(SUFFIXES)) or _is_zarr(p)
    )


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".zarr", ".nwb"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


@contextmanager
def _nwb_file(path: Path) -> Iterator[object]:
    """The file read with pynwb (or hdmf-zarr), closed on exit; unreadable files are a SessionInputError."""
    zarr_backed = _is_zarr(path)
    if not zarr_backed and path.stat().st_size == 0:
        raise SessionInputError(path, "the NWB file is empty (0 bytes)", "copy the file again")
    io_class = _zarr_io_class(path) if zarr_backed else None
    io = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if io_class is None:
                from pynwb import NWBHDF5IO

                io = NWBHDF5IO(str(path), mode="r", load_namespaces=True)
            else:
                io = io_class(str(path), mode="r")
            nwbfile = io.read()
    except Exception as exc:  # noqa: BLE001 - h5py/hdmf raise many kinds for truncated or foreign files
        if io is not None:
            io.close()
        if isinstance(exc, PermissionError):  # h5py's carries no file name: add it; formats.open_recording reports it
            raise PermissionError(exc.errno, exc.strerror or "Permission denied", str(path)) from None
        kind = "Zarr NWB folder" if zarr_backed else "NWB file"
        raise SessionInputError(
            path,
            f"cannot read the {kind} ({type(exc).__name__}: {exc})",
            "copy the file again completely; it must be an NWB 2.x file",
        ) from None
    try:
        yield nwbfile
    finally:
        io.close()


def _zarr_io_class(path: Path) -> type:
    try:
        from hdmf_zarr.nwb import NWBZarrIO
    except ImportError:
        raise SessionInputError(
            path,
            "Zarr-backed NWB is not supported here (the hdmf-zarr package is not installed)",
            "convert it to HDF5 NWB (e.g. hdmf_zarr's NWBZarrIO(...).export to an NWBHDF5IO, or neuroconv with "
            "backend='hdf5'), or install hdmf-zarr",
        ) from None
    return NWBZarrIO


# --------------------------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class _Folder:
    """Probe name -> (file, series name), and the streams that are not sorted."""

    probes: dict[str, tuple[Path, str]]
    skipped: tuple[str, ...]

    def listing(self) -> ProbeListing:
        return ProbeListing({name: (path,) for name, (path, _) in self.probes.items()}, self.skipped)


def _file_series(path: Path, label: Callable[[str], str], alone: bool) -> tuple[list[str], list[str]]:
    """(sortable series names, skipped "<stream>: <why>") of one file; a lone file without any series is refused."""
    from pynwb.ecephys import ElectricalSeries, SpikeEventSeries

    with _nwb_file(path) as nwbfile:
        electrical = {name: obj for name, obj in nwbfile.acquisition.items() if isinstance(obj, ElectricalSeries)}
        if not electrical:
            present = (
                ", ".join(f"{name} ({type(obj).__name__})" for name, obj in nwbfile.acquisition.items()) or "nothing"
            )
            problem = f"the NWB file has no ElectricalSeries in /acquisition (found: {present})"
            if alone:
                raise SessionInputError(
                    path,
                    problem,
                    "export the raw voltage traces as an ElectricalSeries in the file's acquisition group",
                )
            return [], [f"{path.name}: {problem}"]
        sortable, skipped = [], []
        for name, series in sorted(electrical.items()):
            if isinstance(series, SpikeEventSeries):
                skipped.append(f"{label(name)}: spike snippets (SpikeEventSeries), not a continuous recording")
                continue
            rate, _ = _rate(series, path)
            if rate < MIN_SPIKE_BAND_RATE:
                skipped.append(
                    f"{label(name)}: sampled at {rate:g} Hz (< {MIN_SPIKE_BAND_RATE:g} Hz: LFP or a downsampled band), "
                    "not sorted"
                )
            else:
                sortable.append(name)
    return sortable, skipped


def _scan_folder(session_dir: Path) -> _Folder:
    files = find_files(session_dir)
    if not files:
        raise SessionInputError(session_dir, "no .nwb file in the folder", "copy the NWB file into the session folder")
    found: list[tuple[Path, str]] = []
    skipped: list[str] = []
    for path in files:
        label = (lambda name: name) if len(files) == 1 else (lambda name, p=path: f"{p.name}/{name}")
        names, skips = _file_series(path, label, alone=len(files) == 1)
        found += [(path, name) for name in names]
        skipped += skips
    counts = Counter(name for _, name in found)
    probes: dict[str, tuple[Path, str]] = {}
    for path, name in found:
        key = name if counts[name] == 1 else f"{_stem(path)}-{name}"
        probes[key if key not in probes else f"{path.name}-{name}"] = (path, name)
    return _Folder(probes, tuple(skipped))


#: What to do about an NWB folder without a series to sort.
NO_PROBE_FIX = f"export the raw (>= {MIN_SPIKE_BAND_RATE:g} Hz) voltage traces as an ElectricalSeries in acquisition"


class Reading:
    """One read of an NWB session folder: one probe per wideband ElectricalSeries of its NWB files; LFP-rate series
    and snippets are skipped."""

    def __init__(self, session_dir: Path) -> None:
        self.folder = session_dir
        self.found = _scan_folder(session_dir)
        self.listing = self.found.listing()

    def open(self, name: str, options: ReadOptions = ReadOptions()) -> RecordingSource:
        return _open(self.folder, self.found, name)


def scan(session_dir: Path) -> Reading:
    """Read the folder's NWB files' structure once."""
    return Reading(session_dir)


def list_probes(session_dir: Path) -> ProbeListing:
    """The folder's probes (reader only: no session config applied)."""
    return scan(session_dir).listing


# ---------------------------------------------------------------------------------------- the series


@dataclass
class _Series:
    """What ``open_recording`` needs from one ElectricalSeries, read while its file is open."""

    path: Path
    name: str
    data_file: Path
    data_name: str
    zarr_backed: bool
    n_samples: int
    n_channels: int
    dtype: np.dtype
    chunks: tuple[int, ...] | None
    rate: float
    rate_note: str
    unit: str
    conversion: float
    offset: float
    channel_conversion: np.ndarray | None
    probe: Probe | None
    geometry: str

    def error(self, problem: str, fix: str) -> SessionInputError:
        return SessionInputError(self.path, f"ElectricalSeries {self.name!r}: {problem}", fix)


def _describe(series, path: Path, groups) -> _Series:
    """The facts of ``series``; ``groups`` are the file's electrode groups (name -> ElectrodeGroup)."""
    data = series.data
    zarr_backed = not hasattr(data, "file") and hasattr(data, "chunks") and hasattr(data, "store")
    if zarr_backed:
        data_file, data_name = path, str(data.path)
    elif hasattr(data, "file") and hasattr(data, "name"):
        data_file, data_name = Path(data.file.filename), str(data.name)
    else:
        raise SessionInputError(
            path,
            f"ElectricalSeries {series.name!r}: data is not a dataset of the file ({type(data).__name__})",
            "store the traces in the NWB file itself",
        )
    shape, dtype = tuple(int(n) for n in data.shape), np.dtype(data.dtype)
    where = f"ElectricalSeries {series.name!r}"
    if len(shape) not in (1, 2) or shape[0] == 0 or (len(shape) == 2 and shape[1] == 0):
        raise SessionInputError(
            path,
            f"{where} has data of shape {shape}; expected [samples, channels]",
            "store the traces as a 2-D [time, channel] dataset",
        )
    if dtype.kind not in "iuf":
        raise SessionInputError(
            path, f"{where} has non-numeric data (dtype {dtype})", "store the traces as integers or floats"
        )
    n_channels = shape[1] if len(shape) == 2 else 1
    # the group column (object references) is skipped: hdmf-zarr pickles it, and unpickling a file runs its code
    try:
        rows = series.electrodes.to_dataframe(exclude={"group"}) if series.electrodes is not None else None
    except (IndexError, KeyError, ValueError, TypeError) as exc:
        raise SessionInputError(
            path,
            f"the {where} electrodes region cannot be read ({type(exc).__name__}: {exc})",
            "re-export the file with an electrodes region that indexes the electrodes table",
        ) from None
    if rows is None or len(rows) != n_channels:
        listed = 0 if rows is None else len(rows)
        raise SessionInputError(
            path,
            f"the {where} has {n_channels} channels but its electrodes region lists {listed} electrodes",
            "re-export the file with one electrodes-table row per data column",
        )
    rate, rate_note = _rate(series, path)
    unit = str(series.unit or "volts").strip().lower()
    if unit not in _UNIT_TO_UV:
        raise SessionInputError(
            path, f"{where} has unknown unit {series.unit!r} (key 'unit')", "store voltages in volts (NWB's default)"
        )
    conversion = _finite(
        series.conversion if series.conversion is not None else 1.0, path, where, "conversion", nonzero=True
    )
    offset = _finite(getattr(series, "offset", 0.0) or 0.0, path, where, "offset", nonzero=False)
    probe, geometry = _geometry(rows, groups)
    return _Series(
        path=path,
        name=series.name,
        data_file=data_file,
        data_name=data_name,
        zarr_backed=zarr_backed,
        n_samples=shape[0],
        n_channels=n_channels,
        dtype=dtype,
        chunks=tuple(int(c) for c in data.chunks) if getattr(data, "chunks", None) else None,
        rate=rate,
        rate_note=rate_note,
        unit=unit,
        conversion=conversion,
        offset=offset,
        channel_conversion=_channel_conversion(series, n_channels, path, where),
        probe=probe,
        geometry=geometry,
    )


def _finite(value: object, path: Path, where: str, key: str, nonzero: bool) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SessionInputError(
            path, f"{where} has a non-numeric {key} ({value!r})", f"store {key} as a number"
        ) from None
    if not math.isfinite(number) or (nonzero and number == 0):
        raise SessionInputError(
            path,
            f"{where} has {key} = {number:g} (must be finite{' and non-zero' if nonzero else ''})",
            f"re-export the file with the acquisition system's {key} to volts",
        )
    return number


def _channel_conversion(series, n_channels: int, path: Path, where: str) -> np.ndarray | None:
    if series.channel_conversion is None:
        return None
    values = np.asarray(series.channel_conversion[:], dtype=float).reshape(-1)
    if values.shape != (n_channels,):
        raise SessionInputError(
            path,
            f"{where} has {values.size} channel_conversion values for {n_channels} channels",
            "re-export the file with one channel_conversion per channel",
        )
    bad = np.flatnonzero(~np.isfinite(values) | (values == 0))
    if bad.size:
        raise SessionInputError(
            path,
            f"{where} has channel_conversion[{int(bad[0])}] = {values[bad[0]]:g} (must be finite and non-zero; "
            f"{bad.size} such channels)",
            "re-export the file with each channel's gain",
        )
    return values


def _rate(series, path: Path) -> tuple[float, str]:
    where = f"ElectricalSeries {series.name!r}"
    if series.rate is not None:
        rate = float(series.rate)
        if not (math.isfinite(rate) and rate > 0):
            raise SessionInputError(
                path,
                f"{where} has rate {series.rate} (key 'starting_time/rate'; must be finite and > 0)",
                "store the sampling rate in Hz",
            )
        return rate, "rate from the series"
    timestamps = series.timestamps
    if timestamps is None or len(timestamps) < 2:
        raise SessionInputError(
            path, f"{where} has neither a rate nor timestamps", "store the sampling rate (rate=...) with the series"
        )
    steps = np.diff(np.asarray(timestamps[: min(len(timestamps), 100_001)], dtype=float))
    step = float(np.median(steps))
    if not (math.isfinite(step) and step > 0):
        raise SessionInputError(
            path,
            f"{where} timestamps do not increase (key 'timestamps')",
            "store the sampling rate (rate=...) with the series",
        )
    return 1.0 / step, "rate from the median timestamp step"


# -------------------------------------------------------------------------------------------- geometry


def _geometry(rows, groups) -> tuple[Probe | None, str]:
    """The probe from the electrode rows (see the module docstring for the order) and where it came from."""
    columns = set(rows.columns)
    notes: list[str] = []
    for cx, cy in _POSITION_COLUMNS:
        if cx in columns and cy in columns:
            positions, problem = _positions(rows, cx, cy)
            if problem is None:
                shanks = _shank_names(rows)
                note = f"electrodes table {cx}/{cy}" + (f", {len(set(shanks))} shanks from group" if shanks else "")
                return _probe_from_positions(positions, shanks), "; ".join([note, *notes])
            notes.append(f"{cx}/{cy} ignored: {problem}")
    probe, note = _catalogue_probe(rows, groups)
    if probe is not None:
        return probe, "; ".join([note, *notes])
    notes.append(note)
    brain = [c for c in _BRAIN_COLUMNS if c in columns]
    if brain:
        notes.append(f"{'/'.join(brain)} ignored: brain coordinates in NWB, not contact positions on the probe")
    return None, "geometry missing from the file (" + "; ".join(notes) + "); name a probe file in the session config"


def _positions(rows, cx: str, cy: str) -> tuple[np.ndarray, str | None]:
    try:
        positions = np.column_stack([np.asarray(rows[cx], dtype=float), np.asarray(rows[cy], dtype=float)])
    except (TypeError, ValueError):
        return np.empty((0, 2)), "not numbers"
    bad = int((~np.isfinite(positions).all(axis=1)).sum())
    if bad:
        return positions, f"{bad} rows are NaN/inf"
    if len(positions) > 1 and (positions == positions[0]).all():
        return positions, f"the same ({positions[0, 0]:g}, {positions[0, 1]:g}) on every row (a placeholder)"
    return positions, None


def _shank_names(rows) -> list[str] | None:
    """Shank per channel from the electrode group (None when all channels share one group)."""
    if "group_name" not in rows.columns:
        return None
    names = [str(g) for g in rows["group_name"]]
    return names if len(set(names)) > 1 else None


def _probe_from_positions(positions: np.ndarray, shanks: list[str] | None) -> Probe:
    probe = Probe(ndim=2, si_units="um")
    probe.set_contacts(positions=positions, shapes="square", shape_params={"width": 12})
    probe.set_device_channel_indices(np.arange(len(positions)))
    if shanks:
        probe.set_shank_ids(np.asarray(shanks, dtype=str))
    return probe


def _catalogue() -> dict[str, dict]:
    try:
        from probeinterface.neuropixels_tools import _load_np_probe_features
    except ImportError:  # an older probeinterface: no offline catalogue
        return {}
    return _load_np_probe_features()


def _device_texts(rows, groups) -> list[str]:
    """Model numbers, names and descriptions of the devices of the rows' electrode groups."""
    texts: list[str] = []
    names = dict.fromkeys(str(g) for g in rows["group_name"]) if "group_name" in rows.columns else {}
    devices = {id(d): d for d in (getattr(groups.get(name), "device", None) for name in names) if d is not None}
    for device in devices.values():
        model = getattr(device, "model", None)
        for owner, attr in (
            (model, "model_number"),
            (model, "name"),
            (device, "model_number"),
            (device, "model_name"),
            (model, "description"),
            (device, "description"),
            (device, "name"),
        ):
            value = getattr(owner, attr, None) if owner is not None else None
            if isinstance(value, str) and value.strip():
                texts.append(value.strip())
    return texts


def _part_number(texts: list[str], features: dict) -> str | None:
    """The catalogue's part number named in ``texts``: by number, by neuroconv's probe_type JSON, or by a description
    that only part numbers of one geometry share."""
    probes = features.get("neuropixels_probes", {})
    for text in texts:
        for part in sorted(probes, key=len, reverse=True):
            if re.search(rf"(?<![A-Za-z0-9_]){re.escape(part)}(?![A-Za-z0-9_])", text):
                return part
    for text in texts:
        try:
            described = json.loads(text)
        except ValueError:
            continue
        probe_type = str(described.get("probe_type", "")) if isinstance(described, dict) else ""
        part = features.get("z_imro_format_type_to_part_number", {}).get(probe_type)
        if part in probes:
            return part
    for text in texts:
        parts = sorted(p for p, spec in probes.items() if spec.get("description", "").strip().lower() == text.lower())
        if parts and len({tuple(probes[p].get(k) for k in _CATALOGUE_GEOMETRY) for p in parts}) == 1:
            return parts[0]
    return None


def _catalogue_probe(rows, groups) -> tuple[Probe | None, str]:
    """A Neuropixels probe built offline (never downloaded) from the catalogue, sliced to the rows' contact ids."""
    features = _catalogue()
    part = _part_number(_device_texts(rows, groups), features) if features else None
    if part is None:
        return None, "no Neuropixels part number in the electrodes' device model or description"
    column = next((c for c in _CONTACT_ID_COLUMNS if c in rows.columns), None)
    if column is None:
        return (
            None,
            f"device {part} is in probeinterface's catalogue but no {'/'.join(_CONTACT_ID_COLUMNS)} column says which "
            "contacts were recorded",
        )
    from probeinterface.neuropixels_tools import build_neuropixels_probe

    full = build_neuropixels_probe(part)
    index = {str(cid): i for i, cid in enumerate(full.contact_ids)}
    wanted = [_contact_id(value, index) for value in rows[column]]
    missing = [str(v) for v, w in zip(rows[column], wanted) if w is None]
    if missing:
        return None, f"{column} values {missing[:3]} are not contacts of {part} ({len(missing)} of {len(wanted)})"
    if len(set(wanted)) != len(wanted):
        return None, f"{column} names some contact of {part} twice"
    probe = full.get_slice(np.asarray([index[w] for w in wanted]))
    probe.set_device_channel_indices(np.arange(len(wanted)))
    return probe, f"probeinterface catalogue {part} ({full.description}) + {column}"


def _contact_id(value: object, index: dict[str, int]) -> str | None:
    """``value`` as a catalogue contact id (``e12``, ``s1e12``; ``12`` and ``s0e12`` on single-shank probes)."""
    text = str(value).strip()
    for candidate in (text, f"e{text}", re.sub(r"^s0e", "e", text)):
        if candidate in index:
            return candidate
    return None


# --------------------------------------------------------------------------------------------- reading


class _Blocks:
    """Rows of a series' data from one open file (HDF5 or Zarr), read in chunk-aligned blocks; the last one kept.

    Not thread-safe by itself: callers hold ``lock`` while using ``rows`` and the array it returned.
    """

    def __init__(self, series: _Series) -> None:
        self.series = series
        self.lock = threading.Lock()
        frame_bytes = series.n_channels * series.dtype.itemsize
        chunk_rows = series.chunks[0] if series.chunks else 0
        if chunk_rows and chunk_rows * frame_bytes <= MAX_BLOCK_BYTES:
            self.block_rows = chunk_rows * max(1, math.ceil(BLOCK_BYTES / (chunk_rows * frame_bytes)))
        else:
            self.block_rows = max(1, BLOCK_BYTES // frame_bytes)
        self.block_rows = min(self.block_rows, series.n_samples)
        self._dataset = None
        self._handle = None
        self._buffer: np.ndarray | None = None
        self._index = -1

    def _open(self):
        if self._dataset is None:
            series = self.series
            try:
                if series.zarr_backed:
                    import zarr

                    self._dataset = zarr.open_group(str(series.data_file), mode="r")[series.data_name]
                else:
                    import h5py

                    nbytes, nslots = _chunk_cache(series)
                    self._handle = h5py.File(series.data_file, "r", rdcc_nbytes=nbytes, rdcc_nslots=nslots, rdcc_w0=1.0)
                    self._dataset = self._handle[series.data_name]
            except (OSError, KeyError, ValueError) as exc:
                raise SessionInputError(
                    series.data_file,
                    f"cannot open ElectricalSeries {series.name!r} for reading ({exc})",
                    "copy the NWB file again completely",
                ) from None
        return self._dataset

    def _block(self, index: int) -> np.ndarray:
        if index != self._index:
            series = self.series
            start = index * self.block_rows
            stop = min(start + self.block_rows, series.n_samples)
            if self._buffer is None:
                self._buffer = np.empty((self.block_rows, series.n_channels), dtype=series.dtype)
            target = self._buffer[: stop - start]
            self._index = -1
            try:
                data = self._open()
                if series.zarr_backed:
                    target[...] = np.asarray(data[start:stop]).reshape(target.shape)
                else:
                    data.read_direct(
                        target.reshape((stop - start,) + tuple(data.shape[1:])), source_sel=np.s_[start:stop]
                    )
            except (OSError, KeyError, ValueError, RuntimeError) as exc:
                raise SessionInputError(
                    series.data_file,
                    f"cannot read samples {start}:{stop} of ElectricalSeries {series.name!r} ({exc})",
                    "copy the NWB file again completely",
                ) from None
            self._index = index
        start = index * self.block_rows
        return self._buffer[: min(self.block_rows, self.series.n_samples - start)]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Samples ``start:stop`` as ``[n, n_channels]`` in the stored dtype (a view into the kept block if it fits)."""
        first, last = start // self.block_rows, (max(stop, start + 1) - 1) // self.block_rows
        if first == last:
            offset = first * self.block_rows
            return self._block(first)[start - offset : stop - offset]
        out = np.empty((stop - start, self.series.n_channels), dtype=self.series.dtype)
        for index in range(first, last + 1):
            offset = index * self.block_rows
            lo, hi = max(start, offset), min(stop, offset + self.block_rows)
            out[lo - start : hi - start] = self._block(index)[lo - offset : hi - offset]
        return out

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._handle = self._dataset = self._buffer = None
        self._index = -1


def _chunk_cache(series: _Series) -> tuple[int, int]:
    """h5py chunk cache (bytes, slots) holding one whole row of chunks (all channels) plus one chunk."""
    if not series.chunks:
        return 1024 * 1024, 521
    chunk_bytes = math.prod(series.chunks) * series.dtype.itemsize
    per_row = math.ceil(series.n_channels / series.chunks[1]) if len(series.chunks) > 1 else 1
    nbytes = int(min(max(chunk_bytes * (per_row + 1), 1024 * 1024), 1024**3))
    return nbytes, _prime_at_least(max(521, 100 * (per_row + 1)))


def _prime_at_least(n: int) -> int:
    while any(n % d == 0 for d in range(2, math.isqrt(n) + 1)):
        n += 1
    return n


def _check_range(start: int, stop: int, n_samples: int) -> None:
    if not 0 <= start <= stop <= n_samples:
        raise ValueError(f"samples {start}:{stop} are outside 0:{n_samples}")


def _int16_reader(blocks: _Blocks) -> ChunkReader:
    """int16 samples as stored."""
    n_samples, n_channels = blocks.series.n_samples, blocks.series.n_channels

    def read_chunk(start: int, stop: int) -> np.ndarray:
        _check_range(start, stop, n_samples)
        out = np.empty((stop - start, n_channels), dtype=np.int16)
        if stop > start:
            with blocks.lock:
                np.copyto(out, blocks.rows(start, stop))
        return out

    return read_chunk


def _scaling_reader(blocks: _Blocks, scale: np.ndarray, shift: float, uv_per_bit: float) -> ChunkReader:
    """Any numeric series scaled to int16 bits in float32; NaN/inf, and samples beyond int16 at ``uv_per_bit``, are
    refused naming the file, the sample and the channel (never clipped)."""
    series = blocks.series
    buffers = BufferPool()
    scale32 = np.asarray(scale, dtype=np.float32)

    def read_chunk(start: int, stop: int) -> np.ndarray:
        _check_range(start, stop, series.n_samples)
        n = stop - start
        out = np.empty((n, series.n_channels), dtype=np.int16)
        if n == 0:
            return out
        with blocks.lock, buffers.get((n, series.n_channels), np.float32) as work:
            source = blocks.rows(start, stop)
            values = work[:n]
            np.copyto(values, source, casting="unsafe")
            bad = scale_to_int16(values, scale32, out, shift=shift, original=lambda: source)
            if bad is not None:
                channel = int(np.flatnonzero(~np.isfinite(source[bad].astype(np.float64)))[0])
                raise SessionInputError(
                    series.data_file,
                    f"NaN or inf sample at sample {start + bad}, channel {channel} of the ElectricalSeries "
                    f"{series.name!r}",
                    "repair or re-export the recording without NaN/inf",
                )
            _refuse_clipped(series, source, out, np.asarray(scale, dtype=np.float64), shift, start, uv_per_bit)
        return out

    return read_chunk


def _refuse_clipped(
    series: _Series, source: np.ndarray, out: np.ndarray, scale: np.ndarray, shift: float, start: int, uv_per_bit: float
) -> None:
    """Refuse a block in which ``scale_to_int16`` clipped: only samples at ±32767 are checked against the exact value."""
    flat = np.flatnonzero((out == INT16_LIMIT) | (out == -INT16_LIMIT))
    if not flat.size:
        return
    rows, channels = np.divmod(flat, out.shape[1])
    exact = source[rows, channels].astype(np.float64) * scale[channels] + shift
    clipped = np.flatnonzero(np.abs(exact) >= INT16_LIMIT + 0.5)
    if clipped.size:
        first = clipped[0]
        raise series.error(
            f"{clipped.size} samples in samples {start}:{start + len(out)} exceed ±{INT16_LIMIT * uv_per_bit / 1000:g} "
            "mV, the int16 range at "
            f"{uv_per_bit:g} µV/bit chosen from a scan of part of the series (first at sample "
            f"{start + int(rows[first])}, channel {int(channels[first])}): they would clip",
            "check conversion/channel_conversion/unit (volts expected), or re-export the traces as int16 with their "
            "conversion",
        )


# --------------------------------------------------------------------------------------------- scaling


def _round_up(value: float, digits: int = 4) -> float:
    """``value`` rounded up to ``digits`` significant digits (a readable µV/bit that is never smaller)."""
    step = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return float(f"{math.ceil(value / step - 1e-9) * step:.{digits}g}")


@dataclass(frozen=True)
class _Peak:
    """What the scan saw: per channel the largest finite |µV|, samples beyond the usable range, and coverage."""

    peak_uv: np.ndarray
    over: int
    scanned_samples: int
    covered: bool


def _scan_blocks(n_blocks: int, block_bytes: int) -> list[int]:
    """Which blocks the scan reads: all when they fit in ``SCAN_BYTES``, else that many spread evenly."""
    fit = max(1, SCAN_BYTES // max(block_bytes, 1))
    return list(range(n_blocks)) if fit >= n_blocks else sorted({round(i) for i in np.linspace(0, n_blocks - 1, fit)})


def _peak_uv(series: _Series, per_channel: np.ndarray, offset_uv: float, limit_uv: float) -> _Peak:
    """Largest finite |sample| in µV per channel and the count beyond ``limit_uv``, from at most ``SCAN_BYTES`` of
    chunk-aligned blocks (the whole series when it fits, else blocks spread over it), 8 MB at a time."""
    stat = series.data_file.stat()
    key = (
        str(series.data_file.resolve()),
        series.data_name,
        stat.st_size,
        stat.st_mtime_ns,
        per_channel.tobytes(),
        offset_uv,
        limit_uv,
        SCAN_BYTES,
    )
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    blocks = _Blocks(series)
    n_blocks = math.ceil(series.n_samples / blocks.block_rows)
    chosen = _scan_blocks(n_blocks, blocks.block_rows * series.n_channels * series.dtype.itemsize)
    peak, over, scanned = np.zeros(series.n_channels), 0, 0
    step = max(1, (1 << 20) // series.n_channels)
    try:
        for index in chosen:
            start = index * blocks.block_rows
            block = blocks.rows(start, min(start + blocks.block_rows, series.n_samples))
            scanned += len(block)
            for lo in range(0, len(block), step):
                uv = np.abs(block[lo : lo + step].astype(np.float64) * per_channel + offset_uv)
                if not np.isfinite(uv).all():  # NaN/inf are refused when read, not counted as clipping
                    uv[~np.isfinite(uv)] = 0.0
                np.maximum(peak, uv.max(axis=0), out=peak)
                over += int(np.count_nonzero(uv > limit_uv))
    finally:
        blocks.close()
    _PEAK_CACHE[key] = result = _Peak(peak, over, scanned, len(chosen) == n_blocks)
    return result


def _scaling(series: _Series) -> tuple[float, np.ndarray | None, float, str]:
    """(µV/bit, per-channel scale to int16 bits or None to keep int16 as stored, shift in bits, note)."""
    to_uv = _UNIT_TO_UV[series.unit]
    gains = series.channel_conversion if series.channel_conversion is not None else np.ones(series.n_channels)
    per_channel = gains * series.conversion * to_uv
    offset_uv = series.offset * to_uv
    cc = " x channel_conversion" if series.channel_conversion is not None else ""
    factors = f"conversion {series.conversion:g}{cc} ({series.unit} -> x{to_uv:g} µV)"
    dtype = series.dtype
    if dtype == np.int16 and np.allclose(per_channel, per_channel[0], rtol=1e-6) and per_channel[0] > 0:
        uv_per_bit = float(f"{per_channel[0]:.12g}")  # 1.95e-07 V x 1e6 is 0.19499999999999998
        note = f"int16 kept as stored: {factors} = {uv_per_bit:g} µV/bit"
        if series.offset:
            note += f" (offset {series.offset:g} ignored: a DC shift Kilosort's high-pass removes)"
        return uv_per_bit, None, 0.0, note
    how = f"{dtype.name} x {factors}" + (f" + offset {series.offset:g}" if series.offset else "")
    if dtype.kind in "iu" and dtype.itemsize <= 2:  # the dtype's range bounds every sample: no scan needed
        info = np.iinfo(dtype)
        bound = np.maximum(np.abs(info.min * per_channel + offset_uv), np.abs(info.max * per_channel + offset_uv))
        if float(bound.max()) / INT16_LIMIT <= MAX_UV_PER_BIT:
            uv_per_bit = _round_up(float(bound.max()) / INT16_LIMIT)
            note = f"{how} scaled to int16 at {uv_per_bit:g} µV/bit (the {dtype.name} range fits: nothing clips)"
            return uv_per_bit, per_channel / uv_per_bit, offset_uv / uv_per_bit, note
    uv_per_bit, note = _step_from_scan(series, per_channel, offset_uv)
    return uv_per_bit, per_channel / uv_per_bit, offset_uv / uv_per_bit, f"{how} scaled to int16 at {note}"


def _step_from_scan(series: _Series, per_channel: np.ndarray, offset_uv: float) -> tuple[float, str]:
    """The µV/bit for a float (or wide int) series from a bounded scan; refused when samples exceed any usable step."""
    limit_uv = INT16_LIMIT * MAX_UV_PER_BIT
    scan = _peak_uv(series, per_channel, offset_uv, limit_uv)
    largest = float(scan.peak_uv.max())
    total = series.n_samples * series.n_channels
    if scan.over:
        seen = "" if scan.covered else f" (in the {scan.scanned_samples * series.n_channels} scanned)"
        raise series.error(
            f"{scan.over} of {total} samples{seen} exceed ±{limit_uv / 1000:g} mV (largest {largest / 1000:g} mV on "
            f"channel {int(scan.peak_uv.argmax())}): they would clip in int16 at the coarsest usable step "
            f"({MAX_UV_PER_BIT:g} µV/bit)",
            "check conversion/channel_conversion/unit (volts expected) and re-export the file with the acquisition "
            "system's scaling",
        )
    wanted = largest * (1.0 if scan.covered else SCAN_HEADROOM)
    if wanted / FLOAT_UV_PER_BIT <= INT16_LIMIT + 0.4:
        uv_per_bit = FLOAT_UV_PER_BIT
    else:
        uv_per_bit = min(_round_up(wanted / INT16_LIMIT), MAX_UV_PER_BIT)
    if scan.covered:
        return uv_per_bit, f"{uv_per_bit:g} µV/bit (largest |sample| {largest:.6g} µV: nothing clips)"
    seconds = scan.scanned_samples / series.rate
    return uv_per_bit, (
        f"{uv_per_bit:g} µV/bit (largest |sample| {largest:.6g} µV in {seconds:.1f} s scanned of "
        f"{series.n_samples / series.rate:.1f} s, x{SCAN_HEADROOM:g} headroom; a block with samples beyond "
        f"±{INT16_LIMIT * uv_per_bit / 1000:g} mV is refused when read, never clipped)"
    )


# -------------------------------------------------------------------------------------------- the API


def open_recording(
    session_dir: Path, probe: str | None = None, options: ReadOptions = ReadOptions()
) -> RecordingSource:
    """One probe as the files say (reader only: no session config applied; use formats.scan_session)."""
    reading = scan(session_dir)
    return reading.open(reading.listing.pick(probe, session_dir), options)


def _open(session_dir: Path, folder: _Folder, name: str) -> RecordingSource:
    """Describe one probe (wideband ElectricalSeries) of the folder's NWB files; samples are read lazily."""
    path, series_name = folder.probes[name]
    with _nwb_file(path) as nwbfile:
        series = _describe(nwbfile.acquisition[series_name], path, dict(nwbfile.electrode_groups))
        date = nwbfile.session_start_time.date()
    uv_per_bit, scale, shift, note = _scaling(series)
    blocks = _Blocks(series)
    reader = _int16_reader(blocks) if scale is None else _scaling_reader(blocks, scale, shift, uv_per_bit)
    same_file = series.data_file.resolve() == path.resolve()
    return RecordingSource(
        format=FORMAT,
        session_dir=session_dir,
        data_files=(path,) if same_file else (path, series.data_file),
        sampling_frequency=series.rate,
        n_channels=series.n_channels,
        n_samples=series.n_samples,
        source_dtype=series.dtype.name,
        recording_date=date,
        sorting_channels=tuple(range(series.n_channels)),
        uv_per_bit=uv_per_bit,
        read_chunk=reader,
        probe=series.probe,
        probe_file=None,
        zero_copy_path=None,
        scaling_note=f"{note}; ElectricalSeries {series.name!r}; {series.rate_note}; probe: {series.geometry}",
        probe_name=name,
        details={
            "nwb_file": path.name,
            "nwb_series": series.name,
            "geometry": series.geometry,
            "skipped_streams": list(folder.skipped),
        },
    )

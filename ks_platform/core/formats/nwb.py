"""NWB (HDF5, or Zarr through hdmf-zarr): every wideband ``ElectricalSeries`` in ``/acquisition`` is one probe.

Listing: one probe per ElectricalSeries sampled at >= 10 kHz, named by the series (``<file stem>-<series>`` only
when two files of the folder use the same name); slower series (LFP), spike snippets, other acquisition objects and
processed ElectricalSeries (``/processing``) are listed as skipped, with why.

Clock: the series' ``starting_time`` (or its first timestamp) places its first sample on the session clock
(``round(starting_time x rate)``, the timeline's ``first_sample``); a series whose ``timestamps`` are not one regular
grid (a gap, a pause, irregular sampling) is refused with the fix.

Geometry, first that works: ``rel_x``/``rel_y`` (µm on the probe), Allen's ``probe_horizontal_position``/
``probe_vertical_position``, a Neuropixels probe rebuilt offline from probeinterface's catalogue (part number in the
device model/description, channels from ``electrode_name``/``contact_ids`` such as ``e12``/``s1e12``), else none (a
probe file named in the session config). ``x``/``y``/``z`` are brain coordinates in NWB and are never used.

Samples: each reader opens its file once and reads chunk-aligned blocks (whole rows of HDF5/Zarr chunks, each
decompressed once, with h5py's chunk cache sized to a row). int16 with one µV/bit is returned as stored; anything
else is scaled to int16 at one µV/bit for all channels: the finest channel gain (integers; Intan's 0.195 µV for
floats), or the smallest step at which every channel's largest sample fits int16, so that a sample loses at most
half a step and never clips. The step is chosen when the series is opened, from the dtype's range or a scan of the
data (the whole series up to ``SCAN_BYTES``, else blocks spread over it with headroom). Whatever that scan left
unread is checked before the first sample is returned (the converter's first read, before it writes anything): a
range pass over every sample with bounded memory, and the full timestamps check; a sample that would not fit, a
NaN/inf or an irregular timestamp is refused there, naming the file, the channel and the value.
"""

from __future__ import annotations

import json
import math
import re
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
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
from ks_platform.core.timeline import FilePlacement, lay_out

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
        others = [
            f"{label(name)}: {type(obj).__name__}, not an ElectricalSeries (no voltage traces of electrodes)"
            for name, obj in sorted(nwbfile.acquisition.items())
            if name not in electrical
        ]
        processed = [
            f"{label(where)}: an ElectricalSeries in /processing (processed data such as LFP, not the raw recording)"
            for where in _processed_series(nwbfile)
        ]
        if not electrical:
            present = ", ".join(f"{name} ({type(obj).__name__})" for name, obj in nwbfile.acquisition.items())
            elsewhere = "; elsewhere: " + ", ".join(_processed_series(nwbfile)) if processed else ""
            problem = f"the NWB file has no ElectricalSeries in /acquisition (found: {present or 'nothing'}{elsewhere})"
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
    return sortable, skipped + others + processed


def _processed_series(nwbfile) -> list[str]:
    """Paths (``processing/ecephys/LFP/ElectricalSeries``) of the ElectricalSeries in the file's processing modules."""
    from pynwb.ecephys import ElectricalSeries

    found = []
    for module_name, module in sorted(nwbfile.processing.items()):
        for name, interface in sorted(module.data_interfaces.items()):
            if isinstance(interface, ElectricalSeries):
                found.append(f"processing/{module_name}/{name}")
            for inner in sorted(getattr(interface, "electrical_series", {})):
                found.append(f"processing/{module_name}/{name}/{inner}")
    return found


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
        return _open(self.folder, self.found, name, options)


def scan(session_dir: Path) -> Reading:
    """Read the folder's NWB files' structure once."""
    return Reading(session_dir)


def list_probes(session_dir: Path) -> ProbeListing:
    """The folder's probes (reader only: no session config applied)."""
    return scan(session_dir).listing


# ---------------------------------------------------------------------------------------- the series


@dataclass(frozen=True)
class _Dataset:
    """Where an array of the series lives: the file (or Zarr folder) and the array's path inside it."""

    file: Path
    name: str
    zarr_backed: bool


@dataclass(frozen=True)
class _Clock:
    """The series' time base: its rate, its first sample on the session clock (``round(starting_time x rate)``) and,
    for a series with timestamps, whether every timestamp was checked to lie on that grid (else the check runs before
    the first sample is read)."""

    rate: float
    first_sample: int
    note: str
    timestamps: _Dataset | None = None
    start_s: float = 0.0
    checked: bool = True
    #: The median step's rate (timestamps only): where a gap shows.
    nominal: float = 0.0


@dataclass
class _Series:
    """What ``open_recording`` needs from one ElectricalSeries, read while its file is open."""

    path: Path
    name: str
    data: _Dataset
    n_samples: int
    n_channels: int
    dtype: np.dtype
    chunks: tuple[int, ...] | None
    clock: _Clock
    unit: str
    conversion: float
    offset: float
    channel_conversion: np.ndarray | None
    probe: Probe | None
    geometry: str

    @property
    def data_file(self) -> Path:
        return self.data.file

    @property
    def rate(self) -> float:
        return self.clock.rate

    def error(self, problem: str, fix: str) -> SessionInputError:
        return SessionInputError(self.path, f"ElectricalSeries {self.name!r}: {problem}", fix)


def _dataset(array, path: Path, where: str, what: str) -> _Dataset:
    """The file and path of an array pynwb/hdmf-zarr read (an h5py Dataset or a zarr Array)."""
    if not hasattr(array, "file") and hasattr(array, "chunks") and hasattr(array, "store"):
        _refuse_missing_chunks(array, path, where, what)
        return _Dataset(path, str(array.path), True)
    if hasattr(array, "file") and hasattr(array, "name"):
        return _Dataset(Path(array.file.filename), str(array.name), False)
    raise SessionInputError(
        path,
        f"{where}: {what} is not a dataset of the file ({type(array).__name__})",
        "store the traces in the NWB file itself",
    )


def _refuse_missing_chunks(array, path: Path, where: str, what: str) -> None:
    """A Zarr array missing chunk files reads them as its fill value (zeros) without a word: a partial copy."""
    expected, present = int(array.nchunks), int(array.nchunks_initialized)
    if present < expected:
        raise SessionInputError(
            path / str(array.path),
            f"{where}: {expected - present} of the {expected} chunk files of its {what} are missing (Zarr would "
            "read them as zeros): the folder is an incomplete copy",
            f"copy the whole {path.name} folder again (if its writer left out all-zero chunks on purpose, rewrite it "
            "with write_empty_chunks=True)",
        )


def _describe(series, path: Path, groups) -> _Series:
    """The facts of ``series``; ``groups`` are the file's electrode groups (name -> ElectrodeGroup)."""
    where = f"ElectricalSeries {series.name!r}"
    data = series.data
    dataset = _dataset(data, path, where, "data")
    shape, dtype = tuple(int(n) for n in data.shape), np.dtype(data.dtype)
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
    clock = _clock(series, path, shape[0])
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
        data=dataset,
        n_samples=shape[0],
        n_channels=n_channels,
        dtype=dtype,
        chunks=tuple(int(c) for c in data.chunks) if getattr(data, "chunks", None) else None,
        clock=clock,
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


#: Timestamps read at a time when they are checked (8 MB of float64).
TIMESTAMP_BLOCK = 1 << 20


def _clock(series, path: Path, n_samples: int) -> _Clock:
    """The series' time base: ``rate`` + ``starting_time``, or timestamps that must lie on one regular grid (each
    within half a sample of the session-clock sample its row is placed on); irregular ones are refused with the fix."""
    where = f"ElectricalSeries {series.name!r}"
    if series.rate is not None:
        rate, note = _rate(series, path)
        start = _finite(
            series.starting_time if series.starting_time is not None else 0.0, path, where, "starting_time", False
        )
        first = round(start * rate)
        return _Clock(
            rate, first, f"{note}; starting_time {start:g} s = sample {first} of the session clock", None, start
        )
    timestamps = series.timestamps
    if timestamps is not None and hasattr(timestamps, "timestamps"):  # linked to another series' timestamps
        timestamps = timestamps.timestamps
    if timestamps is None or len(timestamps) < 2:
        raise SessionInputError(
            path, f"{where} has neither a rate nor timestamps", "store the sampling rate (rate=...) with the series"
        )
    dataset = _dataset(timestamps, path, where, "timestamps")
    if len(timestamps) != n_samples:
        raise SessionInputError(
            path,
            f"{where} has {len(timestamps)} timestamps for {n_samples} samples",
            "store one timestamp per sample, or the rate and starting_time",
        )
    first_s, last_s = float(timestamps[0]), float(timestamps[n_samples - 1])
    if not (math.isfinite(first_s) and math.isfinite(last_s) and last_s > first_s):
        raise SessionInputError(
            path,
            f"{where} timestamps do not increase (first {first_s:g} s, last {last_s:g} s; key 'timestamps')",
            "store the sampling rate (rate=...) with the series",
        )
    rate = float(f"{(n_samples - 1) / (last_s - first_s):.12g}")
    nominal, _ = _rate(series, path)  # the median step: a gap shows against it where it is
    first = round(first_s * rate)
    n_blocks = math.ceil(n_samples / TIMESTAMP_BLOCK)
    chosen = _scan_blocks(n_blocks, TIMESTAMP_BLOCK * 8)
    checked = len(chosen) == n_blocks
    how = "every timestamp on that grid" if checked else "timestamps checked in part here, all before the first read"
    note = (
        f"rate {rate:g} Hz from the first and last timestamps ({how}); first timestamp {first_s:g} s = sample {first}"
    )
    clock = _Clock(rate, first, note, dataset, first_s, checked, nominal)
    _check_timestamps(lambda a, b: timestamps[a:b], n_samples, clock, path, where, chosen)
    return clock


def _check_timestamps(
    read: Callable[[int, int], object], n: int, clock: _Clock, path: Path, where: str, blocks: Iterable[int]
) -> None:
    """Refuse timestamps that are not one regular grid: a step other than one sample period at the median step's
    rate (a gap, a pause, samples repeated), or a timestamp more than half a sample from the session-clock sample its
    row is placed on (``first_sample + i`` at ``rate``: jitter or drift)."""
    fix = (
        "store each part recorded without a gap as its own ElectricalSeries (or file), or, if the samples are in "
        "fact regular, write the series with rate and starting_time instead of timestamps"
    )
    rate, nominal = clock.rate, clock.nominal
    for index in blocks:
        a = index * TIMESTAMP_BLOCK
        b = min(a + TIMESTAMP_BLOCK + 1, n)  # one more: the step across the block's end is checked too
        values = np.asarray(read(a, b), dtype=np.float64)
        if not np.isfinite(values).all():
            i = a + int(np.flatnonzero(~np.isfinite(values))[0])
            raise SessionInputError(path, f"{where} has a NaN/inf timestamp at sample {i}", fix)
        steps = np.diff(values) * nominal
        jumps = np.flatnonzero(np.abs(steps - 1.0) > 0.5)
        if jumps.size:
            i, step = a + int(jumps[0]), float(steps[jumps[0]])
            what = (
                f"a gap of {(step - 1) / nominal:.6g} s"
                if step > 1
                else "a step shorter than half a sample period (irregular sampling, or timestamps repeated)"
            )
            raise SessionInputError(
                path,
                f"{where} timestamps are not regular: sample {i + 1} ({values[i + 1 - a]:.6f} s) comes {step:.6g} "
                f"sample periods after sample {i} ({values[i - a]:.6f} s) at {nominal:g} Hz: {what}",
                fix,
            )
        off = values * rate - (clock.first_sample + np.arange(a, b, dtype=np.float64))
        drift = np.flatnonzero(np.abs(off) > 0.5)
        if drift.size:
            i = a + int(drift[0])
            raise SessionInputError(
                path,
                f"{where} timestamps are not regular: sample {i} is at {values[i - a]:.6f} s, {off[drift[0]]:+.2f} "
                f"samples from session-clock sample {clock.first_sample + i} it is placed on ({rate:g} Hz from the "
                "first and last timestamps): jitter or drift",
                fix,
            )


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


def _open_array(dataset: _Dataset, cache: tuple[int, int] | None = None) -> tuple[object, object | None]:
    """(the array, the h5py file to close or None) of ``dataset``; ``cache``: h5py chunk cache (bytes, slots)."""
    if dataset.zarr_backed:
        import zarr

        return zarr.open_group(str(dataset.file), mode="r")[dataset.name], None
    import h5py

    nbytes, nslots = cache or (1024 * 1024, 521)
    handle = h5py.File(dataset.file, "r", rdcc_nbytes=nbytes, rdcc_nslots=nslots, rdcc_w0=1.0)
    return handle[dataset.name], handle


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

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.series.n_samples / self.block_rows)

    def _open(self):
        if self._dataset is None:
            series = self.series
            try:
                self._dataset, self._handle = _open_array(series.data, _chunk_cache(series))
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
                if series.data.zarr_backed:
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

    def block(self, index: int) -> tuple[int, np.ndarray]:
        """(first sample, rows) of block ``index`` (a view into the kept buffer)."""
        return index * self.block_rows, self._block(index)

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


class _Preflight:
    """Checks that run once, before the first sample is returned (the converter's first read, before it writes
    anything): whatever the bounded reads at open left unchecked. A refusal is kept and raised on every read."""

    def __init__(self, checks: list[Callable[[], None]]) -> None:
        self._checks = checks
        self._error: SessionInputError | None = None
        self._lock = threading.Lock()

    def __call__(self) -> None:
        if not self._checks and self._error is None:
            return
        with self._lock:
            while self._checks and self._error is None:
                try:
                    self._checks[0]()
                except SessionInputError as exc:
                    self._error = exc
                self._checks.pop(0)
            if self._error is not None:
                error = self._error
                raise SessionInputError(error.path, error.problem, error.fix)


def _int16_reader(blocks: _Blocks, preflight: _Preflight) -> ChunkReader:
    """int16 samples as stored."""
    n_samples, n_channels = blocks.series.n_samples, blocks.series.n_channels

    def read_chunk(start: int, stop: int) -> np.ndarray:
        _check_range(start, stop, n_samples)
        preflight()
        out = np.empty((stop - start, n_channels), dtype=np.int16)
        if stop > start:
            with blocks.lock:
                np.copyto(out, blocks.rows(start, stop))
        return out

    return read_chunk


def _scaling_reader(blocks: _Blocks, scaling: _Scaling, preflight: _Preflight) -> ChunkReader:
    """Any numeric series scaled to int16 bits (float64 math for integer and float64 sources: a sample is then off by
    at most half a step; float32 for float32); NaN/inf, and samples beyond int16 at the step, are refused naming the
    file, the sample and the channel (never clipped)."""
    series = blocks.series
    buffers = BufferPool()
    work = np.float32 if series.dtype.kind == "f" and series.dtype.itemsize <= 4 else np.float64
    scale = np.asarray(scaling.scale, dtype=work)

    def read_chunk(start: int, stop: int) -> np.ndarray:
        _check_range(start, stop, series.n_samples)
        preflight()
        n = stop - start
        out = np.empty((n, series.n_channels), dtype=np.int16)
        if n == 0:
            return out
        with blocks.lock, buffers.get((n, series.n_channels), work) as scratch:
            source = blocks.rows(start, stop)
            values = scratch[:n]
            np.copyto(values, source, casting="unsafe")
            bad = scale_to_int16(values, scale, out, shift=scaling.shift, original=lambda: source)
            if bad is not None:
                channel = int(np.flatnonzero(~np.isfinite(source[bad].astype(np.float64)))[0])
                raise _nonfinite(series, start + bad, channel)
            _refuse_clipped(series, source, out, scaling, start)
        return out

    return read_chunk


def _nonfinite(series: _Series, sample: int, channel: int) -> SessionInputError:
    return SessionInputError(
        series.data_file,
        f"NaN or inf sample at sample {sample}, channel {channel} of the ElectricalSeries {series.name!r}",
        "repair or re-export the recording without NaN/inf",
    )


def _refuse_clipped(series: _Series, source: np.ndarray, out: np.ndarray, scaling: _Scaling, start: int) -> None:
    """Refuse a block in which ``scale_to_int16`` clipped: only samples at ±32767 are checked against the exact value
    (the range pass before the first read makes this a last line of defence)."""
    flat = np.flatnonzero((out == INT16_LIMIT) | (out == -INT16_LIMIT))
    if not flat.size:
        return
    rows, channels = np.divmod(flat, out.shape[1])
    scale = np.asarray(scaling.scale, dtype=np.float64)
    exact = source[rows, channels].astype(np.float64) * scale[channels] + scaling.shift
    clipped = np.flatnonzero(np.abs(exact) >= INT16_LIMIT + 0.5)
    if clipped.size:
        first = clipped[0]
        raise _out_of_range(
            series, scaling, start + int(rows[first]), int(channels[first]), float(exact[first]) * scaling.uv_per_bit
        )


# --------------------------------------------------------------------------------------------- scaling


def _round_up(value: float, digits: int = 4) -> float:
    """``value`` rounded up to ``digits`` significant digits (a readable µV/bit that is never smaller)."""
    step = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return float(f"{math.ceil(value / step - 1e-9) * step:.{digits}g}")


#: A step fits a sample of ``x`` µV when ``|x| / step`` is at most this (rounds to ±32767 with float32 margin).
INT16_FIT = INT16_LIMIT + 0.4


@dataclass(frozen=True)
class _Range:
    """What a pass over (part of) a series saw: per channel the largest finite |µV|, the samples beyond a limit
    (count; first as sample, channel, µV), the first NaN/inf (sample, channel), and how much it read."""

    peak_uv: np.ndarray
    over: int
    first_over: tuple[int, int, float] | None
    first_bad: tuple[int, int] | None
    scanned_samples: int
    covered: bool


_SCAN_CACHE: dict[tuple, _Range] = {}


def _scan_blocks(n_blocks: int, block_bytes: int) -> list[int]:
    """Which blocks a bounded read takes: all when they fit in ``SCAN_BYTES``, else that many spread evenly."""
    fit = max(1, SCAN_BYTES // max(block_bytes, 1))
    return list(range(n_blocks)) if fit >= n_blocks else sorted({round(i) for i in np.linspace(0, n_blocks - 1, fit)})


def _range_scan(
    series: _Series,
    per_channel: np.ndarray,
    offset_uv: float,
    limit_uv: float,
    bounded: bool,
    stop_at_first: bool = False,
) -> _Range:
    """Per-channel extremes of the samples in µV, block by block (one block of memory): of at most ``SCAN_BYTES``
    (``bounded``: blocks spread over the series) or of every sample. Each block's per-channel min/max is taken in the
    stored dtype; only a block that exceeds ``limit_uv`` or holds a NaN/inf is looked at sample by sample.
    ``stop_at_first``: return at the first block that does."""
    data = series.data
    stat = (data.file / data.name if data.zarr_backed else data.file).stat()
    key = (str(data.file.resolve()), data.name, stat.st_size, stat.st_mtime_ns, per_channel.tobytes(), offset_uv)
    key += (limit_uv, SCAN_BYTES if bounded else None, stop_at_first)
    if key in _SCAN_CACHE:
        return _SCAN_CACHE[key]
    blocks = _Blocks(series)
    block_bytes = blocks.block_rows * series.n_channels * series.dtype.itemsize
    chosen = _scan_blocks(blocks.n_blocks, block_bytes) if bounded else range(blocks.n_blocks)
    peak, over, scanned = np.zeros(series.n_channels), 0, 0
    first_over: tuple[int, int, float] | None = None
    first_bad: tuple[int, int] | None = None
    try:
        for index in chosen:
            start, block = blocks.block(index)
            scanned += len(block)
            ends = np.abs(np.stack([block.max(axis=0), block.min(axis=0)]).astype(np.float64) * per_channel + offset_uv)
            uv = None
            if not np.isfinite(ends).all():  # a NaN/inf (or a float64 beyond µV range): locate it, peak of the rest
                uv = np.abs(block.astype(np.float64) * per_channel + offset_uv)
                bad = ~np.isfinite(uv)
                if first_bad is None:
                    row, channel = (int(i[0]) for i in np.nonzero(bad))
                    first_bad = (start + row, channel)
                uv[bad] = 0.0
                ends = uv.max(axis=0)[None, :]
            block_peak = ends.max(axis=0)
            np.maximum(peak, block_peak, out=peak)
            if block_peak.max() > limit_uv:
                if uv is None:
                    uv = np.abs(block.astype(np.float64) * per_channel + offset_uv)
                beyond = uv > limit_uv
                over += int(np.count_nonzero(beyond))
                if first_over is None:
                    row, channel = (int(i[0]) for i in np.nonzero(beyond))
                    value = float(block[row, channel]) * float(per_channel[channel]) + offset_uv
                    first_over = (start + row, channel, value)
            if stop_at_first and (first_over or first_bad):
                break
    finally:
        blocks.close()
    result = _Range(peak, over, first_over, first_bad, scanned, scanned == series.n_samples)
    _SCAN_CACHE[key] = result
    return result


@dataclass(frozen=True)
class _Scaling:
    """The series' µV/bit, the per-channel factor and shift to int16 bits (``scale`` None: int16 kept as stored),
    the note for the record, and what is left to check before the first read: ``verify`` (a range pass over every
    sample at this step) and a NaN/inf the open-time scan already saw (``scan``)."""

    uv_per_bit: float
    scale: np.ndarray | None
    shift: float
    note: str
    per_channel: np.ndarray
    offset_uv: float
    verify: bool = False
    scan: _Range | None = None


def _scaling(series: _Series) -> _Scaling:
    """The step: int16 with one gain as stored; else the finest channel gain for integers (0.195 µV for floats), or,
    where a channel's largest sample would not fit int16 at that step, the smallest step at which all fit."""
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
        return _Scaling(uv_per_bit, None, 0.0, note, per_channel, offset_uv)
    how = f"{dtype.name} x {factors}" + (f" + offset {series.offset:g}" if series.offset else "")
    integer = dtype.kind in "iu"
    gain_span = np.abs(per_channel)
    finest = float(f"{gain_span.min():.12g}") if integer else FLOAT_UV_PER_BIT
    finest_note = (
        f"the finest channel gain (gains {gain_span.min():.6g}..{gain_span.max():.6g} µV/bit, each channel rescaled)"
        if integer and series.channel_conversion is not None and not np.allclose(gain_span, gain_span[0], rtol=1e-6)
        else ("the gain" if integer else "the float default")
    )
    bound = None
    if integer and dtype.itemsize <= 2:  # the dtype's range bounds every sample: no scan needed when it fits
        info = np.iinfo(dtype)
        bound = np.maximum(np.abs(info.min * per_channel + offset_uv), np.abs(info.max * per_channel + offset_uv))
        if float(bound.max()) <= INT16_FIT * finest:
            note = (
                f"{how} scaled to int16 at {finest:g} µV/bit, {finest_note}; the {dtype.name} range fits: nothing clips"
            )
            return _Scaling(finest, per_channel / finest, offset_uv / finest, note, per_channel, offset_uv)
    coarsest = max(MAX_UV_PER_BIT, finest)
    scan = _range_scan(series, per_channel, offset_uv, INT16_LIMIT * coarsest, bounded=True)
    if scan.over:
        _refuse_scanned(series, scan, coarsest)
    wanted = scan.peak_uv * (1.0 if scan.covered else SCAN_HEADROOM)
    if bound is not None:
        wanted = np.minimum(wanted, bound)
    largest = float(wanted.max())
    if largest <= INT16_FIT * finest:
        uv_per_bit, why = finest, finest_note
    else:
        uv_per_bit = min(_round_up(largest / INT16_LIMIT), coarsest)
        channel = int(wanted.argmax())
        why = (
            f"coarser than {finest_note.split(' (')[0]} {finest:g} so that channel {channel}'s largest |sample| "
            f"{scan.peak_uv[channel]:.6g} µV{'' if scan.covered else f' (x{SCAN_HEADROOM:g} headroom)'} fits"
        )
    verify = not scan.covered and (bound is None or float(bound.max()) > INT16_FIT * uv_per_bit)
    if scan.covered:
        seen = f"every sample scanned: nothing clips (largest |sample| {float(scan.peak_uv.max()):.6g} µV)"
    else:
        seen = f"a scan of {scan.scanned_samples / series.rate:.1f} s of {series.n_samples / series.rate:.1f} s" + (
            "; every sample is range-checked before the first read, never clipped"
            if verify
            else f"; the {dtype.name} range fits: nothing clips"
        )
    note = f"{how} scaled to int16 at {uv_per_bit:g} µV/bit, {why}; {seen}"
    return _Scaling(
        uv_per_bit, per_channel / uv_per_bit, offset_uv / uv_per_bit, note, per_channel, offset_uv, verify, scan
    )


def _refuse_scanned(series: _Series, scan: _Range, coarsest: float) -> None:
    """Samples beyond int16 at the coarsest usable step: refused at open, with how many the scan saw."""
    limit_uv = INT16_LIMIT * coarsest
    total = series.n_samples * series.n_channels
    seen = "" if scan.covered else f" (in the {scan.scanned_samples * series.n_channels} scanned)"
    sample, channel, value = scan.first_over  # type: ignore[misc]
    raise series.error(
        f"{scan.over} of {total} samples{seen} exceed ±{limit_uv / 1000:g} mV (first: sample {sample}, "
        f"{value / 1000:+.6g} mV on channel {channel}; largest {float(scan.peak_uv.max()) / 1000:g} mV on channel "
        f"{int(scan.peak_uv.argmax())}): they would clip in int16 at the coarsest usable step ({coarsest:g} µV/bit)",
        "check conversion/channel_conversion/unit (volts expected) and re-export the file with the acquisition "
        "system's scaling; if they are an artifact, re-export without it",
    )


def _out_of_range(series: _Series, scaling: _Scaling, sample: int, channel: int, value_uv: float) -> SessionInputError:
    """A sample that does not fit int16 at the step chosen when the series was opened."""
    limit = (INT16_LIMIT + 0.5) * scaling.uv_per_bit
    if abs(value_uv) > (INT16_LIMIT + 0.5) * max(MAX_UV_PER_BIT, scaling.uv_per_bit):
        fix = (
            "check conversion/channel_conversion/unit (volts expected); if the value is an artifact, re-export the "
            "file with it removed or clipped"
        )
    else:
        fix = (
            "re-export the traces as int16 with their conversion (int16 is kept as stored, no scan needed), or "
            "re-export without the artifact"
        )
    return series.error(
        f"sample {sample} ({sample / series.rate:.3f} s) on channel {channel} is {value_uv / 1000:+.6g} mV, beyond "
        f"±{limit / 1000:.6g} mV, the int16 range at the {scaling.uv_per_bit:g} µV/bit chosen from "
        f"{'the whole series' if scaling.scan is None or scaling.scan.covered else 'a scan of part of it'}: "
        "refused before anything is written, never clipped",
        fix,
    )


def _pending_checks(series: _Series, scaling: _Scaling) -> list[Callable[[], None]]:
    """What must be checked before the first sample is read: the timestamps and the samples the open-time reads
    did not cover, and a NaN/inf the scan already saw."""
    checks: list[Callable[[], None]] = []
    clock = series.clock
    if clock.timestamps is not None and not clock.checked:

        def timestamps() -> None:
            array, handle = _open_array(clock.timestamps)  # type: ignore[arg-type]
            try:
                n_blocks = math.ceil(series.n_samples / TIMESTAMP_BLOCK)
                where = f"ElectricalSeries {series.name!r}"
                _check_timestamps(lambda a, b: array[a:b], series.n_samples, clock, series.path, where, range(n_blocks))
            finally:
                if handle is not None:
                    handle.close()

        checks.append(timestamps)
    scan = scaling.scan
    if scan is not None and scan.first_bad is not None:
        sample, channel = scan.first_bad

        def seen_nonfinite() -> None:
            raise _nonfinite(series, sample, channel)

        checks.append(seen_nonfinite)
    elif scaling.verify:

        def every_sample() -> None:
            limit = (INT16_LIMIT + 0.5) * scaling.uv_per_bit
            result = _range_scan(
                series, scaling.per_channel, scaling.offset_uv, limit, bounded=False, stop_at_first=True
            )
            if result.first_bad is not None and (
                result.first_over is None or result.first_bad[0] <= result.first_over[0]
            ):
                raise _nonfinite(series, *result.first_bad)
            if result.first_over is not None:
                raise _out_of_range(series, scaling, *result.first_over)

        checks.append(every_sample)
    return checks


# -------------------------------------------------------------------------------------------- the API


def open_recording(
    session_dir: Path, probe: str | None = None, options: ReadOptions = ReadOptions()
) -> RecordingSource:
    """One probe as the files say (reader only: no session config applied; use formats.scan_session)."""
    reading = scan(session_dir)
    return reading.open(reading.listing.pick(probe, session_dir), options)


def _open(session_dir: Path, folder: _Folder, name: str, options: ReadOptions) -> RecordingSource:
    """Describe one probe (wideband ElectricalSeries) of the folder's NWB files; samples are read lazily."""
    path, series_name = folder.probes[name]
    with _nwb_file(path) as nwbfile:
        series = _describe(nwbfile.acquisition[series_name], path, dict(nwbfile.electrode_groups))
        date = nwbfile.session_start_time.date()
    scaling = _scaling(series)
    blocks = _Blocks(series)
    preflight = _Preflight(_pending_checks(series, scaling))
    if scaling.scale is None:
        reader = _int16_reader(blocks, preflight)
    else:
        reader = _scaling_reader(blocks, scaling, preflight)
    placement = FilePlacement(series.name, path, series.clock.first_sample, series.n_samples)
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
        uv_per_bit=scaling.uv_per_bit,
        read_chunk=reader,
        probe=series.probe,
        probe_file=None,
        zero_copy_path=None,
        scaling_note=f"{scaling.note}; ElectricalSeries {series.name!r}; {series.clock.note}; probe: {series.geometry}",
        probe_name=name,
        details={
            "nwb_file": path.name,
            "nwb_series": series.name,
            "starting_time_s": series.clock.start_s,
            "geometry": series.geometry,
            "skipped_streams": list(folder.skipped),
        },
        timeline=tuple(lay_out([placement], series.rate, options.max_gap_fill_s)),
    )

"""NWB (HDF5): the raw ``ElectricalSeries`` in ``/acquisition`` and its rows of the electrodes table.

Geometry comes from the electrodes table (``rel_x``/``rel_y``, else ``x``/``y``, in µm; ``group`` → shank
ids). Samples are read lazily: each ``read_chunk`` opens the file with h5py and slices only its rows.
int16 series are returned as stored (µV/bit = conversion x channel_conversion x unit); other dtypes are
scaled to µV (``data x conversion x channel_conversion + offset``) and then to int16 at 0.195 µV/bit.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from probeinterface import Probe

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats.base import BufferPool, ProbeListing, ChunkReader, RecordingSource, scale_to_int16

FORMAT = "nwb"
SUFFIXES = (".nwb",)
#: Non-int16 series are scaled to int16 with this resolution (Intan's step, ±6.4 mV range).
FLOAT_UV_PER_BIT = 0.195
#: With several ElectricalSeries in acquisition, only those sampled at least this fast are candidates.
MIN_SPIKE_BAND_RATE = 10_000.0
_UNIT_TO_UV = {"volts": 1e6, "volt": 1e6, "v": 1e6, "millivolts": 1e3, "mv": 1e3, "microvolts": 1.0, "uv": 1.0, "µv": 1.0}


def find_files(session_dir: Path) -> list[Path]:
    """The ``.nwb`` files directly in the session folder."""
    return sorted(p for p in session_dir.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())


def _pick_series(nwbfile, path: Path):
    from pynwb.ecephys import ElectricalSeries, SpikeEventSeries

    found = {name: obj for name, obj in nwbfile.acquisition.items() if isinstance(obj, ElectricalSeries) and not isinstance(obj, SpikeEventSeries)}
    if not found:
        present = ", ".join(f"{name} ({type(obj).__name__})" for name, obj in nwbfile.acquisition.items()) or "nothing"
        raise SessionInputError(path, f"the NWB file has no ElectricalSeries in /acquisition (found: {present})", "export the raw voltage traces as an ElectricalSeries in the file's acquisition group")
    if len(found) > 1:
        fast = {name: s for name, s in found.items() if s.rate is None or s.rate >= MIN_SPIKE_BAND_RATE}
        found = fast or found
    if len(found) > 1:
        raise SessionInputError(path, f"the NWB file has several wideband ElectricalSeries in /acquisition ({', '.join(sorted(found))})", "keep one probe's raw ElectricalSeries per NWB file (split the file)")
    return next(iter(found.values()))


def _probe(table, path: Path) -> tuple[Probe | None, str]:
    """Probe from the series' electrode rows (``rel_x``/``rel_y`` preferred over ``x``/``y``)."""
    columns = set(table.columns)
    for cx, cy in (("rel_x", "rel_y"), ("x", "y")):
        if cx in columns and cy in columns:
            positions = np.column_stack([np.asarray(table[cx], dtype=float), np.asarray(table[cy], dtype=float)])
            if np.isfinite(positions).all():
                break
    else:
        return None, "the electrodes table has no rel_x/rel_y or x/y positions"
    if "group_name" in columns:
        shanks = [str(g) for g in table["group_name"]]
    elif "group" in columns:
        shanks = [str(getattr(g, "name", g)) for g in table["group"]]
    else:
        shanks = []
    probe = Probe(ndim=2, si_units="um", name=path.stem)
    probe.set_contacts(positions=positions, shapes="square", shape_params={"width": 12})
    probe.set_device_channel_indices(np.arange(len(positions)))
    if len(set(shanks)) > 1:
        probe.set_shank_ids(np.asarray(shanks, dtype=str))
    return probe, f"electrodes table {cx}/{cy}" + (f", {len(set(shanks))} shanks from group" if len(set(shanks)) > 1 else "")


def list_probes(session_dir: Path) -> ProbeListing:
    """The single ``.nwb`` file's sortable ElectricalSeries (one probe)."""
    files = find_files(session_dir)
    if len(files) != 1:
        raise SessionInputError(session_dir, f"expected one .nwb file, found {len(files)}", "keep one NWB recording per session folder")
    return ProbeListing({"nwb": (files[0],)})


def open_recording(session_dir: Path, probe: str | None = None) -> RecordingSource:
    """Describe the ElectricalSeries of the single ``.nwb`` file in ``session_dir``."""
    listing = list_probes(session_dir)
    path = listing.probes[listing.pick(probe, session_dir)][0]
    if path.stat().st_size == 0:
        raise SessionInputError(path, "the NWB file is empty (0 bytes)", "copy the file again")
    import h5py
    from pynwb import NWBHDF5IO

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            io = NWBHDF5IO(str(path), mode="r", load_namespaces=True)
            nwbfile = io.read()
    except PermissionError as exc:  # h5py's carries no file name: add it; formats.open_recording reports it
        raise PermissionError(exc.errno, exc.strerror or "Permission denied", str(path)) from None
    except Exception as exc:  # h5py/hdmf raise many kinds for truncated or foreign files
        raise SessionInputError(path, f"cannot read the NWB file ({type(exc).__name__}: {exc})", "copy the file again completely; it must be an HDF5 NWB 2.x file") from None
    try:
        series = _pick_series(nwbfile, path)
        data = series.data
        if not isinstance(data, h5py.Dataset):
            raise SessionInputError(path, f"the ElectricalSeries {series.name!r} data is not an HDF5 dataset", "store the traces in the NWB file itself")
        data_file, data_name = Path(data.file.filename), data.name
        shape, dtype = tuple(data.shape), np.dtype(data.dtype)
        if len(shape) not in (1, 2) or shape[0] == 0:
            raise SessionInputError(path, f"the ElectricalSeries {series.name!r} has shape {shape}; expected [samples, channels]", "store the traces as a 2-D [time, channel] dataset")
        n_samples, n_channels = shape[0], (shape[1] if len(shape) == 2 else 1)
        if dtype.kind not in "iuf":
            raise SessionInputError(path, f"the ElectricalSeries {series.name!r} has non-numeric dtype {dtype}", "store the traces as integers or floats")
        rows = series.electrodes.to_dataframe() if series.electrodes is not None else None
        if rows is None or len(rows) != n_channels:
            listed = 0 if rows is None else len(rows)
            raise SessionInputError(path, f"the ElectricalSeries {series.name!r} has {n_channels} channels but its electrodes region lists {listed} electrodes", "re-export the file with one electrodes-table row per data column")
        probe, probe_note = _probe(rows, path)
        fs, fs_note = _rate(series, path)
        unit = str(series.unit or "volts").strip().lower()
        if unit not in _UNIT_TO_UV:
            raise SessionInputError(path, f"the ElectricalSeries {series.name!r} has unknown unit {series.unit!r}", "store voltages in volts (NWB's default)")
        conversion = float(series.conversion if series.conversion is not None else 1.0)
        offset = float(getattr(series, "offset", 0.0) or 0.0)
        channel_conversion = None if series.channel_conversion is None else np.asarray(series.channel_conversion[:], dtype=float)
        if channel_conversion is not None and channel_conversion.shape != (n_channels,):
            raise SessionInputError(path, f"channel_conversion has {channel_conversion.size} values for {n_channels} channels", "re-export the file with one channel_conversion per channel")
        date = nwbfile.session_start_time.date()
        series_name = series.name
    finally:
        io.close()
    per_channel = (channel_conversion if channel_conversion is not None else np.ones(n_channels)) * conversion * _UNIT_TO_UV[unit]
    if not np.isfinite(per_channel).all() or (per_channel == 0).any():
        raise SessionInputError(path, f"the ElectricalSeries {series_name!r} has an unusable conversion factor ({conversion}) or channel_conversion", "re-export the file with the acquisition system's conversion to volts")
    if dtype == np.int16 and np.allclose(per_channel, per_channel[0], rtol=1e-6) and per_channel[0] > 0:
        uv_per_bit = float(f"{per_channel[0]:.12g}")  # 1.95e-07 V x 1e6 is 0.19499999999999998
        reader = _int16_reader(data_file, data_name, n_samples, n_channels)
        factors = f"conversion {conversion:g}" + (" x channel_conversion" if channel_conversion is not None else "")
        note = f"int16 kept as stored: {factors} ({_unit_note(unit)}) = {uv_per_bit:g} µV/bit"
        if offset:
            note += f" (offset {offset:g} ignored: a DC shift Kilosort's high-pass removes)"
    else:
        uv_per_bit = FLOAT_UV_PER_BIT
        reader = _scaling_reader(data_file, data_name, n_samples, n_channels, per_channel / FLOAT_UV_PER_BIT, offset * _UNIT_TO_UV[unit] / FLOAT_UV_PER_BIT)
        note = f"{dtype.name} x conversion {conversion:g}" + (" x channel_conversion" if channel_conversion is not None else "") + f" + offset {offset:g} ({_unit_note(unit)}) scaled to int16 at {FLOAT_UV_PER_BIT} µV/bit (clipped at ±32767)"
    return RecordingSource(
        format=FORMAT,
        session_dir=session_dir,
        data_files=(path,) if data_file.resolve() == path.resolve() else (path, data_file),
        sampling_frequency=fs,
        n_channels=n_channels,
        n_samples=n_samples,
        source_dtype=dtype.name,
        recording_date=date,
        sorting_channels=tuple(range(n_channels)),
        uv_per_bit=uv_per_bit,
        read_chunk=reader,
        probe=probe,
        probe_file=None,
        zero_copy_path=None,
        scaling_note=f"{note}; ElectricalSeries {series_name!r}; {fs_note}; probe: {probe_note}",
        probe_name="nwb",
    )


def _unit_note(unit: str) -> str:
    return f"{unit} -> x{_UNIT_TO_UV[unit]:g} µV"


def _rate(series, path: Path) -> tuple[float, str]:
    if series.rate is not None:
        if series.rate <= 0:
            raise SessionInputError(path, f"the ElectricalSeries {series.name!r} has rate {series.rate}", "store the sampling rate in Hz")
        return float(series.rate), "rate from the series"
    timestamps = series.timestamps
    if timestamps is None or len(timestamps) < 2:
        raise SessionInputError(path, f"the ElectricalSeries {series.name!r} has neither a rate nor timestamps", "store the sampling rate (rate=...) with the series")
    steps = np.diff(np.asarray(timestamps[: min(len(timestamps), 100_001)], dtype=float))
    step = float(np.median(steps))
    if not step > 0:
        raise SessionInputError(path, f"the ElectricalSeries {series.name!r} timestamps do not increase", "store the sampling rate (rate=...) with the series")
    return 1.0 / step, "rate from the median timestamp step"


def _read_rows(data_file: Path, data_name: str, start: int, stop: int) -> np.ndarray:
    import h5py

    try:
        with h5py.File(data_file, "r") as handle:
            block = handle[data_name][start:stop]
    except (OSError, KeyError, ValueError) as exc:
        raise SessionInputError(data_file, f"cannot read samples {start}:{stop} ({exc})", "copy the NWB file again completely") from None
    return block[:, None] if block.ndim == 1 else block


def _int16_reader(data_file: Path, data_name: str, n_samples: int, n_channels: int) -> ChunkReader:
    def read_chunk(start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= n_samples:
            raise ValueError(f"samples {start}:{stop} are outside 0:{n_samples}")
        return np.ascontiguousarray(_read_rows(data_file, data_name, start, stop), dtype=np.int16)

    return read_chunk


def _scaling_reader(data_file: Path, data_name: str, n_samples: int, n_channels: int, scale: np.ndarray, shift: float) -> ChunkReader:
    """Scale any numeric series to int16 bits; NaN/inf is refused naming the file, the sample and the channel.

    The HDF5 file stays open for the reader's life (re-opening it per chunk cost more than the chunk), and each
    chunk is read by HDF5 straight into a reused float32 buffer (``read_direct`` converts other dtypes on the
    way), then scaled there in place by ``scale_to_int16``.
    """
    import h5py

    buffers = BufferPool()
    scale32 = np.asarray(scale, dtype=np.float32)
    state: dict[str, object] = {}

    def dataset():
        if "dataset" not in state:
            try:
                handle = h5py.File(data_file, "r")
            except OSError as exc:
                raise SessionInputError(data_file, f"cannot open the NWB file for reading ({exc})", "copy the NWB file again completely") from None
            state["file"], state["dataset"] = handle, handle[data_name]
        return state["dataset"]

    def read_chunk(start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= n_samples:
            raise ValueError(f"samples {start}:{stop} are outside 0:{n_samples}")
        n = stop - start
        out = np.empty((n, n_channels), dtype=np.int16)
        if n == 0:
            return out
        with buffers.get((n, n_channels), np.float32) as work:
            values = work[:n]
            data = dataset()
            try:
                data.read_direct(values.reshape((n,) + data.shape[1:]), source_sel=np.s_[start:stop])
            except (OSError, ValueError) as exc:
                raise SessionInputError(data_file, f"cannot read samples {start}:{stop} ({exc})", "copy the NWB file again completely") from None
            bad = scale_to_int16(values, scale32, out, shift=shift, original=lambda: _read_rows(data_file, data_name, start, stop))
            if bad is not None:
                row = _read_rows(data_file, data_name, start + bad, start + bad + 1)[0]
                col = int(np.flatnonzero(~np.isfinite(row.astype(np.float64)))[0])
                raise SessionInputError(data_file, f"NaN or inf sample at sample {start + bad}, channel {col} of the ElectricalSeries", "repair or re-export the recording without NaN/inf")
        return out

    return read_chunk

"""Plain interleaved binary + JSON sidecar (``name.bin`` + ``name.json``).

Sidecar keys: ``sampling_frequency`` (Hz), ``n_channels``, ``dtype`` (e.g. ``int16``, ``float32``),
``probe_file`` (relative to the session folder), ``recording_date`` (YYYY-MM-DD; else ks_session.json must set it),
``uv_per_bit`` (int16 sources) or ``units`` (``uV``/``mV``/``V`` for float sources),
``sorting_channels`` (list of channel indices; default: those wired in the probe).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats.base import (
    BufferPool,
    InterleavedFile,
    MissingDate,
    ProbeListing,
    ReadOptions,
    RecordingSource,
    channel_selector,
    memmap_int16_reader,
    parse_recording_date,
    scale_to_int16,
)

FORMAT = "raw_binary"
DATA_SUFFIXES = (".bin", ".dat", ".raw")
#: Float sources are scaled to int16 with this resolution: ±6.4 mV at 0.195 µV/bit (Intan's step).
FLOAT_UV_PER_BIT = 0.195
_UNIT_TO_UV = {"uV": 1.0, "µV": 1.0, "mV": 1e3, "V": 1e6}


def find_files(session_dir: Path) -> list[Path]:
    """Data files with a same-stem JSON sidecar (``*.ap.bin`` is SpikeGLX, not raw)."""
    found = []
    for path in sorted(session_dir.iterdir()):
        if path.suffix in DATA_SUFFIXES and not path.name.endswith(".ap.bin") and path.with_suffix(".json").is_file():
            found.append(path)
    return found


_FIX_SIDECAR = 'write a JSON object such as {"sampling_frequency": 30000, "n_channels": 384, "dtype": "int16"}'


def _sidecar(path: Path) -> dict:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SessionInputError(
            path, f"the sidecar is not valid JSON ({exc.msg} at line {exc.lineno})", "fix the JSON syntax"
        ) from None
    except UnicodeDecodeError:
        raise SessionInputError(path, "the sidecar is not UTF-8 text", "save it as UTF-8 JSON") from None
    except RecursionError:
        raise SessionInputError(path, "the sidecar's JSON is nested too deeply to be a sidecar", _FIX_SIDECAR) from None
    except PermissionError:
        raise  # reported by formats.open_recording with the permission fix
    except OSError as exc:
        raise SessionInputError(
            path, f"cannot read the sidecar ({exc.strerror})", "check the file's permissions"
        ) from None
    if not isinstance(payload, dict):
        raise SessionInputError(path, "the sidecar must be a JSON object", _FIX_SIDECAR)
    for key in ("sampling_frequency", "n_channels", "dtype"):
        if key not in payload:
            raise SessionInputError(path, f"the sidecar has no {key!r}", f"add {key!r} to the sidecar")
    return payload


class Reading:
    """A raw-binary session folder: one probe per data file with a sidecar, named by the file's stem."""

    def __init__(self, session_dir: Path) -> None:
        self.folder = session_dir
        self.listing = ProbeListing({path.stem: (path, path.with_suffix(".json")) for path in find_files(session_dir)})

    def open(self, name: str, options: ReadOptions = ReadOptions()) -> RecordingSource:
        data_path = self.listing.probes[name][0]
        sidecar_path = data_path.with_suffix(".json")
        return describe_binary(data_path, _sidecar(sidecar_path), sidecar_path, self.folder, session=True)


def scan(session_dir: Path) -> Reading:
    return Reading(session_dir)


def list_probes(session_dir: Path) -> ProbeListing:
    """The folder's probes (reader only: no session config applied)."""
    return scan(session_dir).listing


def open_recording(
    session_dir: Path, probe: str | None = None, options: ReadOptions = ReadOptions()
) -> RecordingSource:
    """One raw binary recording as its sidecar says (reader only: no session config applied)."""
    reading = scan(session_dir)
    return reading.open(reading.listing.pick(probe, session_dir), options)


def describe_binary(
    data_path: Path, meta: dict, sidecar_path: Path, session_dir: Path, session: bool = False
) -> RecordingSource:
    """A raw binary described by sidecar-style ``meta`` (``sidecar_path`` is named in errors).

    ``session``: a landed session folder, whose date must come from the sidecar or ks_session.json. Otherwise (one
    file given to ``ks-platform sort``, filed under no date) an undated file is described with its modification date,
    said in ``scaling_note``."""
    dtype = _sample_dtype(meta["dtype"], sidecar_path)
    n_channels = _whole_number(meta, "n_channels", sidecar_path)
    fs = _positive_number(meta, "sampling_frequency", sidecar_path)
    size = data_path.stat().st_size
    if size == 0:
        raise SessionInputError(data_path, "the data file is empty (0 bytes)", "copy the recording again")
    frame = n_channels * dtype.itemsize
    if frame > size:
        raise SessionInputError(
            sidecar_path,
            f"one frame of {n_channels} channels x {dtype.itemsize} bytes is larger than the whole data file "
            f"({size} bytes)",
            f"correct n_channels/dtype in {sidecar_path.name} (or copy {data_path.name} again completely)",
        )
    if size % frame:
        raise SessionInputError(
            data_path,
            f"size {size} bytes is not a multiple of {n_channels} channels x {dtype.itemsize} bytes (truncated copy, or wrong n_channels/dtype in {sidecar_path.name})",
            "copy the file again completely, or correct the sidecar",
        )
    n_samples = size // frame
    probe_file = meta.get("probe_file")
    if probe_file is not None and not isinstance(probe_file, str):
        raise SessionInputError(
            sidecar_path, f"probe_file must be a file name, got {probe_file!r}", 'write "probe_file": "probe.json"'
        )
    probe_path = (session_dir / probe_file) if probe_file else None
    if probe_path is not None and Path(session_dir).resolve() not in probe_path.resolve().parents:
        raise SessionInputError(
            sidecar_path,
            f"probe_file {probe_file!r} resolves to {probe_path.resolve()}, outside the session folder",
            "copy the probe file into the session folder and name it relative to that folder",
        )
    if probe_path is not None and probe_path.is_dir():
        problem = f"probe_file {probe_file!r} is a folder, not a probe file"
        raise SessionInputError(sidecar_path, problem, "name the probe file itself (.json, .prb or .mat)")
    if probe_path is not None and not probe_path.is_file():
        raise SessionInputError(
            sidecar_path,
            f"probe_file {probe_file!r} does not exist",
            "put the probe file in the session folder or fix the path",
        )
    listed = meta.get("sorting_channels", list(range(n_channels)))
    if (
        not isinstance(listed, list)
        or not listed
        or not all(isinstance(c, int) and not isinstance(c, bool) for c in listed)
    ):
        raise SessionInputError(
            sidecar_path,
            f"sorting_channels must be a non-empty list of channel indices, got {listed!r}",
            "list the channels to sort, e.g. [0, 1, 2], or remove the key",
        )
    sorting = tuple(listed)
    if any(c < 0 or c >= n_channels for c in sorting):
        problem = f"sorting_channels lists channels outside 0..{n_channels - 1}"
        fix = f"list only channels 0 to {n_channels - 1} in sorting_channels, or remove the key"
        raise SessionInputError(sidecar_path, problem, fix)
    date_text = meta.get("recording_date")
    if date_text is not None and not isinstance(date_text, str):
        raise SessionInputError(
            sidecar_path,
            f"recording_date must be a YYYY-MM-DD string, got {date_text!r}",
            'write "recording_date": "2026-03-02"',
        )
    date = parse_recording_date(date_text, sidecar_path) if date_text else None
    date_note = ""
    missing = None
    if date is None and session:
        missing = MissingDate(
            sidecar_path, "no recording_date in the sidecar", 'add "recording_date": "YYYY-MM-DD" to it'
        )
    elif date is None:
        date = dt.date.fromtimestamp(data_path.stat().st_mtime)
        date_note = "; date: the file's modification date (a single file, not a session)"
    if dtype == np.int16:
        uv_per_bit = _positive_number({"uv_per_bit": 1.0, **meta}, "uv_per_bit", sidecar_path)
        reader = memmap_int16_reader(data_path, n_channels, n_samples, sorting)
        zero_copy = data_path  # Kilosort reads all n_channels and selects via chanMap
        note = f"int16 source, uv_per_bit={uv_per_bit} from sidecar"
    else:
        units = meta.get("units", "uV")
        if units not in _UNIT_TO_UV:
            raise SessionInputError(sidecar_path, f"unknown units {units!r}", "use one of uV, mV, V")
        scale = _UNIT_TO_UV[units] / FLOAT_UV_PER_BIT
        uv_per_bit = FLOAT_UV_PER_BIT
        reader = float_scaling_reader(data_path, dtype, n_channels, n_samples, sorting, scale)
        zero_copy = None
        note = f"{dtype.name} in {units} scaled by {scale:g} to int16 ({FLOAT_UV_PER_BIT} µV/bit, float32 math, rounded to nearest, clipped at ±32767)"
    return RecordingSource(
        format=FORMAT,
        session_dir=session_dir,
        data_files=(data_path, sidecar_path),
        sampling_frequency=fs,
        n_channels=n_channels,
        n_samples=n_samples,
        source_dtype=dtype.name,
        recording_date=date,
        missing_date=missing,
        sorting_channels=sorting,
        uv_per_bit=uv_per_bit,
        read_chunk=reader,
        probe=None,
        probe_file=probe_path,
        zero_copy_path=zero_copy,
        scaling_note=note + date_note,
        probe_name=data_path.stem,
    )


#: Sample types a sidecar may declare: int16 (used as stored) and the floats numpy computes with natively.
SAMPLE_DTYPES = ("int16", "float16", "float32", "float64")


def _sample_dtype(value: object, path: Path) -> np.dtype:
    try:
        dtype = np.dtype(value) if isinstance(value, str) else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in SAMPLE_DTYPES or not dtype.isnative:
        raise SessionInputError(
            path,
            f"dtype {value!r} is not a sample type the platform reads",
            f"use one of {', '.join(SAMPLE_DTYPES)} (little-endian)",
        )
    return dtype


def _whole_number(meta: dict, key: str, path: Path) -> int:
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SessionInputError(
            path, f"{key} must be a whole number > 0, got {value!r}", f"write the {key} as a number, e.g. 384"
        )
    return value


_EXAMPLES = {"sampling_frequency": "30000", "uv_per_bit": "0.195"}


def _positive_number(meta: dict, key: str, path: Path) -> float:
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        fix = f"write the {key} as a number, e.g. {_EXAMPLES.get(key, '1.0')}"
        raise SessionInputError(path, f"{key} must be a finite number > 0, got {value!r}", fix)
    return float(value)


def float_scaling_reader(
    path: Path, dtype: np.dtype, n_channels: int, n_samples: int, channels: tuple[int, ...], scale: float
):
    """Chunk reader that scales a float source to int16, refusing NaN/inf with a clear error.

    ``clip(rint(x * scale), ±32767)`` in float32, in place: the frames are read with ``preadv`` straight into a
    reused buffer and scaled there (a float32 source with all channels sorted needs no other array), or, for a
    channel subset or another dtype, scaled while being copied into a reused float32 buffer. See
    ``scale_to_int16`` for the precision and the NaN/inf rule.
    """
    file = InterleavedFile(path, np.dtype(dtype), n_channels, n_samples)
    selector = channel_selector(tuple(channels), n_channels)
    n_out = len(channels)
    in_place = selector is None and file.dtype == np.float32
    buffers = BufferPool()
    scale32 = np.float32(scale)

    def read_chunk(start: int, stop: int) -> np.ndarray:
        n = max(min(stop, n_samples) - start, 0)
        out = np.empty((n, n_out), dtype=np.int16)
        with buffers.get((n, n_channels), file.dtype) as frames, buffers.get((n, n_out), np.float32) as work:
            frames = file.read(start, stop, frames)
            if in_place:
                values = frames
            else:
                values = work[:n]
                picked = (
                    frames
                    if selector is None
                    else frames[:, selector]
                    if isinstance(selector, slice)
                    else np.take(frames, selector, axis=1)
                )
                np.copyto(values, picked, casting="unsafe")

            def original() -> np.ndarray:
                raw = file.read(start, stop)
                return raw if selector is None else raw[:, selector]

            bad = scale_to_int16(values, scale32, out, original=original)
            if bad is not None:
                raise SessionInputError(
                    path,
                    f"NaN or inf sample at sample {start + bad}",
                    "repair or re-export the recording without NaN/inf",
                )
        return out

    return read_chunk

"""What every format reader returns: a description of the recording plus a chunk reader."""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from probeinterface import Probe

from ks_platform.core.timeline import DEFAULT_MAX_GAP_FILL_S, TimelineSegment, relative_files

#: ``read_chunk(start, stop)`` returns int16 samples ``[stop - start, len(sorting_channels)]``.
ChunkReader = Callable[[int, int], np.ndarray]


@dataclass(frozen=True)
class ProbeListing:
    """What a session folder holds: its probes (one partition each, by probe name) and the streams it skips.

    ``probes`` maps each probe name (as the acquisition software names it: ``imec0``, ``ProbeA``, an
    ElectricalSeries name) to the files that hold its data; ``skipped`` lists ``"<stream>: <why>"`` for every
    stream that is not sorted (NI-DAQ, LF band, sync, ADC, …), so nothing is ignored silently.
    """

    probes: Mapping[str, tuple[Path, ...]]
    skipped: tuple[str, ...] = ()
    #: Segment partitions (``imec0-g1``) → the probe they were split from, when the session config asks for it.
    split_from: Mapping[str, str] = field(default_factory=dict)

    def pick(self, probe: str | None, session_dir: Path) -> str:
        """The probe name ``probe`` refers to (``None`` only when there is exactly one); a clear error otherwise."""
        from ks_platform.core.errors import SessionInputError

        names = sorted(self.probes)
        if not names:
            raise SessionInputError(
                session_dir,
                f"no probe recording to sort in this folder; it holds: {'; '.join(self.skipped) or 'no stream at all'}",
                "record the wideband/AP band of at least one probe",
            )
        if probe is None:
            if len(names) == 1:
                return names[0]
            raise SessionInputError(
                session_dir,
                f"the folder holds {len(names)} probes ({', '.join(names)}); a probe name is needed",
                f"name one of {names} (e.g. --probe {names[0] if names else 'imec0'})",
            )
        if probe in self.probes:
            return probe
        from ks_platform.core.sessions import key_name

        by_key = {key_name(name): name for name in names}
        if probe in by_key:
            return by_key[probe]
        raise SessionInputError(
            session_dir,
            f"no probe named {probe!r} in this folder (it holds {', '.join(names) or 'none'})",
            "use a probe name the folder holds, or retire the partition if the probe was removed",
        )


@dataclass(frozen=True)
class ReadOptions:
    """What the session config tells a reader (readers never read the config themselves)."""

    #: Longest gap between two files of one recording that is filled with zeros (seconds).
    max_gap_fill_s: float = DEFAULT_MAX_GAP_FILL_S


class HeaderFiles:
    """The header files one scan read (meta, oebin, settings.xml, sidecar…), kept as bytes: each is read from disk
    once per scan, and the fingerprint and the readable-file check take them from here."""

    def __init__(self) -> None:
        self._bytes: dict[Path, bytes] = {}

    def read(self, path: Path) -> bytes:
        path = Path(path)
        if path not in self._bytes:
            self._bytes[path] = path.read_bytes()
        return self._bytes[path]

    def text(self, path: Path, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read(path).decode(encoding, errors)

    def get(self, path: Path) -> bytes | None:
        return self._bytes.get(Path(path))


@dataclass(frozen=True)
class MissingDate:
    """Why a recording's own files hold no date: the file to name, what is missing, how the rig writes it."""

    path: Path
    what: str
    how: str


@dataclass(frozen=True)
class RecordingSource:
    """A recording found in a session folder, described without loading its samples.

    Channel indices (``sorting_channels``, the probe's ``device_channel_indices``) count the
    channels of the source as stored, e.g. 0..384 for a SpikeGLX AP file with its sync channel.
    """

    format: str
    session_dir: Path
    data_files: tuple[Path, ...]
    sampling_frequency: float
    n_channels: int
    n_samples: int
    source_dtype: str
    #: The date the recording's own files give; None (with ``missing_date``) when they give none.
    recording_date: dt.date | None
    sorting_channels: tuple[int, ...]
    uv_per_bit: float
    read_chunk: ChunkReader = field(repr=False, compare=False)
    probe: Probe | None = field(default=None, repr=False, compare=False)
    probe_file: Path | None = None
    #: Set when the source already is an interleaved int16 file Kilosort can read in place.
    zero_copy_path: Path | None = None
    #: Where gain/scaling facts came from, for the record.
    scaling_note: str = ""
    #: The probe's name as the acquisition software wrote it (``imec0``, ``ProbeA``, a series name).
    probe_name: str = ""
    #: Format-specific facts for the record (segments of a multi-gate run, skipped streams, real names…).
    details: Mapping[str, object] = field(default_factory=dict, compare=False)
    #: Where each file lies on the acquisition clock and in the binary (one segment per file; see core/timeline.py).
    timeline: tuple[TimelineSegment, ...] = field(default=(), compare=False)
    missing_date: MissingDate | None = field(default=None, repr=False, compare=False)
    #: The header files the reader read for this recording (None: it keeps none).
    headers: HeaderFiles | None = field(default=None, repr=False, compare=False)

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sampling_frequency

    @property
    def size_bytes(self) -> int:
        """Bytes of the data files (a folder, such as a Zarr NWB, counts the files inside it)."""
        return sum(
            sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file()) if Path(p).is_dir() else p.stat().st_size
            for p in self.data_files
        )

    @classmethod
    def interleaved_int16(
        cls, data_path: Path, n_channels: int, n_samples: int, sorting_channels: tuple[int, ...], **facts: object
    ) -> RecordingSource:
        """A source that already is the interleaved int16 file Kilosort reads: chunked reader and zero-copy set."""
        return cls(
            **facts,
            n_channels=n_channels,
            n_samples=n_samples,
            source_dtype="int16",
            sorting_channels=sorting_channels,
            read_chunk=memmap_int16_reader(data_path, n_channels, n_samples, sorting_channels),
            zero_copy_path=data_path,
        )

    def segments(self) -> tuple[TimelineSegment, ...]:
        """The timeline; a source of one file without one is that file from its own sample 0."""
        if self.timeline:
            return self.timeline
        first = self.zero_copy_path or (self.data_files[0] if self.data_files else self.session_dir)
        return (TimelineSegment("recording", str(first), 0, self.n_samples, 0),)

    def summary(self) -> dict[str, object]:
        """Plain facts for metadata and manifests."""
        timeline = relative_files(self.segments(), self.session_dir)
        return {
            "format": self.format,
            "session_dir": str(self.session_dir),
            "data_files": [str(p) for p in self.data_files],
            "sampling_frequency": self.sampling_frequency,
            "n_channels": self.n_channels,
            "n_sorting_channels": len(self.sorting_channels),
            "n_samples": self.n_samples,
            "duration_s": round(self.duration_s, 3),
            "source_dtype": self.source_dtype,
            "recording_date": self.recording_date.isoformat() if self.recording_date else None,
            "uv_per_bit": self.uv_per_bit,
            "size_bytes": self.size_bytes,
            "zero_copy_capable": self.zero_copy_path is not None,
            "probe_file": str(self.probe_file) if self.probe_file else None,
            "scaling_note": self.scaling_note,
            "probe_name": self.probe_name,
            **dict(self.details),
            "timeline": [segment.to_json() for segment in timeline],
        }


def parse_recording_date(value: str, source: Path) -> dt.date:
    """Accept ``YYYY-MM-DD`` or an ISO timestamp; otherwise a clear error naming ``source``."""
    from ks_platform.core.errors import SessionInputError

    try:
        return dt.datetime.fromisoformat(value.strip()).date()
    except ValueError:
        try:
            return dt.date.fromisoformat(value.strip()[:10])
        except ValueError:
            raise SessionInputError(
                source, f"recording date {value!r} is not an ISO date", "write it as YYYY-MM-DD"
            ) from None


_HAS_PREADV = hasattr(os, "preadv")
_HAS_FADVISE = hasattr(os, "posix_fadvise")


class InterleavedFile:
    """Frames ``[start:stop]`` of an interleaved binary, read with ``preadv`` into caller-owned arrays.

    Plain reads instead of a memory map: pages of a memory-mapped file that were touched count toward the
    process's RSS until they are unmapped, so a memmap reader's peak RSS grows with the file's size. This
    keeps the process at a few chunks whatever the size. Thread-safe (``preadv`` has no file position).
    """

    def __init__(self, path: Path, dtype: np.dtype, n_channels: int, n_samples: int) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.n_channels = n_channels
        self.n_samples = n_samples
        self.frame_bytes = n_channels * self.dtype.itemsize
        self._fd: int | None = None
        self._lock = threading.Lock()

    def _descriptor(self) -> int:
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
                if _HAS_FADVISE:
                    os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            return self._fd

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Frames ``start:stop`` (clipped to the file) as ``[n, n_channels]``, in ``out[:n]`` when given."""
        stop = min(stop, self.n_samples)
        n = max(stop - start, 0)
        if out is None:
            out = np.empty((n, self.n_channels), dtype=self.dtype)
        else:
            if not out.flags.c_contiguous or out.dtype != self.dtype or out.shape[1:] != (self.n_channels,):
                raise ValueError(f"out must be a C-contiguous {self.dtype}[n, {self.n_channels}] array")
            out = out[:n]
        view = memoryview(out.reshape(-1).view(np.uint8))
        fd, offset, done = self._descriptor(), start * self.frame_bytes, 0
        while done < view.nbytes:
            if _HAS_PREADV:
                got = os.preadv(fd, [view[done:]], offset + done)
            else:  # e.g. older macOS: seek + readv under the lock
                with self._lock:
                    os.lseek(fd, offset + done, os.SEEK_SET)
                    got = os.readv(fd, [view[done:]])
            if got == 0:
                raise OSError(
                    f"{self.path} ended {view.nbytes - done} bytes early at byte {offset + done} (was it truncated "
                    "while being read?)"
                )
            done += got
        self._prefetch(fd, stop, n)
        return out

    def _prefetch(self, fd: int, start: int, n: int) -> None:
        """Ask the kernel to start reading the next ``n`` frames now (``POSIX_FADV_WILLNEED``, asynchronous), so
        a chunked reader's next read overlaps the work done on this chunk instead of waiting on the disk."""
        if _HAS_FADVISE and n and start < self.n_samples:
            os.posix_fadvise(
                fd, start * self.frame_bytes, min(n, self.n_samples - start) * self.frame_bytes, os.POSIX_FADV_WILLNEED
            )

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def channel_selector(channels: tuple[int, ...], n_channels: int) -> slice | np.ndarray | None:
    """How to pick ``channels`` out of ``n_channels``: None (all), a slice (a contiguous run), or an index array."""
    channels = tuple(int(c) for c in channels)
    if any(c < 0 or c >= n_channels for c in channels):
        raise ValueError(f"channel indices must lie in 0..{n_channels - 1}")
    if channels == tuple(range(n_channels)):
        return None
    if channels and channels == tuple(range(channels[0], channels[-1] + 1)):
        return slice(channels[0], channels[-1] + 1)
    return np.asarray(channels, dtype=np.intp)


def select_channels(
    frames: np.ndarray, selector: slice | np.ndarray | None, out: np.ndarray | None = None
) -> np.ndarray:
    """``frames[:, channels]`` as a C-contiguous array (written to ``out`` when given)."""
    if selector is None:
        if out is None:
            return np.ascontiguousarray(frames)
        np.copyto(out, frames)
        return out
    if isinstance(selector, slice):  # a strided copy: ~15x faster than fancy indexing
        if out is None:
            return np.ascontiguousarray(frames[:, selector])
        np.copyto(out, frames[:, selector])
        return out
    return np.take(
        frames, selector, axis=1, out=out, mode="clip"
    )  # ~5x faster than frames[:, index]; indices checked by channel_selector


def memmap_int16_reader(path: Path, n_channels: int, n_samples: int, channels: tuple[int, ...]) -> ChunkReader:
    """Chunk reader over an interleaved int16 file (only the requested channels are returned).

    Each call returns a new array. All channels are read straight into it; for a subset, the frames go
    to a reused buffer first and the channels are copied out. (The name is historical: the file is read
    with ``preadv``, not memory-mapped, so the RSS stays bounded; see ``InterleavedFile``.)
    """
    file = InterleavedFile(path, np.dtype(np.int16), n_channels, n_samples)
    selector = channel_selector(tuple(channels), n_channels)
    n_out = len(channels)
    buffers = BufferPool()

    def read_chunk(start: int, stop: int) -> np.ndarray:
        if selector is None:
            return file.read(start, stop)
        n = max(min(stop, n_samples) - start, 0)
        with buffers.get((n, n_channels), np.int16) as frames:
            file.read(start, stop, frames)
            return select_channels(frames[:n], selector, np.empty((n, n_out), dtype=np.int16))

    return read_chunk


def timeline_reader(
    files: list[tuple[Path, int, int]], segments: tuple[TimelineSegment, ...], channels: tuple[int, ...]
) -> ChunkReader:
    """Chunk reader over interleaved int16 files ``(path, n_channels, n_samples)`` laid out on ``segments`` (one
    per file): zeros where a gap was filled, each file's rows from its ``file_offset``. Bounded memory: one pooled
    frame buffer per file read, never a whole file."""
    handles = [
        InterleavedFile(path, np.dtype(np.int16), n_channels, n_samples) for path, n_channels, n_samples in files
    ]
    selectors = [channel_selector(tuple(channels), n_channels) for _, n_channels, _ in files]
    total = segments[-1].binary_start + segments[-1].n_samples if segments else 0
    n_out = len(channels)
    buffers = BufferPool()

    def read_chunk(start: int, stop: int) -> np.ndarray:
        stop = min(stop, total)
        n = max(stop - start, 0)
        out = np.empty((n, n_out), dtype=np.int16)
        filled = start
        for handle, selector, segment in zip(handles, selectors, segments):
            low, high = max(start, segment.binary_start), min(stop, segment.binary_start + segment.n_samples)
            if low >= high:
                continue
            if low > filled:
                out[filled - start : low - start] = 0
            first = segment.file_offset + low - segment.binary_start
            with buffers.get((high - low, handle.n_channels), np.int16) as frames:
                handle.read(first, first + high - low, frames)
                select_channels(frames[: high - low], selector, out[low - start : high - start])
            filled = high
        if filled < stop:
            out[filled - start :] = 0
        return out

    return read_chunk


class BufferPool:
    """One reusable scratch array per reader and kind (a fresh one if it is busy in another thread).

    Arrays over ``KEEP_BYTES`` are not kept, so one huge ``read_chunk`` call does not pin its buffer.
    """

    KEEP_BYTES = 64 * 1024 * 1024

    def __init__(self) -> None:
        self._free: dict[tuple, np.ndarray] = {}
        self._lock = threading.Lock()

    @contextmanager
    def get(self, shape: tuple[int, ...], dtype) -> Iterator[np.ndarray]:
        key = (np.dtype(dtype).str, shape[1:])
        with self._lock:
            array = self._free.pop(key, None)
        if array is None or array.shape[0] < shape[0]:
            array = np.empty(shape, dtype=dtype)
        try:
            yield array
        finally:
            if array.nbytes <= self.KEEP_BYTES:
                with self._lock:
                    self._free[key] = array


#: int16 full scale used for every scaled source (symmetric: -32768 is never produced).
INT16_LIMIT = 32767.0


def scale_to_int16(
    values: np.ndarray,
    scale: float | np.ndarray,
    out: np.ndarray,
    shift: float = 0.0,
    original: Callable[[], np.ndarray] | None = None,
) -> int | None:
    """``out[:] = clip(rint(values * scale + shift), ±32767)`` computed **in place** in ``values`` (float32).

    ``values`` is a float32 ``[n, channels]`` scratch array (overwritten); ``scale`` a scalar or one value per
    channel. float32 math (2x the SIMD width and half the memory traffic of float64) keeps 24 bits, far more
    than the 16 of the result: a value may differ from the float64 result by one step only when it lies
    within float32 rounding of a .5 boundary. NaN/inf: min/max propagate them, so two cheap reductions both
    detect them and decide whether a clip pass is needed at all. Returns None, or the first row holding a
    NaN/inf in the source (``original()`` gives the unscaled values for that check, so a finite value that
    overflowed float32 after scaling is clipped, not refused).
    """
    with np.errstate(over="ignore", invalid="ignore"):  # overflow and NaN are handled below
        np.multiply(values, scale, out=values)
        if shift:
            np.add(values, np.float32(shift), out=values)
        np.rint(values, out=values)
    low, high = np.minimum.reduce(values, axis=None), np.maximum.reduce(values, axis=None)
    if not (np.isfinite(low) and np.isfinite(high)):
        source = original() if original is not None else values
        bad_rows = np.flatnonzero(~np.isfinite(source).all(axis=1))
        if bad_rows.size:
            return int(bad_rows[0])
        np.nan_to_num(values, copy=False, posinf=INT16_LIMIT, neginf=-INT16_LIMIT)  # finite, overflowed by the scale
        low, high = -np.inf, np.inf
    if not (-INT16_LIMIT <= low and high <= INT16_LIMIT):
        np.clip(values, -INT16_LIMIT, INT16_LIMIT, out=values)
    np.copyto(out, values, casting="unsafe")
    return None


class RescaledReader:
    """A chunk reader over another int16 reader that multiplies some channels by their own factor (``factors``,
    one per returned channel; 1 leaves a channel as stored).

    For files whose channels were recorded at different gains (SpikeGLX NP1.0 imro tables give each channel its AP
    gain): the binary keeps one µV/bit, the finest, and each coarser channel is put on it as
    ``rint(value * factor)`` in float64 (within half a step of the exact value), saturating at ±32767. ``clipped``
    counts the samples that saturated and ``first_clip`` is the first one seen as (sample, index of the channel among
    those returned), which is also logged as a warning. Channels with factor 1 are returned exactly as stored."""

    def __init__(self, read_chunk: ChunkReader, factors: tuple[float, ...]) -> None:
        scale = np.asarray(factors, dtype=np.float64)
        if scale.ndim != 1 or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ValueError("factors must be finite numbers > 0, one per channel")
        self._read = read_chunk
        self._columns = np.flatnonzero(scale != 1.0)
        self._factors = scale[self._columns]
        self._lock = threading.Lock()
        self.clipped = 0
        self.first_clip: tuple[int, int] | None = None

    def __call__(self, start: int, stop: int) -> np.ndarray:
        block = self._read(start, stop)
        if not self._columns.size or not len(block):
            return block
        values = block[:, self._columns] * self._factors
        np.rint(values, out=values)
        over = np.abs(values) > INT16_LIMIT
        if over.any():
            rows, columns = np.nonzero(over)
            where = (start + int(rows[0]), int(self._columns[columns[0]]))
            with self._lock:
                self.clipped += int(rows.size)
                first, self.first_clip = self.first_clip is None, self.first_clip or where
            if first:
                logging.getLogger(__name__).warning(
                    "rescaling to one µV/bit saturated %d sample(s) at ±%g, first at sample %d of channel %d "
                    "(all of them are counted: RescaledReader.clipped)",
                    rows.size,
                    INT16_LIMIT,
                    *where,
                )
            np.clip(values, -INT16_LIMIT, INT16_LIMIT, out=values)
        block[:, self._columns] = values
        return block


#: A recording partition of a probe (``split_segments``): ``<probe>-r<R>``.
RECORDING_PART_NAME = re.compile(r"^(?P<probe>.+)-r(?P<recording>\d+)$")


class RecordingPartitions:
    """What a reader with probes split by recording (``ProbeA-r1``, ``ProbeA-r2``) shares: which probe a partition
    belongs to and its files. The reader has ``plans`` (by probe), ``listing``, ``_parts(probe)`` and ``split``."""

    plans: Mapping[str, object]
    listing: ProbeListing

    def _parts(self, probe: str) -> Mapping[str, object]:
        raise NotImplementedError

    def split(self, probe: str) -> dict[str, tuple[Path, ...]]:
        raise NotImplementedError

    def base_probe(self, name: str) -> str | None:
        """The probe a recording partition (``ProbeA-r2``) belongs to, when the folder has that recording."""
        match = RECORDING_PART_NAME.match(name)
        if match is None or match.group("probe") not in self.plans:
            return None
        return match.group("probe") if name in self._parts(match.group("probe")) else None

    def files_of(self, name: str) -> tuple[Path, ...]:
        base = self.base_probe(name) if name not in self.plans else None
        return self.split(base)[name] if base else self.listing.probes[name]

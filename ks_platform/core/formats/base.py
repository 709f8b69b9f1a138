"""What every format reader returns: a description of the recording plus a chunk reader."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from probeinterface import Probe

#: ``read_chunk(start, stop)`` returns int16 samples ``[stop - start, len(sorting_channels)]``.
ChunkReader = Callable[[int, int], np.ndarray]


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
    recording_date: dt.date
    sorting_channels: tuple[int, ...]
    uv_per_bit: float
    read_chunk: ChunkReader = field(repr=False, compare=False)
    probe: Probe | None = field(default=None, repr=False, compare=False)
    probe_file: Path | None = None
    #: Set when the source already is an interleaved int16 file Kilosort can read in place.
    zero_copy_path: Path | None = None
    #: Where gain/scaling facts came from, for the record.
    scaling_note: str = ""

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sampling_frequency

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.data_files)

    def summary(self) -> dict[str, object]:
        """Plain facts for metadata and manifests."""
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
            "recording_date": self.recording_date.isoformat(),
            "uv_per_bit": self.uv_per_bit,
            "size_bytes": self.size_bytes,
            "zero_copy_capable": self.zero_copy_path is not None,
            "probe_file": str(self.probe_file) if self.probe_file else None,
            "scaling_note": self.scaling_note,
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


def memmap_int16_reader(path: Path, n_channels: int, n_samples: int, channels: tuple[int, ...]) -> ChunkReader:
    """Chunk reader over an interleaved int16 file (only the requested channels are returned)."""
    data = np.memmap(path, dtype=np.int16, mode="r", shape=(n_samples, n_channels))
    all_channels = tuple(range(n_channels)) == tuple(channels)
    index = np.asarray(channels)

    def read_chunk(start: int, stop: int) -> np.ndarray:
        block = data[start:stop]
        return np.ascontiguousarray(block if all_channels else block[:, index])

    return read_chunk

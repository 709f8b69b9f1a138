"""Where each sample of the sorted binary was acquired: the segment table and the mapping back to the rig's clock.

A recording made of several files (SpikeGLX gates and triggers, Open Ephys recordings of one experiment) is laid
into one binary on the acquisition clock, the way CatGT does it: each file starts at its own first sample
(SpikeGLX ``firstSample``, Open Ephys' first sample number), a gap before a file is filled with zeros, and samples
a file shares with the previous one (an overlap) are skipped. The binary is then linear in the acquisition clock;
the table records each file's first sample, where it lies in the binary and how many of its samples were used.

``to_acquisition_samples`` maps sorted spike times (binary sample indices) back to the acquisition clock; divided
by the sampling rate that is the time SpikeGLX, CatGT and SpikeInterface give the same sample.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ks_platform.core.errors import SessionInputError

#: Zeros filled into one gap at most by default (seconds); a longer gap is refused with the fix.
DEFAULT_MAX_GAP_FILL_S = 60.0


@dataclass(frozen=True)
class FilePlacement:
    """One file of a recording as the rig wrote it: a label, its path and its first sample on the acquisition clock
    (``None`` when the format does not say); ``part``: the part a split recording sorts it in (SpikeGLX: its gate),
    so that a refusal between two files of one part does not offer splitting as the fix ("" when unknown)."""

    label: str
    file: Path
    first_sample: int | None
    n_samples: int
    part: str = ""


@dataclass(frozen=True)
class TimelineSegment:
    """One file in the binary: its first sample on the acquisition clock, the samples of it that were used
    (``file_offset`` skipped at its start as an overlap, then ``n_samples``), where they start in the binary
    (``binary_start``) and the zeros filled in before them (``zeros_before``, a gap)."""

    label: str
    file: str
    first_sample: int
    n_samples: int
    binary_start: int
    file_offset: int = 0
    zeros_before: int = 0

    @property
    def acquisition_start(self) -> int:
        """The acquisition-clock sample of the segment's first row in the binary."""
        return self.first_sample + self.file_offset

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: Mapping[str, object]) -> TimelineSegment:
        fields = cls.__dataclass_fields__
        return cls(**{key: payload[key] for key in fields if key in payload})  # type: ignore[arg-type]


def total_samples(segments: Sequence[TimelineSegment]) -> int:
    """Rows of the binary the segments make (zeros included)."""
    return segments[-1].binary_start + segments[-1].n_samples if segments else 0


def lay_out(
    files: Sequence[FilePlacement],
    sampling_frequency: float,
    max_gap_fill_s: float = DEFAULT_MAX_GAP_FILL_S,
    config_hint: str = "ks_session.json",
) -> list[TimelineSegment]:
    """Place ``files`` (in recording order) on the acquisition clock: gaps zero-filled, overlaps skipped.

    Refused with the file named: a file without a first sample among several, a file that starts before the one
    before it (the clock restarted: another acquisition), a file wholly inside the one before it, and a gap longer
    than ``max_gap_fill_s`` (fix: sort the parts separately, or allow a longer fill)."""
    if not files:
        return []
    if len(files) == 1:
        only = files[0]
        first = only.first_sample if only.first_sample is not None else 0
        return [TimelineSegment(only.label, str(only.file), int(first), int(only.n_samples), 0)]
    for placement in files:
        if placement.first_sample is None:
            raise SessionInputError(
                placement.file,
                f"{placement.label} has no first sample on the acquisition clock, so it cannot be placed in time "
                f"after the other {len(files) - 1} file(s) of this recording",
                f'restore the file\'s own header, or sort each part on its own ("split_segments": true in '
                f"{config_hint})",
            )
    segments: list[TimelineSegment] = []
    binary_end = 0
    clock_end = None  # acquisition sample just after the last one laid out
    max_fill = int(round(max_gap_fill_s * sampling_frequency))
    for previous, placement in zip([None, *files[:-1]], files):
        first = int(placement.first_sample)  # type: ignore[arg-type]
        offset = zeros = 0
        if clock_end is not None and previous is not None:
            splittable = not (placement.part and placement.part == previous.part)
            if first < previous.first_sample:  # type: ignore[operator]
                raise SessionInputError(
                    placement.file,
                    f"{placement.label} starts at sample {first}, before {previous.label} ({previous.first_sample}): "
                    "the acquisition clock restarted, so the files are not one recording",
                    f'sort them separately ("split_segments": true in {config_hint}) or put them in separate '
                    "session folders"
                    if splittable
                    else "put the files of each acquisition in their own session folder",
                )
            if first < clock_end:
                offset = clock_end - first
                if offset >= placement.n_samples:
                    raise SessionInputError(
                        placement.file,
                        f"{placement.label} (samples {first}..{first + placement.n_samples - 1}) lies wholly inside "
                        f"{previous.label}: it holds no sample the recording does not already have",
                        "remove the duplicate file from the session folder",
                    )
            elif first > clock_end:
                zeros = first - clock_end
                if zeros > max_fill:
                    raise SessionInputError(
                        placement.file,
                        f"{placement.label} starts {zeros / sampling_frequency:.3f} s after {previous.label} ends; "
                        f"filling a gap with zeros is allowed up to {max_gap_fill_s:g} s",
                        (
                            f'sort the parts separately ("split_segments": true in {config_hint}), or '
                            if splittable
                            else ""
                        )
                        + f'allow the fill ("max_gap_fill_s": {int(zeros / sampling_frequency) + 1} in {config_hint})',
                    )
        binary_start = binary_end + zeros
        used = placement.n_samples - offset
        segments.append(
            TimelineSegment(placement.label, str(placement.file), first, int(used), binary_start, offset, zeros)
        )
        binary_end = binary_start + used
        clock_end = first + placement.n_samples
    return segments


def relative_files(segments: Sequence[TimelineSegment], folder: Path) -> list[TimelineSegment]:
    """The segments with their files named relative to ``folder`` (for records that travel)."""
    out = []
    for segment in segments:
        try:
            name = str(Path(segment.file).relative_to(folder))
        except ValueError:
            name = segment.file
        out.append(replace(segment, file=name))
    return out


def to_acquisition_samples(binary_samples: np.ndarray, segments: Sequence[TimelineSegment]) -> np.ndarray:
    """Acquisition-clock sample (int64) of each binary sample index (e.g. Kilosort's ``spike_times.npy``).

    The binary is laid out linearly on the acquisition clock (gaps filled, overlaps skipped), so every row maps,
    zeros included; a row beyond the binary is refused."""
    samples = np.asarray(binary_samples, dtype=np.int64)
    if not segments:
        return samples.copy()
    end = total_samples(segments)
    if samples.size and (samples.min() < 0 or samples.max() >= end):
        raise ValueError(f"sample indices must lie in 0..{end - 1} (the binary's rows)")
    starts = np.array([s.binary_start - s.zeros_before for s in segments], dtype=np.int64)
    offsets = np.array([s.acquisition_start - s.binary_start for s in segments], dtype=np.int64)
    index = np.searchsorted(starts, samples, side="right") - 1
    return samples + offsets[np.clip(index, 0, len(segments) - 1)]


def to_acquisition_seconds(
    binary_samples: np.ndarray, segments: Sequence[TimelineSegment], sampling_frequency: float
) -> np.ndarray:
    """Acquisition-clock time in seconds (float64) of each binary sample index."""
    return to_acquisition_samples(binary_samples, segments) / float(sampling_frequency)


def segments_from_manifest(manifest: Mapping[str, object]) -> list[TimelineSegment]:
    """The segment table recorded in a ``raw_recording.json`` (empty for records made before it existed)."""
    rows = manifest.get("timeline") or []
    return [TimelineSegment.from_json(row) for row in rows]  # type: ignore[union-attr]


def recorded_segments(raw_manifest: Path) -> list[TimelineSegment]:
    """The segment table of a store's ``raw_recording.json`` (empty when there is none yet, or an older record)."""
    if not raw_manifest.is_file():
        return []
    return segments_from_manifest(json.loads(raw_manifest.read_text()))


def segment_table(segments: Sequence[TimelineSegment], sampling_frequency: float) -> list[str]:
    """The segment table as aligned text lines (for the CLI and logs)."""
    header = ("segment", "first_sample", "first_s", "binary_start", "n_samples", "skipped", "zeros_before", "file")
    rows = [
        (
            s.label,
            str(s.first_sample),
            f"{s.first_sample / sampling_frequency:.6f}",
            str(s.binary_start),
            str(s.n_samples),
            str(s.file_offset),
            str(s.zeros_before),
            s.file,
        )
        for s in segments
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in (header, *rows)
    ]

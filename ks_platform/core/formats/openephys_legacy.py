"""Open Ephys legacy format ("Open Ephys format" of GUI <= 0.4, still offered up to 0.6): one ``*.continuous`` file
per channel, ``*.events``, ``settings.xml``.

Layout as the GUI writes it (``OriginalRecording``)::

    <YYYY-MM-DD_HH-MM-SS>/100_CH1.continuous … 100_CH32.continuous, 100_AUX1.continuous, all_channels.events
    <YYYY-MM-DD_HH-MM-SS>/Record Node 101/100_example-data_CH1.continuous …     (GUI 0.5/0.6: per Record Node)

A file is named ``<processor id>[_<stream>]_<channel>[_<experiment>].continuous``: a 1024-byte text header
(``header.sampleRate``, ``header.bitVolts``, ``header.date_created``) and then records of one int64 timestamp
(the record's first sample on the acquisition clock), a uint16 sample count (always 1024), a uint16 recording
number, 1024 big-endian int16 samples and a 10-byte marker. Recording is appended to the same files (the recording
number counts up); a restarted acquisition (a new experiment) writes new files ``…_2.continuous``.

What is a probe: the ``CH`` channels of one file prefix (``100`` or ``100_example-data``) in one folder and one
experiment; the probe is named by the prefix (``-e<E>`` when there are several experiments, ``-<run>`` when
several run folders). ``AUX``/``ADC`` and other channels are skipped with why. When several Record Nodes hold the
same files, the lowest-numbered node is used and the others are listed as skipped (as for the binary format).

Reading is built on neo's ``OpenEphysRawIO`` (SpikeInterface's ``read_openephys`` for this format): its header
parser (``read_file_header``) and its record layout (``continuous_dtype``). neo maps every channel file and scans
every record through the map at open (the file's pages count in the process's memory up to the recording's size),
and it looks gaps up over all records at each read; here the records are read with plain reads, chunk by chunk:
the first channel's timestamps once (in blocks), the other channels checked against it at up to 64 records spread
over the file and at every gap, then only the records a chunk needs. The result equals neo's: records laid out on
the acquisition clock by their timestamps, a gap between records (recording paused) zero-filled up to
``max_gap_fill_s`` (longer: refused with the fix), the zero padding the GUI writes into the last record kept. A file
that does not follow the layout (truncated, a record inside the one before, a sample count other than 1024, a
channel whose records differ from the first channel's) is refused with the file named. ``"split_segments": true``
makes each recording (recording number) its own partition: ``<probe>-r<R>`` (``100-r1``, ``100-r2``).

The format holds no geometry: the probe comes from a ``probe_file`` in ``ks_session.json``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from neo.rawio.openephysrawio import HEADER_SIZE, RECORD_SIZE, continuous_dtype, read_file_header

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats.base import (
    ChunkReader,
    MissingDate,
    ProbeListing,
    ReadOptions,
    RecordingPartitions,
    RecordingSource,
)
from ks_platform.core.formats.openephys import names_record_node, node_id
from ks_platform.core.timeline import FilePlacement, TimelineSegment, lay_out

FORMAT = "openephys-legacy"
NO_PROBE_FIX = "record the CH channels of at least one headstage"
#: One record as neo reads it: int64 timestamp, uint16 count, uint16 recording number, 1024 >i2 samples, marker.
RECORD = np.dtype(continuous_dtype)
MARKER = bytes([0, 1, 2, 3, 4, 5, 6, 7, 8, 255])
#: ``<prefix>_<kind><number>[_<experiment>]`` (the stem of a ``.continuous`` file).
_FILE = re.compile(r"^(?P<prefix>\d+(?:_.+?)?)_(?P<kind>[A-Za-z]+)(?P<number>\d+)(?:_(?P<experiment>\d+))?$")
_HEADER_DATES = ("%d-%b-%Y %H%M%S", "%d-%b-%Y %H:%M:%S", "%d-%b-%Y")
_SETTINGS_DATES = ("%d %b %Y %H:%M:%S", "%d %B %Y %H:%M:%S", "%Y-%m-%d %H:%M:%S")
_FOLDER_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})_\d{2}-\d{2}-\d{2}")
#: Records whose timestamps are read per block when the first channel is scanned (about 17 MB).
_SCAN_RECORDS = 8192
#: Records of every other channel compared with the first channel's (spread over the file), besides the gaps.
_CHECKED_RECORDS = 64
_COPY_AGAIN = "copy the .continuous files again from the acquisition computer"
_KINDS = {"AUX": "auxiliary (accelerometer) inputs, not a probe", "ADC": "ADC / analog inputs, not a probe"}


def find_files(session_dir: Path) -> list[Path]:
    """The ``.continuous`` files under the session folder."""
    return sorted(p for p in session_dir.rglob("*.continuous") if p.is_file())


@dataclass(frozen=True)
class _Group:
    """The files of one prefix and one channel kind in one folder and one experiment."""

    folder: Path
    prefix: str
    kind: str
    experiment: int
    files: tuple[Path, ...]

    @property
    def label(self) -> str:
        numbers = [int(_FILE.match(f.stem).group("number")) for f in self.files]  # type: ignore[union-attr]
        return f"{self.prefix}_{self.kind}{min(numbers)}..{self.kind}{max(numbers)}"


@dataclass
class _Plan:
    group: _Group
    node: str
    run: str
    other_nodes: tuple[str, ...] = ()
    recording: int | None = None  # one recording (split_segments), else all


def _is_node(folder: Path) -> bool:
    """A Record Node folder (GUI >= 0.5): named like one in any spelling, or its settings.xml has a Record Node
    processor (GUI <= 0.4 had none: its files lie in the run folder)."""
    return node_id(folder.name) is not None or names_record_node(folder)


def _node_id(folder: Path) -> int:
    named = node_id(folder.name)
    digits = re.search(r"(\d+)\D*$", folder.name)
    return named if named is not None else int(digits.group(1)) if digits else -1


def _groups(session_dir: Path) -> list[_Group]:
    by_key: dict[tuple[Path, str, str, int], list[tuple[int, Path]]] = {}
    for path in find_files(session_dir):
        match = _FILE.match(path.stem)
        if match is None:
            raise SessionInputError(
                path,
                "is not named as the Open Ephys GUI names its .continuous files (<processor>_<channel>.continuous, "
                "e.g. 100_CH1.continuous)",
                "restore the file name the GUI wrote (the channel is read from it), or move the file out",
            )
        experiment = int(match.group("experiment") or 1)
        if experiment < 2 and match.group("experiment") is not None:
            raise SessionInputError(
                path,
                f"ends in _{match.group('experiment')}: a recording number (the GUI's 'Separate Files' option), which "
                "is not read",
                "record without 'Separate Files' (one file per channel and experiment), or sort each recording from "
                "a folder of its own with the suffix removed",
            )
        key = (path.parent, match.group("prefix"), match.group("kind").upper(), experiment)
        by_key.setdefault(key, []).append((int(match.group("number")), path))
    return [
        _Group(folder, prefix, kind, experiment, tuple(p for _, p in sorted(files)))
        for (folder, prefix, kind, experiment), files in sorted(by_key.items())
    ]


def _scan(session_dir: Path) -> tuple[dict[str, _Plan], tuple[str, ...]]:
    skipped: dict[str, None] = {}
    streams: dict[tuple[str, int, str], dict[tuple[int, str], _Group]] = {}
    for group in _groups(session_dir):
        where = group.folder.relative_to(session_dir) if group.folder != session_dir else Path()
        if group.kind != "CH":
            why = _KINDS.get(group.kind, f"{group.kind} channels, not a probe")
            skipped[f"{_join(where, group.label)}: {why}"] = None
            continue
        node = _is_node(group.folder)
        run_dir = group.folder.parent if node else group.folder
        run = str(run_dir.relative_to(session_dir)) if session_dir in (run_dir, *run_dir.parents) else ""
        key = ("" if run == "." else run, group.experiment, group.prefix)
        streams.setdefault(key, {})[(_node_id(group.folder), group.folder.name if node else "")] = group
    plans: dict[tuple[str, int, str], _Plan] = {}
    for key, nodes in streams.items():
        ordered = sorted(nodes)
        used, others = ordered[0], ordered[1:]
        for other in others:
            skipped[
                f"{other[1]}/{key[2]}: also recorded by {used[1]}, which is used (the lowest-numbered Record Node)"
            ] = None
        plans[key] = _Plan(nodes[used], used[1], key[0], tuple(name for _, name in others))
    return _name(plans), tuple(skipped)


def _join(where: Path, label: str) -> str:
    return label if str(where) in ("", ".") else f"{where.as_posix()}/{label}"


def _name(plans: dict[tuple[str, int, str], _Plan]) -> dict[str, _Plan]:
    """Probe names: the file prefix, ``-<run>`` when several run folders, ``-e<E>`` when several experiments."""
    runs = {run for run, _, _ in plans}
    experiments = {experiment for _, experiment, _ in plans}
    named = {}
    for (run, experiment, prefix), plan in sorted(plans.items()):
        name = prefix + (f"-{Path(run).name}" if len(runs) > 1 and run else "")
        named[name + (f"-e{experiment}" if len(experiments) > 1 else "")] = plan
    return named


# --------------------------------------------------------------------------------------------- headers


def _header(path: Path) -> dict[str, object]:
    """neo's reading of the 1024-byte header, checked: the GUI's format, a finite rate and µV per bit."""
    try:
        header = read_file_header(path)
    except PermissionError:
        raise
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise SessionInputError(path, f"the header is not an Open Ephys header ({exc})", _COPY_AGAIN) from None
    if "Open Ephys Data Format" not in str(header.get("format", "")):
        raise SessionInputError(path, "the header does not say 'Open Ephys Data Format'", _COPY_AGAIN)
    for key in ("sampleRate", "bitVolts"):
        value = header.get(key)
        if not isinstance(value, float) or not math.isfinite(value) or value <= 0:
            raise SessionInputError(path, f"header.{key} = {value!r} is not a number > 0", _COPY_AGAIN)
    for key, expected in (("header_bytes", HEADER_SIZE), ("blockLength", RECORD_SIZE)):
        if key in header and header[key] != expected:
            raise SessionInputError(
                path, f"header.{key} = {header[key]} (the format's is {expected}): not a layout neo reads", _COPY_AGAIN
            )
    return header


def _header_date(header: dict[str, object]) -> dt.date | None:
    text = str(header.get("date_created", "")).strip().strip("'")
    for fmt in _HEADER_DATES:
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def _settings_date(folder: Path) -> dt.date | None:
    settings = folder / "settings.xml"
    if not settings.is_file():
        return None
    try:
        text = (ET.parse(settings).getroot().findtext("INFO/DATE") or "").strip()
    except (ET.ParseError, OSError):
        return None
    for fmt in _SETTINGS_DATES:
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def _date(header: dict[str, object], first: Path, session_dir: Path) -> tuple[dt.date | None, str, MissingDate | None]:
    """The header's ``date_created``, else settings.xml ``INFO/DATE``, else the GUI's dated folder; never mtime."""
    if (date := _header_date(header)) is not None:
        return date, f"{first.name} header.date_created", None
    if (date := _settings_date(first.parent)) is not None:
        return date, "settings.xml INFO/DATE", None
    for folder in (first.parent, *first.parent.parents):
        if folder == session_dir.parent:
            break
        match = _FOLDER_DATE.match(folder.name)
        if match:
            return dt.date.fromisoformat(match.group(1)), f"folder name {folder.name!r}", None
    missing = MissingDate(
        first,
        "no header.date_created, settings.xml date or YYYY-MM-DD_hh-mm-ss folder of the Open Ephys GUI",
        "keep the .continuous headers and the dated folder the GUI wrote",
    )
    return None, "ks_session.json recording_date", missing


# --------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class _Run:
    """Consecutive records (each 1024 samples after the one before) of one recording number."""

    record: int
    n_records: int
    first_sample: int
    recording: int


@dataclass
class _Records:
    """The record structure of a probe's files: its runs (from the first channel), checked on every channel."""

    n_records: int
    runs: list[_Run] = field(default_factory=list)


def _n_records(path: Path) -> int:
    size = path.stat().st_size - HEADER_SIZE
    if size < 0 or size % RECORD.itemsize:
        raise SessionInputError(
            path,
            f"{path.stat().st_size} bytes is not a 1024-byte header plus whole {RECORD.itemsize}-byte records "
            "(a truncated copy)",
            _COPY_AGAIN,
        )
    if size == 0:
        raise SessionInputError(path, "holds a header but no samples", "remove the empty recording, or copy it again")
    return size // RECORD.itemsize


def _read_records(fd: int, path: Path, first: int, count: int) -> np.ndarray:
    want = count * RECORD.itemsize
    data = os.pread(fd, want, HEADER_SIZE + first * RECORD.itemsize)
    if len(data) != want:
        raise SessionInputError(path, f"ends inside record {first + len(data) // RECORD.itemsize}", _COPY_AGAIN)
    return np.frombuffer(data, dtype=RECORD)


def _check_records(records: np.ndarray, first: int, path: Path) -> None:
    bad = np.flatnonzero(records["nb_sample"] != RECORD_SIZE)
    if bad.size:
        count = int(records["nb_sample"][bad[0]])
        raise SessionInputError(
            path, f"record {first + bad[0]} says it holds {count} samples (the GUI writes 1024 per record)", _COPY_AGAIN
        )
    marks = records["markers"]
    if not (marks == np.frombuffer(MARKER, dtype=np.uint8)).all():
        row = int(np.flatnonzero(~(marks == np.frombuffer(MARKER, dtype=np.uint8)).all(axis=1))[0])
        raise SessionInputError(path, f"record {first + row} does not end in the format's record marker", _COPY_AGAIN)


def _runs(path: Path) -> _Records:
    """The first channel's records, read in blocks: runs of consecutive records of one recording number; a record
    starting inside the one before (or the clock going back) is refused."""
    total = _n_records(path)
    runs: list[_Run] = []
    previous: tuple[int, int] | None = None  # the last record's timestamp and recording number
    fd = os.open(path, os.O_RDONLY)
    try:
        for start in range(0, total, _SCAN_RECORDS):
            block = _read_records(fd, path, start, min(_SCAN_RECORDS, total - start))
            _check_records(block, start, path)
            stamps, numbers = block["timestamp"].astype(np.int64), block["rec_num"].astype(np.int64)
            last_stamp, last_number = previous if previous is not None else (stamps[0] - RECORD_SIZE, numbers[0])
            steps = stamps - np.concatenate([[last_stamp], stamps[:-1]])
            if (steps < RECORD_SIZE).any():
                k = int(np.flatnonzero(steps < RECORD_SIZE)[0])
                raise SessionInputError(
                    path,
                    f"record {start + k} starts at sample {int(stamps[k])}, {int(steps[k])} samples after the record "
                    f"before it (records hold {RECORD_SIZE}): the records overlap or go back in time",
                    _COPY_AGAIN,
                )
            begins = (steps != RECORD_SIZE) | (numbers != np.concatenate([[last_number], numbers[:-1]]))
            begins[0] |= previous is None
            edges = np.flatnonzero(begins).tolist()
            head = edges[0] if edges else len(stamps)  # records continuing the last run of the block before
            if head:
                runs[-1] = dataclasses.replace(runs[-1], n_records=runs[-1].n_records + head)
            for a, b in zip(edges, [*edges[1:], len(stamps)]):
                runs.append(_Run(start + a, b - a, int(stamps[a]), int(numbers[a])))
            previous = int(stamps[-1]), int(numbers[-1])
    finally:
        os.close(fd)
    return _Records(total, runs)


def _check_channel(path: Path, records: _Records, reference: Path) -> None:
    """A channel's records must be the first channel's: same count, and the same timestamps at each run's first and
    last record and at up to 64 records spread over the file."""
    total = _n_records(path)
    if total != records.n_records:
        raise SessionInputError(
            path,
            f"holds {total} records, {reference.name} {records.n_records}: the channels of one recording must hold "
            "the same records (a truncated copy?)",
            _COPY_AGAIN,
        )
    starts = np.array([r.record for r in records.runs])
    firsts = np.array([r.first_sample for r in records.runs])
    where = {r.record for r in records.runs} | {r.record + r.n_records - 1 for r in records.runs}
    where |= set(np.linspace(0, total - 1, min(total, _CHECKED_RECORDS)).astype(int).tolist())
    fd = os.open(path, os.O_RDONLY)
    try:
        for k in sorted(where):
            run = int(np.searchsorted(starts, k, side="right")) - 1
            expected = int(firsts[run] + (k - starts[run]) * RECORD_SIZE)
            record = _read_records(fd, path, k, 1)
            _check_records(record, k, path)
            if int(record["timestamp"][0]) != expected:
                raise SessionInputError(
                    path,
                    f"record {k} starts at sample {int(record['timestamp'][0])}, the same record of {reference.name} "
                    f"at {expected}: the channels of one recording must hold the same records",
                    _COPY_AGAIN,
                )
    finally:
        os.close(fd)


def record_reader(files: tuple[Path, ...], runs: list[_Run], segments: tuple[TimelineSegment, ...]) -> ChunkReader:
    """Chunk reader over one ``.continuous`` file per channel: for each run laid out on ``segments``, only the records
    a chunk overlaps are read (``pread``, one channel at a time); zeros where a gap was filled."""
    total = segments[-1].binary_start + segments[-1].n_samples if segments else 0

    def read_chunk(start: int, stop: int) -> np.ndarray:
        stop = min(stop, total)
        out = np.zeros((max(stop - start, 0), len(files)), dtype=np.int16)
        for run, segment in zip(runs, segments):
            low, high = max(start, segment.binary_start), min(stop, segment.binary_start + segment.n_samples)
            if low >= high:
                continue
            first = segment.file_offset + low - segment.binary_start  # samples into the run
            last = segment.file_offset + high - segment.binary_start
            r0, r1 = first // RECORD_SIZE, (last - 1) // RECORD_SIZE + 1
            for column, path in enumerate(files):
                fd = os.open(path, os.O_RDONLY)
                try:
                    samples = _read_records(fd, path, run.record + r0, r1 - r0)["samples"].reshape(-1)
                finally:
                    os.close(fd)
                out[low - start : high - start, column] = samples[first - r0 * RECORD_SIZE : last - r0 * RECORD_SIZE]
        return out

    return read_chunk


# --------------------------------------------------------------------------------------------- reading


class Reading(RecordingPartitions):
    """One read of a legacy Open Ephys folder: the ``.continuous`` files grouped into probes (names only); headers
    and records are read when a probe is opened."""

    def __init__(self, session_dir: Path) -> None:
        self.folder = session_dir
        self.plans, skipped = _scan(session_dir)
        self.listing = ProbeListing({name: plan.group.files for name, plan in self.plans.items()}, skipped)
        self._records: dict[Path, _Records] = {}

    def records(self, plan: _Plan) -> _Records:
        """The probe's record structure (first channel read once, every other channel checked against it)."""
        files = plan.group.files
        if files[0] not in self._records:
            records = _runs(files[0])
            for path in files[1:]:
                _check_channel(path, records, files[0])
            self._records[files[0]] = records
        return self._records[files[0]]

    def _parts(self, probe: str) -> dict[str, _Plan]:
        plan = self.plans[probe]
        numbers = sorted({run.recording for run in self.records(plan).runs})
        return {f"{probe}-r{n + 1}": dataclasses.replace(plan, recording=n) for n in numbers}

    def split(self, probe: str) -> dict[str, tuple[Path, ...]]:
        """One partition per recording (recording number R-1 in the records) of ``probe``: ``<probe>-r<R>``."""
        return {name: part.group.files for name, part in self._parts(probe).items()}

    def open(self, name: str, options: ReadOptions = ReadOptions()) -> RecordingSource:
        """Describe one probe: its channels' records laid out on the acquisition clock by their timestamps."""
        base = self.base_probe(name) if name not in self.plans else None
        plan = self._parts(base)[name] if base is not None else self.plans[name]
        files = plan.group.files
        headers = [_header(p) for p in files]
        rates = {float(h["sampleRate"]) for h in headers}  # type: ignore[arg-type]
        if len(rates) > 1:
            raise SessionInputError(
                files[0], f"the CH channels have different sample rates {sorted(rates)}", "record them at one rate"
            )
        gains = [float(h["bitVolts"]) for h in headers]  # type: ignore[arg-type]
        if not np.allclose(gains, gains[0], rtol=1e-6):
            k = int(np.flatnonzero(~np.isclose(gains, gains[0], rtol=1e-6))[0])
            raise SessionInputError(
                files[k],
                f"header.bitVolts = {gains[k]:g} µV, {files[0].name} {gains[0]:g} µV: Kilosort takes one gain",
                "record all CH channels of the headstage with one gain",
            )
        fs = rates.pop()
        records = self.records(plan)
        runs = [r for r in records.runs if plan.recording is None or r.recording == plan.recording]
        placements = [
            FilePlacement(
                f"recording{r.recording + 1} records {r.record}..{r.record + r.n_records - 1}",
                files[0],
                r.first_sample,
                r.n_records * RECORD_SIZE,
            )
            for r in runs
        ]
        timeline = tuple(lay_out(placements, fs, options.max_gap_fill_s))
        date, date_note, missing = _date(headers[0], files[0], self.folder)
        gaps = sum(1 for s in timeline if s.zeros_before)
        note = f"header.bitVolts {gains[0]:g} µV/bit ({files[0].name}); date: {date_note}; probe: none in the format"
        if gaps:
            note += f"; {gaps} gap(s) between records zero-filled"
        return RecordingSource(
            format=FORMAT,
            session_dir=self.folder,
            data_files=files,
            sampling_frequency=fs,
            n_channels=len(files),
            n_samples=timeline[-1].binary_start + timeline[-1].n_samples,
            source_dtype="int16",
            recording_date=date,
            missing_date=missing,
            sorting_channels=tuple(range(len(files))),
            uv_per_bit=gains[0],
            read_chunk=record_reader(files, runs, timeline),
            probe=None,
            probe_file=None,
            scaling_note=note,
            probe_name=name,
            timeline=timeline,
            details={
                "openephys_files": plan.group.label,
                "record_node": plan.node,
                "experiment": plan.group.experiment,
                "format_version": str(headers[0].get("version", "")),
                "channels": [str(h.get("channel", "")).strip("'") for h in headers],
                "recordings": sorted({r.recording + 1 for r in runs}),
                "skipped_streams": list(self.listing.skipped),
                **({"unused_record_nodes": list(plan.other_nodes)} if plan.other_nodes else {}),
            },
        )


def scan(session_dir: Path) -> Reading:
    """List the folder's legacy Open Ephys files once."""
    return Reading(session_dir)


def open_recording(
    session_dir: Path, probe: str | None = None, options: ReadOptions = ReadOptions()
) -> RecordingSource:
    """One probe as the files say (reader only: no session config applied; use formats.scan_session)."""
    reading = scan(session_dir)
    return reading.open(reading.listing.pick(probe, session_dir), options)

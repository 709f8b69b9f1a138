"""Plexon ``.plx``: our own streaming reader of the published PLX layout (versions 100-107).

Layout: ``PL_FileHeader`` (7504 bytes), ``PL_ChanHeader`` x NumDSPChannels (1020 bytes each),
``PL_EventHeader`` x NumEventChannels (296), ``PL_SlowChannelHeader`` x NumSlowChannels (296), then data
blocks: a 16-byte ``PL_DataBlockHeader`` (Type 1 spike / 4 event / 5 continuous, 5-byte timestamp, Channel,
Unit, NumberOfWaveforms, NumberOfWordsInWaveform) followed by ``NumberOfWaveforms x NumberOfWordsInWaveform``
int16 words. Continuous ("slow") channels are stored as blocks per channel, interleaved in time.

Opening a file walks the block headers once (skipping payloads, runs of equal-size blocks checked with numpy)
and keeps, for the channels to sort, where each block's samples are. ``read_chunk`` then reads only the
blocks overlapping the requested window, coalescing neighbouring blocks into a few large reads.

Time: each block's timestamp (ADFrequency ticks) places it on the acquisition clock. Blocks that follow on make one
part; a recording pause starts the next part. The parts are laid out on the clock as the other formats' files are
(core/timeline.py: pauses zero-filled up to ``max_gap_fill_s``, longer ones refused with the fix; with
``split_segments`` each part is its own partition, ``<stem>-part<k>``).

Channel indices are positions in the slow-channel header table (0..NumSlowChannels-1); the wideband
channels (``WB*``, else ``SPKC*``, else other continuous channels sampled at >= 20 kHz) are sorted.
``.pl2`` files (Plexon's newer format) are not read: neo's reader needs a DLL downloaded at run time; they are
listed as skipped, and a folder of them alone is refused with the conversion to do.
"""

from __future__ import annotations

import datetime as dt
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats.base import ChunkReader, ProbeListing, ReadOptions, RecordingSource
from ks_platform.core.timeline import FilePlacement, TimelineSegment, lay_out, total_samples

FORMAT = "plexon"
MAGIC = 0x58454C50  # "PLEX"
SUPPORTED_VERSIONS = range(100, 108)
#: Sanity bounds on header counts (Plexon systems have at most a few thousand channels).
MAX_CHANNEL_HEADERS = 65535
#: Block types of PL_DataBlockHeader.
SPIKE_BLOCK, EVENT_BLOCK, CONTINUOUS_BLOCK = 1, 4, 5

FILE_HEADER = np.dtype(
    [
        ("MagicNumber", "<u4"),
        ("Version", "<i4"),
        ("Comment", "S128"),
        ("ADFrequency", "<i4"),
        ("NumDSPChannels", "<i4"),
        ("NumEventChannels", "<i4"),
        ("NumSlowChannels", "<i4"),
        ("NumPointsWave", "<i4"),
        ("NumPointsPreThr", "<i4"),
        ("Year", "<i4"),
        ("Month", "<i4"),
        ("Day", "<i4"),
        ("Hour", "<i4"),
        ("Minute", "<i4"),
        ("Second", "<i4"),
        ("FastRead", "<i4"),
        ("WaveformFreq", "<i4"),
        ("LastTimestamp", "<f8"),
        ("Trodalness", "u1"),  # version >= 103
        ("DataTrodalness", "u1"),
        ("BitsPerSpikeSample", "u1"),
        ("BitsPerSlowSample", "u1"),
        ("SpikeMaxMagnitudeMV", "<u2"),
        ("SlowMaxMagnitudeMV", "<u2"),
        ("SpikePreAmpGain", "<u2"),  # version >= 105
        ("AcquiringSoftware", "S18"),  # version >= 106
        ("ProcessingSoftware", "S18"),
        ("Padding", "S10"),
        ("TSCounts", "<i4", (650,)),  # [130][5]
        ("WFCounts", "<i4", (650,)),
        ("EVCounts", "<i4", (512,)),
    ]
)
CHANNEL_HEADER = np.dtype(
    [
        ("Name", "S32"),
        ("SIGName", "S32"),
        ("Channel", "<i4"),
        ("WFRate", "<i4"),
        ("SIG", "<i4"),
        ("Ref", "<i4"),
        ("Gain", "<i4"),
        ("Filter", "<i4"),
        ("Threshold", "<i4"),
        ("Method", "<i4"),
        ("NUnits", "<i4"),
        ("Template", "<i2", (320,)),  # [5][64]
        ("Fit", "<i4", (5,)),
        ("SortWidth", "<i4"),
        ("Boxes", "<i2", (40,)),  # [5][2][4]
        ("SortBeg", "<i4"),
        ("Comment", "S128"),
        ("SrcId", "u1"),
        ("reserved", "u1"),
        ("ChanId", "<u2"),
        ("Padding", "<i4", (10,)),
    ]
)
EVENT_HEADER = np.dtype(
    [
        ("Name", "S32"),
        ("Channel", "<i4"),
        ("Comment", "S128"),
        ("SrcId", "u1"),
        ("reserved", "u1"),
        ("ChanId", "<u2"),
        ("Padding", "<i4", (32,)),
    ]
)
SLOW_CHANNEL_HEADER = np.dtype(
    [
        ("Name", "S32"),
        ("Channel", "<i4"),
        ("ADFreq", "<i4"),
        ("Gain", "<i4"),
        ("Enabled", "<i4"),
        ("PreAmpGain", "<i4"),
        ("SpikeChannel", "<i4"),  # version >= 104
        ("Comment", "S128"),  # version >= 105
        ("SrcId", "u1"),  # version >= 106
        ("reserved", "u1"),
        ("ChanId", "<u2"),
        ("Padding", "<i4", (27,)),
    ]
)
BLOCK_HEADER = np.dtype(
    [
        ("Type", "<i2"),
        ("UpperByteOf5ByteTimestamp", "<u2"),
        ("TimeStamp", "<u4"),
        ("Channel", "<i2"),
        ("Unit", "<i2"),
        ("NumberOfWaveforms", "<i2"),
        ("NumberOfWordsInWaveform", "<i2"),
    ]
)
assert FILE_HEADER.itemsize == 7504 and CHANNEL_HEADER.itemsize == 1020
assert EVENT_HEADER.itemsize == 296 and SLOW_CHANNEL_HEADER.itemsize == 296 and BLOCK_HEADER.itemsize == 16

#: Header scan window, and the run length after which equal-size blocks are checked in bulk with numpy.
_SCAN_WINDOW = 8 * 1024 * 1024
_GALLOP_AFTER = 8
_GALLOP_FIRST = 32
_GALLOP_MAX = 65536
#: read_chunk coalescing: blocks closer than this are read in one go, up to this many bytes per read.
_MAX_GAP = 256 * 1024
_MAX_READ = 16 * 1024 * 1024
_SORTABLE_PREFIXES = (("WB",), ("SPKC", "SPK"))
_NOT_SORTABLE_PREFIXES = ("FP", "FPL", "AI", "AIF", "AD", "LFP", "EVT", "KBD")


def find_files(session_dir: Path) -> list[Path]:
    """The ``.plx`` files directly in the session folder."""
    return sorted(p for p in session_dir.iterdir() if p.suffix.lower() == ".plx" and p.is_file())


def _text(value: bytes) -> str:
    return value.split(b"\x00", 1)[0].decode("latin-1").strip()


def read_file_header(path: Path) -> dict[str, object]:
    """Validate and return the PLX file header, refusing corrupt files with a clear error."""
    size = path.stat().st_size
    if size < FILE_HEADER.itemsize:
        raise SessionInputError(
            path,
            f"the file has {size} bytes, fewer than the 7504-byte PLX file header (truncated or not a .plx)",
            "copy the .plx again completely from the rig",
        )
    header = np.fromfile(path, dtype=FILE_HEADER, count=1)[0]
    magic = int(header["MagicNumber"])
    if magic != MAGIC:
        raise SessionInputError(
            path,
            f"bad PLX magic number 0x{magic:08X} (expected 0x{MAGIC:08X}): the file header is corrupt or this is not a "
            ".plx file",
            "copy the .plx again from the rig; PL2 files must be exported to .plx first",
        )
    version = int(header["Version"])
    if version not in SUPPORTED_VERSIONS:
        raise SessionInputError(
            path,
            f"PLX version {version} is not supported (supported: 100-107)",
            "re-save the file as .plx with Plexon's tools",
        )
    counts = {key: int(header[key]) for key in ("NumDSPChannels", "NumEventChannels", "NumSlowChannels")}
    bad = {key: n for key, n in counts.items() if not 0 <= n <= MAX_CHANNEL_HEADERS}
    if bad:
        raise SessionInputError(
            path,
            f"impossible channel counts in the file header {bad}: the header is corrupt",
            "copy the .plx again from the rig",
        )
    data_start = (
        FILE_HEADER.itemsize
        + CHANNEL_HEADER.itemsize * counts["NumDSPChannels"]
        + EVENT_HEADER.itemsize * counts["NumEventChannels"]
        + SLOW_CHANNEL_HEADER.itemsize * counts["NumSlowChannels"]
    )
    if data_start > size:
        raise SessionInputError(
            path,
            f"the header declares {counts} channel headers ({data_start} bytes) but the file has only {size} bytes: "
            "corrupt header or truncated copy",
            "copy the .plx again completely from the rig",
        )
    if int(header["ADFrequency"]) <= 0:
        raise SessionInputError(
            path,
            f"impossible timestamp frequency ADFrequency={int(header['ADFrequency'])} in the file header",
            "copy the .plx again from the rig",
        )
    out: dict[str, object] = {
        name: header[name].item() if header[name].ndim == 0 else header[name] for name in FILE_HEADER.names
    }
    out.update(counts)
    out["data_start"] = data_start
    out["file_size"] = size
    return out


def read_slow_channel_headers(path: Path, file_header: dict[str, object]) -> np.ndarray:
    """The continuous ("slow") channel headers, in file order."""
    offset = (
        FILE_HEADER.itemsize
        + CHANNEL_HEADER.itemsize * int(file_header["NumDSPChannels"])
        + EVENT_HEADER.itemsize * int(file_header["NumEventChannels"])
    )
    return np.fromfile(path, dtype=SLOW_CHANNEL_HEADER, count=int(file_header["NumSlowChannels"]), offset=offset)


@dataclass(frozen=True)
class BlockIndex:
    """Where the continuous samples of one channel lie: one entry per data block, in file (= time) order."""

    payload_offset: np.ndarray  # int64: file offset of the block's first sample
    first_sample: np.ndarray  # int64: index of the block's first sample in the channel
    n_samples: np.ndarray  # int64
    timestamp: np.ndarray  # int64: block timestamp in ADFrequency ticks

    @property
    def total(self) -> int:
        return int(self.n_samples.sum())


def scan_blocks(
    path: Path, data_start: int, file_size: int, wanted_channels: set[int], known_slow: set[int]
) -> dict[int, BlockIndex]:
    """One pass over the data block headers; returns the continuous blocks of ``wanted_channels``.

    Payloads are skipped (large blocks are seeked over); runs of equal-size blocks are verified in bulk
    with numpy. Unknown block types, continuous blocks of undeclared channels and a last block cut short
    raise ``SessionInputError``.
    """
    buffer = bytearray(_SCAN_WINDOW)
    words = np.frombuffer(buffer, dtype="<u2")
    unpack = struct.Struct("<HH").unpack_from
    wanted_lookup = np.zeros(65536, dtype=bool)
    wanted_lookup[list(wanted_channels)] = True
    known_lookup = np.zeros(65536, dtype=bool)
    known_lookup[list(known_slow)] = True
    found_pos: list[np.ndarray] = []
    found_hdr: list[np.ndarray] = []
    pos = data_start
    with open(path, "rb", buffering=0) as handle:
        while pos < file_size:
            handle.seek(pos)
            n = handle.readinto(buffer)
            if n < 16:
                raise SessionInputError(
                    path,
                    f"the file ends inside a data block header at byte {pos} (truncated copy)",
                    "copy the .plx again completely from the rig",
                )
            local = 0
            pending: list[int] = []
            pieces: list[np.ndarray] = []
            prev_len, run = -1, 0
            while local + 16 <= n:
                n_waveforms, n_words = unpack(buffer, local + 12)
                length = 16 + 2 * n_waveforms * n_words
                pending.append(local)
                local += length
                if length != prev_len:
                    prev_len, run = length, 0
                    continue
                run += 1
                if run < _GALLOP_AFTER or local + 16 > n:
                    continue
                run, batch = 0, _GALLOP_FIRST
                while local + 16 <= n:  # gallop: accept the following equal-size blocks in growing batches
                    count = min((n - 16 - local) // length + 1, batch)
                    candidates = local + length * np.arange(count, dtype=np.int64)
                    w = candidates // 2
                    lengths = 16 + 2 * words[w + 6].astype(np.int64) * words[w + 7].astype(np.int64)
                    mismatch = np.flatnonzero(lengths != length)
                    accepted = int(mismatch[0]) if mismatch.size else count
                    if accepted:
                        pieces.append(np.asarray(pending, dtype=np.int64))
                        pending = []
                        pieces.append(candidates[:accepted])
                        local += length * accepted
                    if accepted < count:
                        break
                    batch = min(2 * batch, _GALLOP_MAX)
            pieces.append(np.asarray(pending, dtype=np.int64))
            starts = np.concatenate(pieces)
            headers = words[(starts // 2)[:, None] + np.arange(8)]
            types = headers[:, 0]
            bad = np.flatnonzero((types != SPIKE_BLOCK) & (types != EVENT_BLOCK) & (types != CONTINUOUS_BLOCK))
            if bad.size:
                at = pos + int(starts[bad[0]])
                raise SessionInputError(
                    path,
                    f"corrupt data block at byte {at} (block type {int(types[bad[0]])}; expected 1, 4 or 5): the "
                    "header's channel counts disagree with the data, or the file is damaged",
                    "copy the .plx again from the rig",
                )
            continuous = types == CONTINUOUS_BLOCK
            unknown = continuous & ~known_lookup[headers[:, 4]]
            if unknown.any():
                at = pos + int(starts[np.flatnonzero(unknown)[0]])
                raise SessionInputError(
                    path,
                    f"continuous data block at byte {at} belongs to channel {int(headers[unknown][0, 4])}, which has "
                    "no slow-channel header: corrupt header or data",
                    "copy the .plx again from the rig",
                )
            keep = continuous & wanted_lookup[headers[:, 4]]
            if keep.any():
                found_pos.append(starts[keep] + pos)
                found_hdr.append(headers[keep].copy())
            if local + 16 > n and n < _SCAN_WINDOW and local < n:
                raise SessionInputError(
                    path,
                    f"the file ends inside a data block header at byte {pos + local} (truncated copy)",
                    "copy the .plx again completely from the rig",
                )
            pos += local
    if pos > file_size:
        raise SessionInputError(
            path,
            f"the last data block runs {pos - file_size} bytes past the end of the file (truncated copy)",
            "copy the .plx again completely from the rig",
        )
    positions = np.concatenate(found_pos) if found_pos else np.zeros(0, np.int64)
    headers = np.concatenate(found_hdr) if found_hdr else np.zeros((0, 8), np.uint16)
    channels = headers[:, 4].astype(np.int64)
    index: dict[int, BlockIndex] = {}
    for channel in wanted_channels:
        mine = channels == channel
        counts = headers[mine, 6].astype(np.int64) * headers[mine, 7].astype(np.int64)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if counts.size else np.zeros(0, np.int64)
        ts = (
            (headers[mine, 1].astype(np.int64) << 32)
            | (headers[mine, 3].astype(np.int64) << 16)
            | headers[mine, 2].astype(np.int64)
        )
        index[channel] = BlockIndex(positions[mine] + 16, first, counts, ts)
    return index


def slow_channel_uv_per_bit(file_header: dict[str, object], slow: np.void, path: Path) -> float:
    """µV per bit of one continuous channel, per PLX version (Plexon SDK formulas, mV x 1000).

    * version < 102: 5000 mV / (2048 x Gain x 1000)  (12-bit ADC, preamp gain 1000 assumed)
    * version 102:   5000 mV / (2048 x Gain x PreAmpGain)
    * version >= 103: SlowMaxMagnitudeMV / (0.5 x 2^BitsPerSlowSample x Gain x PreAmpGain)
    """
    version = int(file_header["Version"])
    gain = int(slow["Gain"])
    preamp = int(slow["PreAmpGain"]) if version >= 102 else 1000
    name = _text(slow["Name"])
    if gain <= 0 or preamp <= 0:
        raise SessionInputError(
            path,
            f"channel {name!r} has impossible gains (Gain={gain}, PreAmpGain={preamp}) in its header",
            "copy the .plx again from the rig",
        )
    if version < 103:
        mv_per_bit = 5000.0 / (2048 * gain * preamp)
    else:
        max_mv = int(file_header["SlowMaxMagnitudeMV"])
        bits = int(file_header["BitsPerSlowSample"])
        if max_mv <= 0 or not 8 <= bits <= 24:
            raise SessionInputError(
                path,
                f"impossible ADC description in the file header (SlowMaxMagnitudeMV={max_mv}, BitsPerSlowSample={bits})",
                "copy the .plx again from the rig",
            )
        mv_per_bit = max_mv / (0.5 * 2**bits * gain * preamp)
    return mv_per_bit * 1000.0


def _prefix(name: str) -> str:
    match = re.match(r"^\D+", name)
    return match.group(0).upper().rstrip("_ ") if match else ""


def _candidate_groups(slow: np.ndarray) -> list[list[int]]:
    """Header indices of sortable channels, best group first: WB, then SPKC, then other >= 20 kHz channels."""
    names = [_text(h["Name"]) for h in slow]
    groups = [[i for i, name in enumerate(names) if _prefix(name) in prefixes] for prefixes in _SORTABLE_PREFIXES]
    taken = {i for group in groups for i in group}
    groups.append(
        [
            i
            for i, name in enumerate(names)
            if i not in taken and int(slow[i]["ADFreq"]) >= 20000 and _prefix(name) not in _NOT_SORTABLE_PREFIXES
        ]
    )
    return [g for g in groups if g]


#: Plexon's newer format: its only reader (neo's Plexon2RawIO) needs Plexon's Windows DLL, downloaded at run time.
PL2_SUFFIX = ".pl2"
PL2_FIX = (
    "convert it to .plx with Plexon's own software (PlexUtil's PL2 to PLX conversion, or Offline Sorter), or to NWB, "
    "and put that file in the session folder in place of the .pl2"
)
_PART_NAME = re.compile(r"^(?P<probe>.+)-part(?P<k>[1-9]\d*)$")


def pl2_files(session_dir: Path) -> list[Path]:
    """The ``.pl2`` files anywhere in the session folder."""
    return sorted(p for p in session_dir.rglob("*") if p.suffix.lower() == PL2_SUFFIX and p.is_file())


def pl2_refusal(path: Path) -> SessionInputError:
    """Why a ``.pl2`` file is not sorted, and what to do instead."""
    return SessionInputError(
        path,
        "a PL2 file (Plexon's newer format) cannot be read here: the only PL2 reader, neo's Plexon2RawIO, needs "
        "Plexon's Windows DLL, downloaded when it runs, and this platform reads no code from the network",
        PL2_FIX,
    )


@dataclass(frozen=True)
class _Recording:
    """One ``.plx`` file's wideband channels as its headers and block index say: what ``open`` and ``split`` need.

    ``parts``: the runs of continuous blocks that follow on without a pause, placed on the acquisition clock (the
    block timestamp over the ticks per sample); ``concat_start``: where each part starts in the channels' samples
    taken in file order."""

    path: Path
    header: dict[str, object]
    n_slow: int
    sorting: tuple[int, ...]
    tables: list[BlockIndex]
    fs: float
    uv_per_bit: float
    date: dt.date
    note: str
    parts: tuple[FilePlacement, ...]
    concat_start: tuple[int, ...]


class Reading:
    """A Plexon session folder: one probe per ``.plx`` file, named by its file stem (``<stem>-part<k>``: one part
    between two recording pauses, with ``split_segments``); ``.pl2`` files are listed as skipped."""

    def __init__(self, session_dir: Path) -> None:
        self.folder = session_dir
        files = find_files(session_dir)
        stems = {path.stem for path in files}
        skipped = [
            f"{path.relative_to(session_dir)}: a PL2 file, not readable offline"
            + (f" (the same recording as {path.stem}.plx, which is sorted)" if path.stem in stems else f"; {PL2_FIX}")
            for path in pl2_files(session_dir)
        ]
        self.listing = ProbeListing({path.stem: (path,) for path in files}, tuple(skipped))
        self._recordings: dict[str, _Recording] = {}

    def _recording(self, probe: str) -> _Recording:
        if probe not in self._recordings:
            self._recordings[probe] = _examine(self.listing.probes[probe][0])
        return self._recordings[probe]

    def split(self, probe: str) -> dict[str, tuple[Path, ...]]:
        """One partition per part of ``probe`` between recording pauses (``<stem>-part1``, ...)."""
        recording = self._recording(probe)
        return {f"{probe}-part{k}": (recording.path,) for k in range(1, len(recording.parts) + 1)}

    def base_probe(self, name: str) -> str | None:
        """The ``.plx`` a part partition (``session-part2``) belongs to, when the file has that part."""
        match = _PART_NAME.match(name)
        if match is None or match.group("probe") not in self.listing.probes:
            return None
        return match.group("probe") if name in self.split(match.group("probe")) else None

    def files_of(self, name: str) -> tuple[Path, ...]:
        base = self.base_probe(name)
        return self.listing.probes[base or name]

    def open(self, name: str, options: ReadOptions = ReadOptions()) -> RecordingSource:
        """One ``.plx`` recording (or one part of it) laid out on the acquisition clock: pauses filled with zeros up to
        ``max_gap_fill_s``, longer ones refused with the fix."""
        base = name if name in self.listing.probes else self.base_probe(name)
        if base is None:  # neither a listed file nor one of its parts: the listing's refusal names what there is
            base = self.listing.pick(name, self.folder)
        recording = self._recording(base)
        if name == base:
            chosen = list(range(len(recording.parts)))
        else:
            chosen = [int(_PART_NAME.match(name).group("k")) - 1]  # type: ignore[union-attr]
        placements = [recording.parts[i] for i in chosen]
        timeline = tuple(lay_out(placements, recording.fs, options.max_gap_fill_s))
        concat = block_reader(recording.path, recording.tables)
        pauses = len(recording.parts) - 1
        note = recording.note
        if pauses and base == name:
            note += f"; {pauses} recording pause(s): the parts are placed on the acquisition clock, pauses zero-filled"
        return RecordingSource(
            format=FORMAT,
            session_dir=self.folder,
            data_files=(recording.path,),
            sampling_frequency=recording.fs,
            n_channels=recording.n_slow,
            n_samples=total_samples(timeline),
            source_dtype="int16",
            recording_date=recording.date,
            sorting_channels=recording.sorting,
            uv_per_bit=recording.uv_per_bit,
            read_chunk=placed_reader(
                concat, timeline, [recording.concat_start[i] for i in chosen], len(recording.tables)
            ),
            probe=None,
            probe_file=_probe_file(recording.path),
            zero_copy_path=None,
            scaling_note=note,
            probe_name=name,
            details={"plexon_parts": len(recording.parts), "skipped_streams": list(self.listing.skipped)},
            timeline=timeline,
        )


def scan(session_dir: Path) -> Reading:
    return Reading(session_dir)


def list_probes(session_dir: Path) -> ProbeListing:
    """The folder's probes (reader only: no session config applied)."""
    return scan(session_dir).listing


def open_recording(
    session_dir: Path, probe: str | None = None, options: ReadOptions = ReadOptions()
) -> RecordingSource:
    """One ``.plx`` recording as the file says (reader only: no session config applied)."""
    reading = scan(session_dir)
    name = probe if probe is not None and reading.base_probe(probe) else reading.listing.pick(probe, session_dir)
    return reading.open(name, options)


def _probe_file(path: Path) -> Path | None:
    probe_file = path.with_suffix(".probe.json")
    return probe_file if probe_file.is_file() else None


def _examine(path: Path) -> _Recording:
    """One header pass over a ``.plx`` file: the wideband channels, their gain and their parts on the clock."""
    header = read_file_header(path)
    slow = read_slow_channel_headers(path, header)
    numbers = [int(h["Channel"]) for h in slow]
    if len(set(numbers)) != len(numbers) or any(not 0 <= c < 65536 for c in numbers):
        raise SessionInputError(
            path,
            "the slow-channel headers repeat a channel number or use an impossible one",
            "copy the .plx again from the rig",
        )
    groups = _candidate_groups(slow)
    if not groups:
        names = ", ".join(_text(h["Name"]) for h in slow) or "none"
        raise SessionInputError(
            path,
            f"no wideband continuous channels to sort (continuous channels: {names})",
            "record the wideband (WB) or spike-continuous (SPKC) signals; spike snippets alone cannot be sorted",
        )
    wanted = {numbers[i] for group in groups for i in group}
    index = scan_blocks(path, int(header["data_start"]), int(header["file_size"]), wanted, set(numbers))
    group = next((g for g in groups if any(index[numbers[i]].total for i in g)), None)
    if group is None:
        raise SessionInputError(
            path,
            "the wideband channels ("
            + ", ".join(_text(slow[i]["Name"]) for g in groups for i in g)
            + f") hold no samples; the file holds: {_holdings(path, header, slow)}",
            "record wideband (WB) data, not only spikes and events",
        )
    sorting = tuple(i for i in group if index[numbers[i]].total)
    totals = {_text(slow[i]["Name"]): index[numbers[i]].total for i in sorting}
    if len(set(totals.values())) != 1:
        raise SessionInputError(
            path,
            "the wideband channels hold different numbers of samples "
            f"({min(totals.values())}..{max(totals.values())}): truncated copy or damaged file",
            "copy the .plx again completely from the rig",
        )
    rates = {int(slow[i]["ADFreq"]) for i in sorting}
    if len(rates) != 1 or min(rates) <= 0:
        raise SessionInputError(
            path,
            f"the wideband channels have different or impossible sampling rates {sorted(rates)}",
            "record all wideband channels at one rate",
        )
    fs = float(rates.pop())
    gains = [slow_channel_uv_per_bit(header, slow[i], path) for i in sorting]
    if not np.allclose(gains, gains[0], rtol=1e-9):
        raise SessionInputError(
            path,
            f"the wideband channels have different gains ({min(gains):.4g}..{max(gains):.4g} µV/bit)",
            "record all wideband channels with one gain, or export them at one gain",
        )
    try:
        date = dt.date(int(header["Year"]), int(header["Month"]), int(header["Day"]))
    except ValueError:
        raise SessionInputError(
            path,
            f"impossible recording date {header['Year']}-{header['Month']}-{header['Day']} in the file header",
            "copy the .plx again from the rig",
        ) from None
    tables = [index[numbers[i]] for i in sorting]
    ticks_per_sample = int(header["ADFrequency"]) / fs
    runs = [_runs(table, ticks_per_sample) for table in tables]
    differs = next((k for k, run in enumerate(runs) if run != runs[0]), None)
    if differs is not None:
        raise SessionInputError(
            path,
            f"the wideband channels pause at different times ({_text(slow[sorting[differs]]['Name'])}'s continuous "
            f"blocks start at other timestamps than {_text(slow[sorting[0]]['Name'])}'s)",
            "record all wideband channels over the same time, or export them together from Plexon's software",
        )
    parts = tuple(FilePlacement(f"part{k}", path, first, n) for k, (first, n) in enumerate(runs[0], start=1))
    concat_start = tuple(int(c) for c in np.concatenate([[0], np.cumsum([n for _, n in runs[0]])[:-1]]))
    return _Recording(
        path=path,
        header=header,
        n_slow=len(slow),
        sorting=sorting,
        tables=tables,
        fs=fs,
        uv_per_bit=float(gains[0]),
        date=date,
        note=_gain_note(header, slow[sorting[0]], float(gains[0])),
        parts=parts,
        concat_start=concat_start,
    )


def _gain_note(header: dict[str, object], first: np.void, uv_per_bit: float) -> str:
    version = int(header["Version"])  # type: ignore[call-overload]
    if version >= 103:
        formula = (
            f"SlowMaxMagnitudeMV {header['SlowMaxMagnitudeMV']} / (0.5 x 2^{header['BitsPerSlowSample']} x Gain "
            f"{int(first['Gain'])} x PreAmpGain {int(first['PreAmpGain'])})"
        )
    else:
        formula = (
            f"5000 mV / (2048 x Gain {int(first['Gain'])} x PreAmpGain "
            f"{int(first['PreAmpGain']) if version >= 102 else 1000})"
        )
    return f"PLX v{version} slow-channel header: {formula} = {uv_per_bit:.6g} µV/bit"


def _holdings(path: Path, header: dict[str, object], slow: np.ndarray) -> str:
    """The continuous channels that hold samples (for a file whose wideband channels hold none)."""
    numbers = [int(h["Channel"]) for h in slow]
    index = scan_blocks(path, int(header["data_start"]), int(header["file_size"]), set(numbers), set(numbers))  # type: ignore[call-overload]
    held = [
        f"{_text(h['Name'])} ({int(h['ADFreq'])} Hz, {index[n].total} samples)"
        for h, n in zip(slow, numbers)
        if index[n].total
    ]
    if not held:
        return "no continuous samples at all (only spikes and events)"
    return ", ".join(held[:8]) + (f" and {len(held) - 8} more" if len(held) > 8 else "")


def _runs(table: BlockIndex, ticks_per_sample: float) -> list[tuple[int, int]]:
    """(first sample on the acquisition clock, samples) of each run of blocks that follow on without a pause: a block
    starting within a sample of where the previous one ended continues it."""
    keep = table.n_samples > 0
    start = table.timestamp[keep] / ticks_per_sample
    counts = table.n_samples[keep]
    if not counts.size:
        return []
    breaks = np.flatnonzero(np.abs(start[1:] - (start[:-1] + counts[:-1])) >= 1.0) + 1
    firsts = np.concatenate([[0], breaks])
    totals = np.add.reduceat(counts, firsts)
    return [(int(round(float(start[f]))), int(n)) for f, n in zip(firsts, totals)]


def placed_reader(
    concat: ChunkReader, segments: tuple[TimelineSegment, ...], concat_starts: list[int], n_cols: int
) -> ChunkReader:
    """Rows of the binary from ``concat`` (the channels' samples in file order): each segment's rows from its part's
    samples (``concat_start`` + the overlap it skips), zeros where a pause was filled."""
    total = total_samples(segments)
    if len(segments) == 1 and concat_starts[0] == 0 and segments[0].file_offset == 0:
        return concat

    def read_chunk(start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= total:
            raise ValueError(f"samples {start}:{stop} are outside 0:{total}")
        out = np.zeros((stop - start, n_cols), dtype=np.int16)
        for segment, first in zip(segments, concat_starts):
            lo, hi = max(start, segment.binary_start), min(stop, segment.binary_start + segment.n_samples)
            if lo < hi:
                at = first + segment.file_offset + lo - segment.binary_start
                out[lo - start : hi - start] = concat(at, at + hi - lo)
        return out

    return read_chunk


def block_reader(path: Path, tables: list[BlockIndex]) -> ChunkReader:
    """Chunk reader gathering, per channel, only the blocks that overlap ``[start, stop)``."""
    n_total = tables[0].total
    n_cols = len(tables)

    def read_chunk(start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= n_total:
            raise ValueError(f"samples {start}:{stop} are outside 0:{n_total}")
        out = np.empty((stop - start, n_cols), dtype=np.int16)
        if stop == start:
            return out
        offsets, sizes, rows, cols = [], [], [], []
        for col, table in enumerate(tables):
            b0 = int(np.searchsorted(table.first_sample, start, side="right")) - 1
            b1 = int(np.searchsorted(table.first_sample, stop, side="left"))
            first = table.first_sample[b0:b1]
            lo = np.maximum(first, start)
            hi = np.minimum(first + table.n_samples[b0:b1], stop)
            offsets.append(table.payload_offset[b0:b1] + 2 * (lo - first))
            sizes.append(2 * (hi - lo))
            rows.append(lo - start)
            cols.append(np.full(b1 - b0, col))
        offset, size, row, col_of = (np.concatenate(a) for a in (offsets, sizes, rows, cols))
        keep = size > 0
        offset, size, row, col_of = offset[keep], size[keep], row[keep], col_of[keep]
        if int(size.sum()) != 2 * (stop - start) * n_cols:
            raise SessionInputError(
                path,
                f"the block index does not cover samples {start}:{stop}",
                "copy the .plx again completely from the rig",
            )
        order = np.argsort(offset, kind="stable")
        offset, size, row, col_of = (
            offset[order].tolist(),
            size[order].tolist(),
            row[order].tolist(),
            col_of[order].tolist(),
        )
        with open(path, "rb", buffering=0) as handle:
            i = 0
            while i < len(offset):
                j, begin, end = i + 1, offset[i], offset[i] + size[i]
                while j < len(offset) and offset[j] - end <= _MAX_GAP and offset[j] + size[j] - begin <= _MAX_READ:
                    end = max(end, offset[j] + size[j])
                    j += 1
                buffer = np.empty(end - begin, dtype=np.uint8)
                handle.seek(begin)
                if handle.readinto(memoryview(buffer)) != end - begin:
                    raise SessionInputError(
                        path,
                        f"the file ends before byte {end} (truncated since it was opened)",
                        "copy the .plx again completely from the rig",
                    )
                samples = buffer.view("<i2")
                for k in range(i, j):
                    a = (offset[k] - begin) // 2
                    n = size[k] // 2
                    out[row[k] : row[k] + n, col_of[k]] = samples[a : a + n]
                del buffer, samples  # at most one read buffer alive at a time
                i = j
        return out

    return read_chunk

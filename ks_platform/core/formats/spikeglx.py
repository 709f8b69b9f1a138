"""SpikeGLX: ``*.ap.bin`` + ``*.ap.meta`` per probe (``imecN``); probe and channel map from the meta's imro table.

A run folder may hold several probes (``imec0``, ``imec1``; phase 3A files ``*.imec.ap.bin`` are ``imec``), several
gates and triggers (``<run>_g0_t0``, ``<run>_g1_t0``…, nested folders are normal) and CatGT output
(``catgt_<run>_g0/…/<run>_g0_tcat.imec0.ap.bin``). A file's run, gate, trigger and probe come from the name SpikeGLX
gave it (the meta's ``fileName``), so files renamed by hand keep their identity; the name on disk is used only for a
meta without ``fileName``.

One probe is one recording: its gate/trigger files are laid out on the acquisition clock by their ``firstSample``
(core/timeline.py: gaps zero-filled up to ``max_gap_fill_s``, overlaps skipped, as CatGT does). A CatGT output file
supersedes exactly the gates and triggers its meta names (``catGVals``/``catTVals``); a raw file it does not cover is
never dropped: the probe is refused naming it, unless the session config splits the probe by gate (then each gate is
read from CatGT output where it covers it, else from the raw files). NI-DAQ, LF and OneBox streams are listed as
skipped. ``open(…, "imec0-g1")`` reads one gate only (not listed as a probe).

Channels: ``snsSaveChanSubset`` lists *acquired* channel ids (``all``: every channel of the file, ``snsApLfSy``); AP
channels are those below ``acqApLfSy[0]``, the sync channel(s) come last and are never sorted. µV per bit =
``imAiRangeMax / imMaxInt / AP gain * 1e6``; where the imro table gives the channels different AP gains, the finest
channel's, with each coarser channel rescaled to it when read (SpikeInterface scales each channel with its own
gain; the file is then converted, not referenced in place).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats.base import (
    INT16_LIMIT,
    HeaderFiles,
    MissingDate,
    ProbeListing,
    ReadOptions,
    RecordingSource,
    RescaledReader,
    memmap_int16_reader,
    parse_recording_date,
    timeline_reader,
)
from ks_platform.core.timeline import FilePlacement, lay_out, total_samples

FORMAT = "spikeglx"
RESTORE = "restore the .meta SpikeGLX wrote for this recording"
#: The fix for a SpikeGLX folder without an AP file (e.g. only the LF band, or only NI-DAQ files).
NO_PROBE_FIX = (
    "copy each probe's AP band (<run>_gN_tM.imecK.ap.bin with its .ap.meta) into the session folder: Kilosort sorts "
    "the AP band, an LF-only recording cannot be spike-sorted"
)

#: Streams that are recognised but not sorted, by file-name ending, with why.
SKIPPED_STREAMS = {
    ".lf.bin": "LF band (sorting uses the AP band)",
    ".nidq.bin": "NI-DAQ stream (not a probe)",
    ".obx.bin": "OneBox stream (not a probe)",
}
#: imro types whose table entries carry each channel's AP gain (``(channel bank ref apGain lfGain …)``, NP1.0 style).
PER_CHANNEL_GAIN_TYPES = frozenset({"0", "1020", "1030", "1100", "1120", "1121", "1122", "1123", "1200", "1300"})
#: imro types whose table header carries the AP gain, by header field (NP1110: ``(1110,colMode,ref,apGain,…)``).
HEADER_GAIN_FIELD = {"1110": 3}
#: imro types with a fixed AP gain (NP2.0 phase 1: 80; NP2.0 commercial and NXT: 100).
FIXED_AP_GAIN = {
    "21": 80.0,
    "24": 80.0,
    "2003": 100.0,
    "2004": 100.0,
    "2013": 100.0,
    "2014": 100.0,
    "2020": 100.0,
    "2021": 100.0,
    "3010": 100.0,
    "3020": 100.0,
    "3022": 100.0,
}
#: ``imMaxInt`` for older metas that omit it (NP1.0: 10-bit ADC, NP2.0 phase 1: 14-bit).
DEFAULT_MAX_INT = {**dict.fromkeys(PER_CHANNEL_GAIN_TYPES, 512.0), "1110": 512.0, "21": 8192.0, "24": 8192.0}

_PROBE_IN_NAME = re.compile(r"\.(imec\d*)\.ap\.bin$")
_GATE_TRIGGER = re.compile(r"^(?P<run>.*)_g(?P<gate>\d+)(?:_t(?P<trigger>\d+|cat))?$")
#: A segment partition: ``imec0-g1`` (one gate), ``imec0-g0to2`` (a CatGT file covering gates 0..2).
_PART_NAME = re.compile(r"^(?P<probe>.+)-g(?P<first>\d+)(?:to(?P<last>\d+))?$")


# ------------------------------------------------------------------------------------------------ file names
@dataclass(frozen=True)
class FileName:
    """What a SpikeGLX AP file's name says: run, gate, trigger (``None`` for CatGT's ``_tcat``) and probe; for CatGT
    output, the gates and triggers it covers (``catGVals``/``catTVals`` of its meta)."""

    path: Path
    run: str
    gate: int
    trigger: int | None
    probe: str
    gates: tuple[int, int] | None = None
    triggers: tuple[int, int] | None = None

    @property
    def catgt(self) -> bool:
        return self.trigger is None

    @property
    def order(self) -> tuple:
        return (self.run, self.gate, -1 if self.trigger is None else self.trigger, self.path.name)

    @property
    def label(self) -> str:
        if not self.catgt:
            return f"g{self.gate}_t{self.trigger}"
        gates = self.gates or (self.gate, self.gate)
        return f"g{gates[0]}{'' if gates[0] == gates[1] else f'-{gates[1]}'}_tcat"

    def covers(self, raw: FileName) -> bool:
        """Whether this CatGT file holds ``raw``'s samples (same run and probe, gate and trigger in its ranges)."""
        if not self.catgt or raw.catgt or (raw.run, raw.probe) != (self.run, self.probe):
            return False
        gates = self.gates or (self.gate, self.gate)
        triggers = self.triggers or (0, 1 << 30)
        return gates[0] <= raw.gate <= gates[1] and triggers[0] <= (raw.trigger or 0) <= triggers[1]


def parse_name(path: Path, written_as: str | None = None) -> FileName:
    """Run/gate/trigger/probe of an ``.ap.bin``, from the name SpikeGLX wrote (``written_as``, the meta's
    ``fileName``) or else from ``path``'s (a name without ``_gN_tM`` is gate 0, trigger 0)."""
    name = written_as or path.name
    match = _PROBE_IN_NAME.search(name)
    probe = match.group(1) if match else "imec"
    stem = name[: match.start()] if match else name[: -len(".ap.bin")]
    parts = _GATE_TRIGGER.match(stem)
    if parts is None:
        return FileName(path, stem, 0, 0, probe)
    trigger = parts.group("trigger")
    return FileName(
        path, parts.group("run"), int(parts.group("gate")), None if trigger == "cat" else int(trigger or 0), probe
    )


def _written_name(meta: Mapping[str, str]) -> str | None:
    """The file name SpikeGLX/CatGT gave the file (``fileName``, a Windows or POSIX path), when it is an AP file."""
    name = PureWindowsPath(meta.get("fileName", "").strip()).name
    return name if name.endswith(".ap.bin") else None


def _catgt_range(meta: Mapping[str, str], key: str, meta_path: Path) -> tuple[int, int] | None:
    text = meta.get(key)
    if text is None:
        return None
    try:
        first, last = (int(part) for part in text.split(","))
    except ValueError:
        raise SessionInputError(meta_path, f"{key}={text!r} is not two numbers (first,last)", RESTORE) from None
    if first < 0 or last < first:
        raise SessionInputError(meta_path, f"{key}={text!r} is not a range first,last", RESTORE)
    return first, last


def _skipped_kind(name: str) -> str | None:
    return next((why for ending, why in SKIPPED_STREAMS.items() if name.endswith(ending)), None)


def _binaries(session_dir: Path) -> list[Path]:
    """Every ``.ap.bin`` and every LF/NI-DAQ/OneBox binary in the folder, searched recursively (runs nest)."""
    found = sorted(session_dir.rglob("*.bin"))
    return [p for p in found if (p.name.endswith(".ap.bin") or _skipped_kind(p.name)) and p.is_file()]


def find_files(session_dir: Path) -> list[Path]:
    """SpikeGLX binaries (detection): every ``.ap.bin``, and LF/NI-DAQ/OneBox binaries that have their ``.meta``
    (so a folder holding only those is still recognised as SpikeGLX, and reported as holding no probe)."""
    return [p for p in _binaries(session_dir) if p.name.endswith(".ap.bin") or p.with_suffix(".meta").is_file()]


def _relative(path: Path, session_dir: Path) -> str:
    try:
        return str(path.relative_to(session_dir))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------------ meta files
def parse_meta(meta_path: Path, headers: HeaderFiles | None = None) -> dict[str, str]:
    """Parse a ``.meta`` file (``key=value`` lines; imro keys start with ``~``), read through ``headers`` when given
    (once per scan). UTF-8; a byte-order mark (as a meta saved by a Windows editor starts) is not part of the first
    key."""
    if not meta_path.is_file():
        raise SessionInputError(
            meta_path, "the SpikeGLX meta file is missing", "copy the .ap.meta written by SpikeGLX next to the .ap.bin"
        )
    meta: dict[str, str] = {}
    try:
        raw = headers.read(meta_path) if headers is not None else meta_path.read_bytes()
        text = raw.decode("utf-8-sig", errors="strict")
    except PermissionError:
        raise  # reported by formats.open_recording with the permission fix
    except UnicodeDecodeError as exc:
        raise SessionInputError(
            meta_path,
            f"the meta file is not text ({exc.reason} at byte {exc.start})",
            "restore the .meta SpikeGLX wrote for this recording",
        ) from None
    except OSError as exc:
        raise SessionInputError(
            meta_path,
            f"cannot read the meta file ({exc.strerror or exc})",
            "check the file's permissions and copy it again",
        ) from None
    for line in text.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            meta[key.strip().lstrip("~")] = value.strip()
    return meta


def _require(meta: Mapping[str, str], key: str, meta_path: Path) -> str:
    if key not in meta:
        raise SessionInputError(
            meta_path, f"the meta file has no {key!r} entry", "use the .meta SpikeGLX wrote for this run"
        )
    return meta[key]


def _number(
    meta: Mapping[str, str],
    key: str,
    meta_path: Path,
    kind: type = int,
    default: str | None = None,
    allow_zero: bool = False,
) -> float:
    """A numeric meta entry that must be finite and > 0 (>= 0 with ``allow_zero``); else an error naming file and key."""
    text = meta.get(key, default) if default is not None else _require(meta, key, meta_path)
    try:
        value = kind(text)
    except (ValueError, OverflowError):
        raise SessionInputError(meta_path, f"{key}={text!r} is not a number", RESTORE) from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise SessionInputError(
            meta_path, f"{key}={text!r} must be a finite number {'>= 0' if allow_zero else '> 0'}", RESTORE
        )
    return value


def _counts(meta: Mapping[str, str], key: str, meta_path: Path) -> tuple[int, int, int]:
    """``acqApLfSy``/``snsApLfSy``: three non-negative channel counts (AP, LF, sync)."""
    text = _require(meta, key, meta_path)
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        counts = ()
    if len(counts) != 3 or min(counts) < 0:
        raise SessionInputError(meta_path, f"{key}={text!r} is not three channel counts (AP,LF,SY)", RESTORE)
    return counts  # type: ignore[return-value]


def saved_channel_ids(meta: Mapping[str, str], meta_path: Path) -> tuple[int, ...]:
    """The acquired channel id of each stored channel (``snsSaveChanSubset``: ``all`` or ``a:b,c,…`` inclusive)."""
    n_saved = int(_number(meta, "nSavedChans", meta_path))
    subset = meta.get("snsSaveChanSubset", "all").strip()
    acquired = sum(_counts(meta, "acqApLfSy", meta_path)) if "acqApLfSy" in meta else n_saved
    if subset == "all":
        ids: tuple[int, ...] = _all_saved(meta, meta_path, n_saved)
    else:
        ids = _parse_subset(subset, meta_path)
    if any(b <= a for a, b in itertools.pairwise(ids)) or (ids and (ids[0] < 0 or ids[-1] >= acquired)):
        raise SessionInputError(
            meta_path,
            f"snsSaveChanSubset={subset!r} is not an increasing list of channel ids in 0..{acquired - 1} (acqApLfSy)",
            RESTORE,
        )
    if len(ids) != n_saved:
        raise SessionInputError(
            meta_path,
            f"nSavedChans={n_saved} disagrees with the {len(ids)} channels listed in snsSaveChanSubset/acqApLfSy",
            RESTORE,
        )
    return ids


def _all_saved(meta: Mapping[str, str], meta_path: Path, n_saved: int) -> tuple[int, ...]:
    """``snsSaveChanSubset=all``: every channel of this file, by type (``snsApLfSy``: its AP, LF and sync channels)
    placed at their acquired ids (AP from 0, LF from ``acqApLfSy[0]``, sync after AP + LF)."""
    if "snsApLfSy" not in meta or "acqApLfSy" not in meta:
        return tuple(range(n_saved))
    ap, lf, sy = _counts(meta, "snsApLfSy", meta_path)
    acq_ap, acq_lf, acq_sy = _counts(meta, "acqApLfSy", meta_path)
    if ap > acq_ap or lf > acq_lf or sy > acq_sy:
        raise SessionInputError(
            meta_path,
            f"snsApLfSy={meta['snsApLfSy']!r} saves more channels of a type than acqApLfSy={meta['acqApLfSy']!r} "
            "acquires",
            RESTORE,
        )
    return (*range(ap), *range(acq_ap, acq_ap + lf), *range(acq_ap + acq_lf, acq_ap + acq_lf + sy))


def _parse_subset(subset: str, meta_path: Path) -> tuple[int, ...]:
    ids: list[int] = []
    for part in subset.split(","):
        low, _, high = part.partition(":")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise SessionInputError(
                meta_path, f"snsSaveChanSubset={subset!r} is not a channel list such as 0:383,768", RESTORE
            ) from None
        if last < first:
            raise SessionInputError(
                meta_path, f"snsSaveChanSubset={subset!r} has the range {part!r} running backwards", RESTORE
            )
        ids.extend(range(first, last + 1))
    return tuple(ids)


def ap_channel_limit(meta: Mapping[str, str], meta_path: Path) -> int:
    """Acquired ids below this are AP channels (``acqApLfSy[0]``; older metas without it: ``snsApLfSy[0]``)."""
    key = "acqApLfSy" if "acqApLfSy" in meta else "snsApLfSy"
    return _counts(meta, key, meta_path)[0]


# ------------------------------------------------------------------------------------------------ gains
def _imro(meta: Mapping[str, str], meta_path: Path) -> tuple[str, list[str], list[list[str]]]:
    """(imro type, header fields, entry fields) of ``imroTbl``; phase 3A's 3-field header is type ``0``."""
    text = _require(meta, "imroTbl", meta_path)
    groups = re.findall(r"\(([^)]*)\)", text)
    if not groups:
        raise SessionInputError(meta_path, "imroTbl is not a SpikeGLX imro table", RESTORE)
    header = [field.strip() for field in groups[0].split(",")]
    kind = "0" if len(header) == 3 else header[0].removeprefix("NP")
    return kind, header, [entry.split() for entry in groups[1:]]


def _catalogue_gain(part_number: str | None) -> float | None:
    """The probe's only AP gain from probeinterface's Neuropixels catalogue (None if unknown or selectable)."""
    if not part_number:
        return None
    try:  # a private helper of probeinterface: a fallback only, so a change there costs nothing else
        from probeinterface.neuropixels_tools import _load_np_probe_features

        features = _load_np_probe_features()["neuropixels_probes"].get(part_number, {})
    except (ImportError, AttributeError, KeyError, OSError, ValueError):
        return None
    gains = str(features.get("ap_gain_list", "")).split(",")
    return float(gains[0]) if len(gains) == 1 and gains[0] else None


def ap_gains(meta: Mapping[str, str], meta_path: Path, ap_ids: tuple[int, ...]) -> tuple[tuple[float, ...], str]:
    """The AP gain of each saved AP channel ``ap_ids`` and where it came from.

    Per-channel imro entries (NP1.0 style) first, then ``imChan0apGain``, the imro header (NP1110), the fixed gain
    of the imro type, probeinterface's catalogue; all but the first give every channel the same gain.
    """
    kind, header, entries = _imro(meta, meta_path)
    if kind in PER_CHANNEL_GAIN_TYPES:
        return _per_channel_gains(entries, ap_ids, meta_path), "imroTbl"
    if "imChan0apGain" in meta:
        gain, origin = _number(meta, "imChan0apGain", meta_path, float), "imChan0apGain"
    elif kind in HEADER_GAIN_FIELD:
        field = HEADER_GAIN_FIELD[kind]
        text = header[field] if len(header) > field else ""
        gain, origin = _number({"imroTbl header": text}, "imroTbl header", meta_path, float), "imroTbl header"
    elif kind in FIXED_AP_GAIN:
        gain, origin = FIXED_AP_GAIN[kind], f"fixed for imro type {kind}"
    else:
        catalogue = _catalogue_gain(meta.get("imDatPrb_pn"))
        if catalogue is None:
            raise SessionInputError(
                meta_path,
                f"cannot tell the AP gain of probe type {kind!r} (imDatPrb_pn={meta.get('imDatPrb_pn')!r}; no "
                "imChan0apGain)",
                "use the .meta SpikeGLX wrote (recent versions write imChan0apGain)",
            )
        gain, origin = catalogue, "probeinterface catalogue"
    return (gain,) * len(ap_ids), origin


def _per_channel_gains(entries: list[list[str]], ap_ids: tuple[int, ...], meta_path: Path) -> tuple[float, ...]:
    """``apGain`` of each channel's ``(channel bank ref apGain lfGain …)`` imro entry."""
    texts: dict[int, str] = {}
    for fields in entries:
        if len(fields) >= 4:
            texts[int(fields[0]) if fields[0].isdigit() else -1] = fields[3]
    missing = [c for c in ap_ids if c not in texts]
    if missing:
        raise SessionInputError(
            meta_path, f"imroTbl has no (channel bank ref apGain …) entry for channels {missing[:5]}", RESTORE
        )
    used = {texts[channel] for channel in ap_ids}
    values = {text: _number({"imroTbl apGain": text}, "imroTbl apGain", meta_path, float) for text in used}
    return tuple(values[texts[channel]] for channel in ap_ids)


@dataclass(frozen=True)
class Scaling:
    """How the AP channels' int16 values map to µV: one µV/bit for the recording, and for channels recorded at a
    coarser gain than the finest the factor that puts them on it (``rescale``, one per AP channel; None when all
    channels share one gain and the samples stay as stored)."""

    uv_per_bit: float
    note: str
    rescale: tuple[float, ...] | None = None
    gains: tuple[float, ...] = ()


def scaling(meta: Mapping[str, str], meta_path: Path, ap_ids: tuple[int, ...]) -> Scaling:
    """µV per bit of the AP channels ``ap_ids``; with several AP gains (NP1.0 imro tables allow one per channel),
    the finest channel's µV per bit and each channel's factor to it (SpikeInterface's rule: every channel at its
    own gain)."""
    kind = _imro(meta, meta_path)[0]
    gains, origin = ap_gains(meta, meta_path, ap_ids)
    default_max = DEFAULT_MAX_INT.get(kind)
    max_int = _number(meta, "imMaxInt", meta_path, float, default=None if default_max is None else str(default_max))
    ai_range = _number(meta, "imAiRangeMax", meta_path, float)
    finest = max(gains)
    value = ai_range / max_int / finest * 1e6
    if not (math.isfinite(value) and value > 0):
        raise SessionInputError(
            meta_path,
            f"imAiRangeMax={ai_range:g} / imMaxInt={max_int:g} / gain={finest:g} gives no usable µV per bit",
            RESTORE,
        )
    note = f"imAiRangeMax {ai_range:g} V / imMaxInt {max_int:g} / AP gain {finest:g} ({origin})"
    if len(set(gains)) == 1:
        return Scaling(value, note, None, gains)
    counts = sorted(Counter(gains).items())
    listed = ", ".join(f"gain {gain:g} on {n} channels (x{finest / gain:g})" for gain, n in counts)
    note += (
        f"; the AP gains differ ({listed}): each channel is rescaled from its own gain to the finest (rint, "
        f"saturating at ±{INT16_LIMIT:g}, saturated samples counted), so zero-copy is off (the stored int16 values "
        "are not on one scale)"
    )
    return Scaling(value, note, tuple(finest / gain for gain in gains), gains)


# ------------------------------------------------------------------------------------------------ one file
@dataclass(frozen=True)
class Segment:
    """One ``.ap.bin`` of a probe, checked against its meta."""

    name: FileName
    meta_path: Path
    meta: Mapping[str, str]
    n_channels: int
    n_samples: int
    sampling_frequency: float
    saved_ids: tuple[int, ...]
    sorting_channels: tuple[int, ...]
    scaling: Scaling

    @property
    def bin_path(self) -> Path:
        return self.name.path

    @property
    def uv_per_bit(self) -> float:
        return self.scaling.uv_per_bit

    @property
    def serial(self) -> str:
        """The probe's serial number (``imDatPrb_sn``; phase 3A: ``imProbeSN``)."""
        return self.meta.get("imDatPrb_sn") or self.meta.get("imProbeSN", "")


def meta_path_of(bin_path: Path) -> Path:
    """The ``.meta`` next to an ``.ap.bin``; a folder or a missing file under that name is refused."""
    meta_path = bin_path.with_suffix(".meta")
    if meta_path.is_dir():
        fix = f"replace it by the .meta file SpikeGLX wrote for {bin_path.name}"
        raise SessionInputError(meta_path, "is a folder, not the SpikeGLX meta file", fix)
    if not meta_path.is_file():
        raise SessionInputError(
            meta_path,
            f"the SpikeGLX meta file is missing (the .meta of {bin_path.name})",
            "copy the .ap.meta written by SpikeGLX next to the .ap.bin",
        )
    return meta_path


def read_segment(name: FileName, meta: Mapping[str, str]) -> Segment:
    """Check one AP file against its (already parsed) meta: size, duration, channel subset, scaling."""
    bin_path, meta_path = name.path, name.path.with_suffix(".meta")
    n_channels = int(_number(meta, "nSavedChans", meta_path))
    fs = _number(meta, "imSampRate", meta_path, float)
    saved = saved_channel_ids(meta, meta_path)  # checked against nSavedChans first: a wrong meta names the meta
    n_samples = _check_size(bin_path, meta, meta_path, n_channels, fs)
    limit = ap_channel_limit(meta, meta_path)
    sorting = tuple(i for i, channel in enumerate(saved) if channel < limit)
    if not sorting:
        raise SessionInputError(meta_path, "no AP channels are saved in this file", "record the AP band (the .ap.bin)")
    found = scaling(meta, meta_path, tuple(saved[i] for i in sorting))
    return Segment(name, meta_path, meta, n_channels, n_samples, fs, saved, sorting, found)


def first_sample(segment: Segment) -> int | None:
    """The file's first sample on the probe's acquisition clock (``firstSample``), None when the meta has none."""
    if "firstSample" not in segment.meta:
        return None
    return int(_number(segment.meta, "firstSample", segment.meta_path, int, allow_zero=True))


def _check_size(bin_path: Path, meta: Mapping[str, str], meta_path: Path, n_channels: int, fs: float) -> int:
    size = bin_path.stat().st_size
    if size == 0:
        raise SessionInputError(bin_path, "the data file is empty (0 bytes)", "copy the recording again from the rig")
    frame = n_channels * 2
    if size % frame:
        raise SessionInputError(
            bin_path,
            f"size {size} bytes is not a multiple of {n_channels} channels x 2 bytes (truncated copy, or the meta's nSavedChans is wrong)",
            "copy the .bin again completely, or use the .meta that belongs to it",
        )
    declared = int(_number(meta, "fileSizeBytes", meta_path, default=str(size)))
    if declared != size:
        raise SessionInputError(
            bin_path,
            f"the meta declares fileSizeBytes={declared} but the file has {size} bytes",
            "copy the .bin again completely, or use the .meta that belongs to it",
        )
    if "fileTimeSecs" in meta:
        seconds = _number(meta, "fileTimeSecs", meta_path, float)
        data_seconds = size / frame / fs
        if abs(seconds - data_seconds) > max(0.01, 1e-4 * seconds):
            raise SessionInputError(
                meta_path,
                f"fileTimeSecs={seconds:g} but the data holds {data_seconds:.3f} s at imSampRate={fs:g} Hz (the sampling rate or the duration in the meta is wrong)",
                RESTORE,
            )
    return size // frame


# ------------------------------------------------------------------------------------------------ one probe
#: What every gate/trigger of a probe must share to be laid out as one recording: (description, value of a segment).
AGREEMENT = (
    ("imDatPrb_sn (the probe's serial number)", lambda s: s.serial),
    ("nSavedChans", lambda s: s.n_channels),
    ("imSampRate", lambda s: s.sampling_frequency),
    ("snsSaveChanSubset", lambda s: s.saved_ids),
    ("µV per bit (gain)", lambda s: s.uv_per_bit),
    ("the AP gain of each channel", lambda s: s.scaling.gains),
    ("imroTbl", lambda s: s.meta.get("imroTbl")),
)


def _check_segments(segments: list[Segment], probe: str) -> None:
    first = segments[0]
    runs = sorted({s.name.run for s in segments})
    if len(runs) > 1:
        raise SessionInputError(
            first.bin_path.parent,
            f"{probe} has files of {len(runs)} runs ({', '.join(runs)}) in one session folder",
            "keep one SpikeGLX run per session folder",
        )
    seen: dict[tuple, Segment] = {}
    for segment in segments:
        key = (segment.name.gate, segment.name.trigger)
        if key in seen:
            _refuse_duplicate(segment, seen[key], probe)
        seen[key] = segment
        for what, value in AGREEMENT:
            if value(segment) != value(first):
                one_gate = segment.name.gate == first.name.gate
                raise SessionInputError(
                    segment.meta_path,
                    f"{what} differs from {first.meta_path.name} ({what} of {probe}'s gates/triggers must agree to "
                    "sort them as one recording)",
                    "put each run in its own session folder"
                    if one_gate
                    else 'sort the gates separately ("split_segments": true in ks_session.json), or put each run in '
                    "its own session folder",
                )


def _refuse_duplicate(segment: Segment, other: Segment, probe: str) -> None:
    """Two files whose metas name the same gate, trigger and probe: copies of one file, or two probes' files."""
    where = f"gate {segment.name.gate} trigger {segment.name.trigger} of {probe}"
    if segment.serial != other.serial:
        raise SessionInputError(
            segment.bin_path,
            f"{where} is also in {other.bin_path} (the metas' fileName says so), but the two files come from "
            f"different probes (imDatPrb_sn {other.serial} and {segment.serial})",
            "put each recording in its own session folder (a fileName edited by hand must keep the probe "
            "SpikeGLX gave the file)",
        )
    raise SessionInputError(
        segment.bin_path,
        f"{where} (probe serial {segment.serial or 'not in the meta'}) is also in {other.bin_path} (the metas' "
        "fileName says so)",
        "keep one copy of each file in the session folder",
    )


@dataclass(frozen=True)
class _Part:
    """A segment partition of a probe split by gate: the files it reads."""

    probe: str
    files: tuple[FileName, ...]


class Reading:
    """One read of a SpikeGLX session folder: every AP meta parsed once, files named as SpikeGLX wrote them, the
    probes listed (see the module docstring) and each probe's recording opened from the cached metas."""

    def __init__(self, session_dir: Path) -> None:
        self.folder = session_dir
        self.headers = HeaderFiles()
        self._metas: dict[Path, Mapping[str, str]] = {}
        raw: dict[str, list[FileName]] = {}
        catgt: dict[str, list[FileName]] = {}
        skipped: list[str] = []
        for path in _binaries(session_dir):
            why = _skipped_kind(path.name)
            if why is not None:
                skipped.append(f"{_relative(path, session_dir)}: {why}")
                continue
            name = self._identify(path)
            (catgt if name.catgt else raw).setdefault(name.probe, []).append(name)
        self._raw = {probe: sorted(names, key=lambda n: n.order) for probe, names in raw.items()}
        self._catgt = {probe: sorted(names, key=lambda n: n.order) for probe, names in catgt.items()}
        probes: dict[str, tuple[Path, ...]] = {}
        for probe in sorted(set(raw) | set(catgt)):
            cat = self._catgt.get(probe, [])
            covered = [n for n in self._raw.get(probe, []) if any(c.covers(n) for c in cat)]
            listed = [*cat, *self.uncovered(probe)] if cat else self._raw[probe]
            probes[probe] = tuple(n.path for n in listed)
            skipped += [
                f"{_relative(n.path, session_dir)}: raw {probe} file superseded by the CatGT output "
                f"{_relative(next(c for c in cat if c.covers(n)).path, session_dir)}"
                for n in covered
            ]
        self.listing = ProbeListing(probes, tuple(skipped))

    # -- reading headers (once each)
    def meta(self, bin_path: Path) -> Mapping[str, str]:
        if bin_path not in self._metas:
            self._metas[bin_path] = parse_meta(meta_path_of(bin_path), self.headers)
        return self._metas[bin_path]

    def _identify(self, path: Path) -> FileName:
        """The file's identity from its meta's ``fileName`` (the name on disk when there is no readable meta yet:
        opening it then reports the meta's problem)."""
        meta_path = path.with_suffix(".meta")
        if not meta_path.is_file():
            return parse_name(path)
        meta = self.meta(path)
        name = parse_name(path, _written_name(meta))
        if name.catgt:
            name = dataclasses.replace(
                name,
                gates=_catgt_range(meta, "catGVals", meta_path),
                triggers=_catgt_range(meta, "catTVals", meta_path),
            )
        return name

    def uncovered(self, probe: str) -> list[FileName]:
        """Raw files of ``probe`` that no CatGT output of it covers (all of them when it has no CatGT output)."""
        cat = self._catgt.get(probe, [])
        return [n for n in self._raw.get(probe, []) if not any(c.covers(n) for c in cat)] if cat else []

    # -- segment partitions
    def _parts(self, probe: str) -> dict[str, _Part]:
        """One part per CatGT output file (``imec0-g0`` or ``imec0-g0to2``) and per raw gate none covers."""
        parts: dict[str, _Part] = {}
        for cat in self._catgt.get(probe, []):
            gates = cat.gates or (cat.gate, cat.gate)
            name = f"{probe}-g{gates[0]}" + ("" if gates[0] == gates[1] else f"to{gates[1]}")
            parts[name] = _Part(probe, (*parts[name].files, cat) if name in parts else (cat,))
        raw = self.uncovered(probe) if self._catgt.get(probe) else self._raw.get(probe, [])
        for name in raw:
            partly = [
                c
                for c in self._catgt.get(probe, [])
                if (c.gates or (c.gate, c.gate))[0] <= name.gate <= (c.gates or (c.gate, c.gate))[1]
            ]
            if partly:
                raise SessionInputError(
                    name.path,
                    f"gate {name.gate} of {probe} is only partly covered by the CatGT output {partly[0].path.name} "
                    f"(catTVals {partly[0].triggers}); this trigger is not in it",
                    "run CatGT again over every trigger of the gate, or move the CatGT output out of the session folder",
                )
            key = f"{probe}-g{name.gate}"
            parts[key] = _Part(probe, (*parts[key].files, name) if key in parts else (name,))
        return dict(sorted(parts.items(), key=lambda item: item[1].files[0].order))

    def split(self, probe: str) -> dict[str, tuple[Path, ...]]:
        """One partition per gate of ``probe`` (its triggers laid out together), CatGT output where it covers the
        gate; for a session config that sets ``split_segments``."""
        return {name: tuple(n.path for n in part.files) for name, part in self._parts(probe).items()}

    def base_probe(self, name: str) -> str | None:
        """The probe a segment partition (``imec0-g1``) belongs to, when the folder has that part."""
        match = _PART_NAME.match(name)
        if match is None or match.group("probe") not in self.listing.probes:
            return None
        return match.group("probe") if name in self._parts(match.group("probe")) else None

    def files_of(self, name: str) -> tuple[Path, ...]:
        base = self.base_probe(name)
        return self.split(base)[name] if base else self.listing.probes[name]

    # -- opening
    def _files(self, name: str) -> list[FileName]:
        base = self.base_probe(name) if name not in self.listing.probes else None
        if base is not None:
            return list(self._parts(base)[name].files)
        cat = self._catgt.get(name, [])
        if not cat:
            return list(self._raw[name])
        uncovered = self.uncovered(name)
        if uncovered:
            listed = ", ".join(_relative(n.path, self.folder) for n in uncovered[:4])
            raise SessionInputError(
                uncovered[0].path,
                f"{len(uncovered)} raw {name} file(s) are not covered by the CatGT output beside them ({listed}); "
                "sorting the CatGT output alone would drop them",
                "run CatGT over every gate and trigger of the run, or sort each gate on its own "
                '("split_segments": true in ks_session.json: CatGT output where it covers a gate, else the raw '
                "files), or move the CatGT output out of the session folder",
            )
        return list(cat)

    def open(self, name: str, options: ReadOptions = ReadOptions()) -> RecordingSource:
        """Describe one probe's (or segment partition's) AP recording, laid out on its acquisition clock."""
        segments = [read_segment(n, self.meta(n.path)) for n in self._files(name)]
        _check_segments(segments, name)
        first = segments[0]
        placements = [
            FilePlacement(s.name.label, s.bin_path, first_sample(s), s.n_samples, f"g{s.name.gate}") for s in segments
        ]
        timeline = tuple(lay_out(placements, first.sampling_frequency, options.max_gap_fill_s))
        date, missing = created_date(first)
        facts = {
            "format": FORMAT,
            "session_dir": self.folder,
            "data_files": tuple(path for s in segments for path in (s.bin_path, s.meta_path)),
            "sampling_frequency": first.sampling_frequency,
            "recording_date": date,
            "missing_date": missing,
            "uv_per_bit": first.uv_per_bit,
            "probe": None,
            "probe_file": first.meta_path,
            "scaling_note": first.scaling.note,
            "probe_name": name,
            "timeline": timeline,
            "headers": self.headers,
            "details": _details(segments, self.listing),
        }
        rescale = first.scaling.rescale
        if len(segments) == 1 and rescale is None:
            return RecordingSource.interleaved_int16(
                first.bin_path, first.n_channels, first.n_samples, first.sorting_channels, **facts
            )
        if len(segments) == 1:
            read_chunk = memmap_int16_reader(first.bin_path, first.n_channels, first.n_samples, first.sorting_channels)
        else:
            files = [(s.bin_path, s.n_channels, s.n_samples) for s in segments]
            read_chunk = timeline_reader(files, timeline, first.sorting_channels)
        return RecordingSource(
            **facts,
            n_channels=first.n_channels,
            n_samples=total_samples(timeline),
            source_dtype="int16",
            sorting_channels=first.sorting_channels,
            read_chunk=read_chunk if rescale is None else RescaledReader(read_chunk, rescale),
            zero_copy_path=None,
        )


def scan(session_dir: Path) -> Reading:
    """Read the folder's SpikeGLX headers once."""
    return Reading(session_dir)


def list_probes(session_dir: Path) -> ProbeListing:
    """The folder's probes (reader only: no session config applied)."""
    return scan(session_dir).listing


def open_recording(
    session_dir: Path, probe: str | None = None, options: ReadOptions = ReadOptions()
) -> RecordingSource:
    """One probe's recording as the files say (reader only: no session config applied; use formats.scan_session)."""
    reading = scan(session_dir)
    name = probe if probe is not None and reading.base_probe(probe) else reading.listing.pick(probe, session_dir)
    return reading.open(name, options)


def created_date(segment: Segment) -> tuple[dt.date | None, MissingDate | None]:
    """``fileCreateTime`` of the meta; never a file's modification time (None and why when the meta has none)."""
    created = segment.meta.get("fileCreateTime")
    if created:
        return parse_recording_date(created, segment.meta_path), None
    return None, MissingDate(
        segment.meta_path,
        "no fileCreateTime in the .meta",
        "add the fileCreateTime=YYYY-MM-DDThh:mm:ss line SpikeGLX wrote",
    )


def _details(segments: list[Segment], listing: ProbeListing) -> dict[str, object]:
    """Gate/trigger of each file, skipped streams, the saved subset, whether it is CatGT output, the probe's serial
    and part number, and how many AP channels have each AP gain."""
    return {
        "gates_triggers": [s.name.label for s in segments],
        "skipped_streams": list(listing.skipped),
        "saved_channels": segments[0].meta.get("snsSaveChanSubset", "all"),
        "catgt": segments[0].name.catgt,
        "probe_serial": segments[0].serial,
        "probe_part_number": segments[0].meta.get("imDatPrb_pn", ""),
        "ap_gains": {f"{gain:g}": n for gain, n in sorted(Counter(segments[0].scaling.gains).items())},
    }

"""SpikeGLX: ``*.ap.bin`` + ``*.ap.meta``; probe and channel map from the meta's imro table."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats.base import ProbeListing, RecordingSource, parse_recording_date

FORMAT = "spikeglx"


def find_files(session_dir: Path) -> list[Path]:
    """The AP band binaries in a session folder (searched recursively, as SpikeGLX nests runs)."""
    return sorted(p for p in session_dir.rglob("*.ap.bin") if p.is_file())


def parse_meta(meta_path: Path) -> dict[str, str]:
    """Parse a ``.meta`` file (``key=value`` lines; imro keys start with ``~``)."""
    if not meta_path.is_file():
        raise SessionInputError(
            meta_path, "the SpikeGLX meta file is missing", "copy the .ap.meta written by SpikeGLX next to the .ap.bin"
        )
    meta: dict[str, str] = {}
    try:
        text = meta_path.read_text(errors="strict")
    except PermissionError:
        raise  # reported by formats.open_recording with the permission fix
    except (UnicodeDecodeError, OSError) as exc:
        raise SessionInputError(meta_path, f"cannot read the meta file ({exc})", "check the file's permissions and that it is text") from exc
    for line in text.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            meta[key.strip().lstrip("~")] = value.strip()
    return meta


def _require(meta: dict[str, str], key: str, meta_path: Path) -> str:
    if key not in meta:
        raise SessionInputError(meta_path, f"the meta file has no {key!r} entry", "use the .meta SpikeGLX wrote for this run")
    return meta[key]


def _number(meta: dict[str, str], key: str, meta_path: Path, kind: type = int, default: str | None = None) -> float:
    """A numeric meta entry; a missing or malformed one is a clear error naming the meta file."""
    text = meta.get(key, default) if default is not None else _require(meta, key, meta_path)
    try:
        return kind(text)
    except ValueError:
        raise SessionInputError(meta_path, f"{key}={text!r} is not a number", "restore the .meta SpikeGLX wrote for this recording") from None


def _saved_channel_ids(meta: dict[str, str], meta_path: Path) -> list[int]:
    subset = meta.get("snsSaveChanSubset", "all")
    counts = [int(c) for c in _require(meta, "snsApLfSy", meta_path).split(",")]
    if subset.strip() == "all":
        return list(range(sum(counts)))
    ids: list[int] = []
    for part in subset.split(","):
        if ":" in part:
            lo, hi = part.split(":")
            ids.extend(range(int(lo), int(hi) + 1))
        else:
            ids.append(int(part))
    return ids


def _ap_gain(meta: dict[str, str]) -> float:
    """AP gain of the first imro entry (NP1.0 stores it per channel; NP2.0 is fixed at 80)."""
    probe_type = meta.get("imDatPrb_type", "0")
    if probe_type not in ("0", "1020", "1030", "1100", "1120", "1121", "1122", "1123", "1200", "1300"):
        return 80.0
    entries = meta.get("imroTbl", "").split(")(")
    if len(entries) > 1:
        fields = entries[1].strip("()").split()
        if len(fields) >= 4:
            return float(fields[3])
    return 500.0


_PROBE_IN_NAME = re.compile(r"\.(imec\d*)\.ap\.bin$")


def list_probes(session_dir: Path) -> ProbeListing:
    """One probe per ``imecN`` of the run (``imec`` for phase 3A files)."""
    probes: dict[str, list[Path]] = {}
    for path in find_files(session_dir):
        match = _PROBE_IN_NAME.search(path.name)
        probes.setdefault(match.group(1) if match else "imec", []).append(path)
    return ProbeListing({name: tuple(paths) for name, paths in probes.items()})


def open_recording(session_dir: Path, probe: str | None = None) -> RecordingSource:
    """Describe one probe's SpikeGLX AP recording in ``session_dir`` and verify it against its meta."""
    listing = list_probes(session_dir)
    name = listing.pick(probe, session_dir)
    bins = listing.probes[name]
    if len(bins) != 1:
        raise SessionInputError(session_dir, f"expected one SpikeGLX .ap.bin for {name}, found {len(bins)}", "keep one gate/trigger per probe")
    bin_path = bins[0]
    meta_path = bin_path.with_suffix(".meta")
    meta = parse_meta(meta_path)
    n_channels = int(_number(meta, "nSavedChans", meta_path))
    fs = _number(meta, "imSampRate" if "imSampRate" in meta else "niSampRate", meta_path, float)
    size = bin_path.stat().st_size
    if size == 0:
        raise SessionInputError(bin_path, "the data file is empty (0 bytes)", "copy the recording again from the rig")
    frame = n_channels * 2
    declared = int(_number(meta, "fileSizeBytes", meta_path, default=str(size)))
    try:
        saved_ids = _saved_channel_ids(meta, meta_path)
    except ValueError:
        raise SessionInputError(meta_path, "snsSaveChanSubset/snsApLfSy are malformed", "restore the .meta SpikeGLX wrote for this recording") from None
    if len(saved_ids) != n_channels:
        raise SessionInputError(
            meta_path,
            f"nSavedChans={n_channels} disagrees with the {len(saved_ids)} channels listed in snsSaveChanSubset/snsApLfSy",
            "restore the .meta SpikeGLX wrote for this recording",
        )
    if size % frame:
        raise SessionInputError(
            bin_path,
            f"size {size} bytes is not a multiple of {n_channels} channels x 2 bytes (truncated copy, or the meta's nSavedChans is wrong)",
            "copy the .bin again completely, or use the .meta that belongs to it",
        )
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
                "restore the .meta SpikeGLX wrote for this recording",
            )
    counts = [int(c) for c in meta["snsApLfSy"].split(",")]
    n_ap_total = counts[0]
    sorting = tuple(i for i, cid in enumerate(saved_ids) if cid < n_ap_total)
    if not sorting:
        raise SessionInputError(meta_path, "no AP channels are saved in this file", "record the AP band (the .ap.bin)")
    max_int = _number(meta, "imMaxInt", meta_path, float, default="512")
    ai_range = _number(meta, "imAiRangeMax", meta_path, float, default="0.6")
    gain = _ap_gain(meta)
    uv_per_bit = ai_range / max_int / gain * 1e6
    created = meta.get("fileCreateTime")
    date = parse_recording_date(created, meta_path) if created else dt.date.fromtimestamp(bin_path.stat().st_mtime)
    n_samples = size // frame
    return RecordingSource.interleaved_int16(
        bin_path,
        n_channels,
        n_samples,
        sorting,
        format=FORMAT,
        session_dir=session_dir,
        data_files=(bin_path, meta_path),
        sampling_frequency=fs,
        recording_date=date,
        uv_per_bit=uv_per_bit,
        probe=None,
        probe_file=meta_path,
        scaling_note=f"imAiRangeMax {ai_range} V / imMaxInt {max_int:g} / AP gain {gain:g} (from meta)",
        probe_name=name,
    )

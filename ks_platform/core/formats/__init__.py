"""Recording formats. Each module offers ``FORMAT``, ``find_files(dir)`` (detection), ``list_probes(dir)``
(a :class:`ProbeListing`) and ``open_recording(dir, probe)`` (one probe's :class:`RecordingSource`)."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path
from types import ModuleType

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import nwb, openephys, plexon, raw_binary, spikeglx
from ks_platform.core.formats.base import ProbeListing, RecordingSource
from ks_platform.core.session_config import ProbeConfig, check_configs_apply, config_files, read_probe_config
from ks_platform.core.store import contained_path

#: Registered readers, in detection order.
READERS: list[ModuleType] = [spikeglx, openephys, nwb, plexon, raw_binary]


def register(reader: ModuleType) -> None:
    """Add a format reader module (``FORMAT``, ``find_files``, ``open_recording``)."""
    if reader not in READERS:
        READERS.append(reader)


def permission_error(path: Path | str | None, fallback: Path) -> SessionInputError:
    """The error for a file or folder the platform's user may not read (EACCES/EPERM)."""
    who = f"uid {os.geteuid()}" if hasattr(os, "geteuid") else "the platform's user"
    target = Path(path) if path else fallback
    return SessionInputError(
        target,
        f"permission denied: the user running the platform ({who}) may not read it",
        f"make it readable for that user (e.g. chmod a+r '{target.name}', and a+rx on its folders) or change its owner",
    )


def _orphan_data_files(session_dir: Path) -> list[Path]:
    return sorted(p for p in session_dir.iterdir() if p.suffix in raw_binary.DATA_SUFFIXES and p.is_file())


#: Names of data files that must be regular files (a folder or a missing file under such a name is a broken copy).
_DATA_FILE_SUFFIXES = (".bin", ".dat", ".raw", ".plx")


def _refuse_missing_data(session_dir: Path) -> None:
    """In a folder no reader recognises: name a data file that is a folder, or a SpikeGLX .meta without its .bin."""
    for path in sorted(session_dir.rglob("*")):
        if path.suffix in _DATA_FILE_SUFFIXES and path.is_dir():
            fix = f"copy the recording file {path.name} itself into the session folder"
            raise SessionInputError(path, "is a folder, not a data file", fix)
        if path.name.endswith(".ap.meta") and path.is_file() and not path.with_suffix(".bin").is_file():
            raise SessionInputError(
                path.with_suffix(".bin"),
                f"the SpikeGLX data file of {path.name} is missing",
                "copy the .ap.bin SpikeGLX wrote next to its .ap.meta (or remove the .meta)",
            )


def detect_format(session_dir: Path) -> ModuleType:
    """The one reader whose files are in ``session_dir``; unknown or mixed folders get a clear error."""
    if not session_dir.is_dir():
        raise SessionInputError(
            session_dir, "the session folder does not exist or is not a folder", "check the landing root"
        )
    try:
        matches = [reader for reader in READERS if reader.find_files(session_dir)]
    except PermissionError as exc:
        raise permission_error(exc.filename, session_dir) from None
    if not matches:
        _refuse_missing_data(session_dir)
        known = ", ".join(r.FORMAT for r in READERS)
        dats = sorted(session_dir.rglob("continuous.dat"))
        if dats:  # <recording>/continuous/<stream>/continuous.dat
            raise SessionInputError(
                dats[0].parents[2] / "structure.oebin",
                f"the Open Ephys structure.oebin is missing (found {dats[0].relative_to(session_dir)} without it)",
                "copy the recording folder again with the structure.oebin the Open Ephys GUI wrote",
            )
        orphans = _orphan_data_files(session_dir)
        if orphans:
            data = orphans[0]
            raise SessionInputError(
                data,
                f"the data file has no sidecar {data.with_suffix('.json').name} (or belongs to no known format: "
                f"{known})",
                f"add {data.with_suffix('.json').name} with sampling_frequency, n_channels and dtype, or the format's "
                "own header/meta files",
            )
        raise SessionInputError(
            session_dir,
            f"no recording of a known format found (known: {known})",
            "add the recording files, or a .bin with a same-name .json sidecar",
        )
    if len(matches) > 1:
        names = ", ".join(r.FORMAT for r in matches)
        raise SessionInputError(
            session_dir, f"the folder mixes recording formats ({names})", "keep one recording format per session folder"
        )
    return matches[0]


def refuse_escaping_links(session_dir: Path) -> None:
    """Every symlink inside the session folder must point inside it (nothing is read from elsewhere).

    A folder that may not be listed is reported (``os.walk`` would skip it silently)."""

    def unreadable(exc: OSError) -> None:
        if isinstance(exc, PermissionError):
            raise permission_error(exc.filename, session_dir) from None

    for folder, dirs, files in os.walk(session_dir, onerror=unreadable):
        for name in dirs + files:
            entry = Path(folder) / name
            mode = entry.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                raise SessionInputError(
                    entry,
                    "is a named pipe, socket or device, not a file (reading it could block forever)",
                    "copy the real file into the session folder, or remove this entry",
                )
            if stat.S_ISLNK(mode):
                try:
                    contained_path(session_dir, entry, "the session folder")
                except (RuntimeError, OSError):  # Python reports a symlink loop as RuntimeError
                    raise SessionInputError(
                        entry,
                        "is a symbolic link that loops (it never reaches a file)",
                        "replace the link by the file it should point to, or remove it",
                    ) from None
                if not entry.exists():
                    raise SessionInputError(
                        entry,
                        f"is a symbolic link to {os.readlink(entry)}, which does not exist",
                        "copy the file itself into the session folder, or fix the link",
                    )


def list_probes(session_dir: Path) -> ProbeListing:
    """The probes in ``session_dir`` (one partition each) and the streams that are skipped, with why."""
    session_dir = Path(session_dir)
    if session_dir.is_dir():
        refuse_escaping_links(session_dir)
    reader = detect_format(session_dir)
    try:
        listing = reader.list_probes(session_dir)
    except PermissionError as exc:
        raise permission_error(exc.filename, session_dir) from None
    if not listing.probes:
        skipped = "; ".join(listing.skipped) or "none"
        raise SessionInputError(
            session_dir,
            f"no probe recording to sort in this {reader.FORMAT} folder (skipped streams: {skipped})",
            "record the wideband/AP band of at least one probe",
        )
    check_configs_apply(session_dir, listing.probes)
    return split_segments(reader, session_dir, listing)


def split_segments(reader: ModuleType, session_dir: Path, listing: ProbeListing) -> ProbeListing:
    """The listing with each probe whose config sets ``split_segments`` replaced by one probe per segment."""
    if not config_files(session_dir):
        return listing
    configs = {
        name: read_probe_config(session_dir, listing.probes, name, check_kilosort=False) for name in listing.probes
    }
    split = [name for name, config in configs.items() if config.split_segments]
    if not split:
        return listing
    if not hasattr(reader, "split_segments"):
        config = configs[split[0]]
        raise SessionInputError(
            config.files[-1],
            f"split_segments is set, but {reader.FORMAT} recordings are not made of segments",
            "remove split_segments",
        )
    probes: dict[str, tuple[Path, ...]] = {}
    split_from: dict[str, str] = {}
    for name, files in listing.probes.items():
        parts = reader.split_segments(name, files) if name in split else {name: files}
        probes.update(parts)
        split_from.update({part: name for part in parts if name in split})
    return ProbeListing(probes, listing.skipped, split_from)


def probe_config(session_dir: Path, probe: str | None = None, check_kilosort: bool = True) -> ProbeConfig:
    """What the session's config files say about one probe (empty when the folder has none)."""
    session_dir = Path(session_dir)
    if not config_files(session_dir):
        return ProbeConfig()
    listing = list_probes(session_dir)
    name = listing.pick(probe, session_dir)
    return read_probe_config(session_dir, listing.probes, name, listing.split_from, check_kilosort)


def _with_config(source: RecordingSource, config: ProbeConfig) -> RecordingSource:
    """The source as the session config amends it (recording date, probe file), noting which files applied."""
    changes: dict[str, object] = {"details": {**source.details, "config_files": [str(p) for p in config.files]}}
    if config.recording_date is not None:
        changes["recording_date"] = config.recording_date
    if config.probe_file is not None:
        changes.update(probe_file=config.probe_file, probe=None)
    return dataclasses.replace(source, **changes)


def open_recording(session_dir: Path, probe: str | None = None) -> RecordingSource:
    """Describe one probe's recording in ``session_dir`` (``probe=None``: the only one), from files inside the folder."""
    session_dir = Path(session_dir)
    if session_dir.is_dir():
        refuse_escaping_links(session_dir)
    reader = detect_format(session_dir)
    try:
        source = reader.open_recording(session_dir, probe)
    except PermissionError as exc:  # a reader met a file it may not open: name that file
        raise permission_error(exc.filename, session_dir) from None
    if session_dir.is_dir() and config_files(session_dir):
        source = _with_config(source, probe_config(session_dir, source.probe_name, check_kilosort=False))
    for path in (*source.data_files, *([source.probe_file] if source.probe_file else [])):
        contained_path(session_dir, path, "the session folder")
        require_readable(path)
    return source


def require_readable(path: Path) -> None:
    """Open ``path`` for reading once (the kernel's check, not ``os.access``), so EACCES is reported up front."""
    try:
        os.close(os.open(path, os.O_RDONLY))
    except PermissionError:
        raise permission_error(path, path) from None


__all__ = ["ProbeListing", "RecordingSource", "detect_format", "list_probes", "open_recording", "register", "READERS"]

"""Recording formats. Each reader module offers ``FORMAT``, ``find_files(dir)`` (detection) and ``scan(dir)``: one
read of the folder's headers, an object with ``listing`` (a :class:`ProbeListing`) and ``open(name, options)`` (one
probe's :class:`RecordingSource`); optionally ``split(name)`` (one probe per segment) and ``base_probe(name)`` /
``files_of(name)`` for names it opens without listing them. ``scan_session`` is the one way in."""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import nwb, openephys, openephys_legacy, plexon, raw_binary, spikeglx
from ks_platform.core.formats.base import MissingDate, ProbeListing, ReadOptions, RecordingSource
from ks_platform.core.session_config import ProbeConfig, SessionConfig, missing_date_error
from ks_platform.core.store import contained_path

#: Registered readers, in detection order.
READERS: list[ModuleType] = [spikeglx, openephys, openephys_legacy, nwb, plexon, raw_binary]


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
_DATA_FILE_SUFFIXES = (".bin", ".dat", ".raw", ".plx", ".pl2")


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
        pl2 = plexon.pl2_files(session_dir)
        if pl2:  # Plexon's newer format: named, with the conversion to do, rather than "no known format"
            raise plexon.pl2_refusal(pl2[0])
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


@dataclass
class SessionScan:
    """One read of a session folder: its format, its probes and skipped streams, its config files; each probe's
    recording is opened from it once (config applied, files checked) and kept.

    Every step and command reads a folder through one scan: the headers are read once per step, and the readers
    never read the session config themselves (what it says reaches them as ``ReadOptions``)."""

    folder: Path
    reader: ModuleType
    reading: Any = field(repr=False)
    listing: ProbeListing
    config: SessionConfig
    _opened: dict[str, RecordingSource] = field(default_factory=dict, repr=False)

    @property
    def format(self) -> str:
        return self.reader.FORMAT

    def pick(self, probe: str | None = None) -> str:
        """The probe name ``probe`` refers to (``None`` only when there is one); a reader may accept names it does
        not list (``imec0-g1``: one gate of imec0)."""
        if probe is not None and probe not in self.listing.probes and hasattr(self.reading, "base_probe"):
            if self.reading.base_probe(probe) is not None:
                return probe
        return self.listing.pick(probe, self.folder)

    def _config_names(self, name: str) -> tuple[dict[str, tuple[Path, ...]], Mapping[str, str]]:
        if name in self.listing.probes:
            return dict(self.listing.probes), self.listing.split_from
        base = self.reading.base_probe(name)
        return {**self.listing.probes, name: self.reading.files_of(name)}, {**self.listing.split_from, name: base}

    def probe_config(self, probe: str | None = None, check_kilosort: bool = True) -> ProbeConfig:
        """What the session's config files say about one probe (empty when the folder has none)."""
        if not self.config.payloads:
            return ProbeConfig()
        name = self.pick(probe)
        probes, split_from = self._config_names(name)
        return self.config.for_probe(probes, name, split_from, check_kilosort)

    def open(self, probe: str | None = None) -> RecordingSource:
        """One probe's recording (``probe=None``: the only one), with the config applied and its files checked."""
        name = self.pick(probe)
        if name not in self._opened:
            config = self.probe_config(name, check_kilosort=False)
            options = ReadOptions(
                **({} if config.max_gap_fill_s is None else {"max_gap_fill_s": config.max_gap_fill_s})
            )
            try:
                source = self.reading.open(name, options)
            except PermissionError as exc:  # a reader met a file it may not open: name that file
                raise permission_error(exc.filename, self.folder) from None
            source = _with_config(source, config)
            for path in dict.fromkeys((*source.data_files, *([source.probe_file] if source.probe_file else []))):
                contained_path(self.folder, path, "the session folder")
                if source.headers is None or source.headers.get(path) is None:  # a header read is a readable one
                    require_readable(path)
            self._opened[name] = source
        return self._opened[name]

    def fresh(self) -> SessionScan:
        """The folder scanned again as it is now (a scan of one file given without a folder is itself)."""
        return self if isinstance(self.reading, _OneSource) else scan_session(self.folder)

    def sources(self) -> list[RecordingSource]:
        """Every listed probe's recording, in name order."""
        return [self.open(name) for name in sorted(self.listing.probes)]


def scan_session(session_dir: Path) -> SessionScan:
    """Read a session folder once: detect its format, list its probes (split as the config says), load its config."""
    session_dir = Path(session_dir)
    if session_dir.is_dir():
        refuse_escaping_links(session_dir)
    reader = detect_format(session_dir)
    try:
        reading = reader.scan(session_dir)
    except PermissionError as exc:
        raise permission_error(exc.filename, session_dir) from None
    listing = reading.listing
    if not listing.probes:
        raise SessionInputError(
            session_dir,
            f"no probe recording to sort in this {reader.FORMAT} folder; it holds: {_holds(listing)}",
            getattr(reader, "NO_PROBE_FIX", "record the wideband/AP band of at least one probe")
            + " (or put this folder outside the landing root)",
        )
    headers = getattr(reading, "headers", None)
    config = SessionConfig.load(session_dir, headers.read if headers is not None else None)
    config.check_apply(listing.probes)
    return SessionScan(
        session_dir, reader, reading, split_segments(reader, reading, session_dir, listing, config), config
    )


@dataclass(frozen=True)
class _OneSource:
    """The reading of a recording described without a session folder (one file given to ``ks-platform sort``)."""

    source: RecordingSource

    @property
    def listing(self) -> ProbeListing:
        return ProbeListing({self.source.probe_name: self.source.data_files})

    def open(self, name: str, options: ReadOptions) -> RecordingSource:
        return self.source


def single_source_scan(source: RecordingSource) -> SessionScan:
    """A scan of one recording described without a session folder (no config files apply to it)."""
    reading = _OneSource(source)
    return SessionScan(source.session_dir, raw_binary, reading, reading.listing, SessionConfig(source.session_dir))


def _holds(listing: ProbeListing) -> str:
    """What a folder without a probe to sort does hold, for the refusal."""
    return "; ".join(listing.skipped) or "no stream at all"


def split_segments(
    reader: ModuleType, reading: Any, session_dir: Path, listing: ProbeListing, config: SessionConfig
) -> ProbeListing:
    """The listing with each probe whose config sets ``split_segments`` replaced by one probe per segment."""
    if not config.payloads:
        return listing
    configs = {name: config.for_probe(listing.probes, name, check_kilosort=False) for name in listing.probes}
    split = [name for name, probe_config in configs.items() if probe_config.split_segments]
    if not split:
        return listing
    if not hasattr(reading, "split"):
        raise SessionInputError(
            configs[split[0]].files[-1],
            f"split_segments is set, but {reader.FORMAT} recordings are not made of segments",
            "remove split_segments",
        )
    probes: dict[str, tuple[Path, ...]] = {}
    split_from: dict[str, str] = {}
    for name, files in listing.probes.items():
        parts = reading.split(name) if name in split else {name: files}
        probes.update(parts)
        split_from.update({part: name for part in parts if name in split})
    split_listing = ProbeListing(probes, listing.skipped, split_from)
    config.check_apply(probes, tuple(sorted(set(split_from.values()))))
    return split_listing


def list_probes(session_dir: Path) -> ProbeListing:
    """The probes in ``session_dir`` (one partition each) and the streams that are skipped, with why."""
    return scan_session(session_dir).listing


def probe_config(session_dir: Path, probe: str | None = None, check_kilosort: bool = True) -> ProbeConfig:
    """What the session's config files say about one probe (empty when the folder has none)."""
    return scan_session(session_dir).probe_config(probe, check_kilosort)


def _with_config(source: RecordingSource, config: ProbeConfig) -> RecordingSource:
    """The source as the session config amends it (recording date, probe file), noting which files applied; a source
    whose files hold no date and no config date is refused here (never a file's modification time)."""
    changes: dict[str, object] = {}
    if config.files:
        changes["details"] = {**source.details, "config_files": [str(p) for p in config.files]}
    if config.recording_date is not None:
        changes["recording_date"] = config.recording_date
    elif source.recording_date is None:
        missing = source.missing_date or MissingDate(source.session_dir, "no date in the recording's files", "")
        raise missing_date_error(missing.path, missing.what, missing.how or "write the date into the recording")
    if config.probe_file is not None:
        changes.update(probe_file=config.probe_file, probe=None)
    return dataclasses.replace(source, **changes) if changes else source


def open_recording(session_dir: Path, probe: str | None = None) -> RecordingSource:
    """Describe one probe's recording in ``session_dir`` (``probe=None``: the only one), from files inside the folder."""
    return scan_session(session_dir).open(probe)


def require_readable(path: Path) -> None:
    """Open ``path`` for reading once (the kernel's check, not ``os.access``), so EACCES is reported up front."""
    try:
        os.close(os.open(path, os.O_RDONLY))
    except PermissionError:
        raise permission_error(path, path) from None


__all__ = [
    "ProbeListing",
    "READERS",
    "RecordingSource",
    "SessionScan",
    "detect_format",
    "list_probes",
    "open_recording",
    "register",
    "scan_session",
    "single_source_scan",
]

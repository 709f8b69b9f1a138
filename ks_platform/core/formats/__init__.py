"""Recording formats. Each module offers ``FORMAT``, ``find_files(dir)`` and ``open_recording(dir)``."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import nwb, openephys, plexon, raw_binary, spikeglx
from ks_platform.core.formats.base import RecordingSource
from ks_platform.core.store import contained_path

#: Registered readers, in detection order.
READERS: list[ModuleType] = [spikeglx, openephys, nwb, plexon, raw_binary]


def register(reader: ModuleType) -> None:
    """Add a format reader module (``FORMAT``, ``find_files``, ``open_recording``)."""
    if reader not in READERS:
        READERS.append(reader)


def detect_format(session_dir: Path) -> ModuleType:
    """The one reader whose files are in ``session_dir``; unknown or mixed folders get a clear error."""
    if not session_dir.is_dir():
        raise SessionInputError(session_dir, "the session folder does not exist or is not a folder", "check the landing root")
    matches = [reader for reader in READERS if reader.find_files(session_dir)]
    if not matches:
        known = ", ".join(r.FORMAT for r in READERS)
        raise SessionInputError(session_dir, f"no recording of a known format found (known: {known})", "add the recording files, or a .bin with a same-name .json sidecar")
    if len(matches) > 1:
        names = ", ".join(r.FORMAT for r in matches)
        raise SessionInputError(session_dir, f"the folder mixes recording formats ({names})", "keep one recording format per session folder")
    return matches[0]


def refuse_escaping_links(session_dir: Path) -> None:
    """Every symlink inside the session folder must point inside it (nothing is read from elsewhere)."""
    for folder, dirs, files in os.walk(session_dir):
        for name in dirs + files:
            entry = Path(folder) / name
            if entry.is_symlink():
                contained_path(session_dir, entry, "the session folder")


def open_recording(session_dir: Path) -> RecordingSource:
    """Detect the format of ``session_dir`` and describe its recording (only from files inside the folder)."""
    session_dir = Path(session_dir)
    if session_dir.is_dir():
        refuse_escaping_links(session_dir)
    source = detect_format(session_dir).open_recording(session_dir)
    for path in (*source.data_files, *([source.probe_file] if source.probe_file else [])):
        contained_path(session_dir, path, "the session folder")
    return source


__all__ = ["RecordingSource", "detect_format", "open_recording", "register", "READERS"]

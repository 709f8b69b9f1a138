"""Recording formats. Each module offers ``FORMAT``, ``find_files(dir)`` and ``open_recording(dir)``."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import nwb, openephys, plexon, raw_binary, spikeglx
from ks_platform.core.formats.base import RecordingSource

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


def open_recording(session_dir: Path) -> RecordingSource:
    """Detect the format of ``session_dir`` and describe its recording."""
    return detect_format(session_dir).open_recording(session_dir)


__all__ = ["RecordingSource", "detect_format", "open_recording", "register", "READERS"]

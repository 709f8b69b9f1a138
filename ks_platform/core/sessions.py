"""Sessions: one probe of one recording, in a folder directly under a landing root.

A session's partition key is ``<recording date>__<landing root name>__<folder name>`` (e.g.
``2026-03-02__rig1__mouse12_g0``): unique, sortable by date, and it carries the date so backfills over
a date range select exactly the sessions recorded then.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

import xxhash

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats.base import RecordingSource
from ks_platform.core.settings import SESSION_SETTINGS_FILE
from ks_platform.core.store import contained_path

KEY_SEPARATOR = "__"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
FINGERPRINT_EDGE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class SessionRef:
    """Identity of a session: landing root, folder and recording date."""

    root: str
    name: str
    date: dt.date

    @property
    def key(self) -> str:
        return KEY_SEPARATOR.join((self.date.isoformat(), self.root, self.name))

    @classmethod
    def parse(cls, key: str) -> SessionRef:
        parts = key.split(KEY_SEPARATOR)
        if len(parts) != 3:
            raise ValueError(f"partition key {key!r} is not <date>__<root>__<session>")
        date_text, root, name = parts
        return cls(root=root, name=name, date=dt.date.fromisoformat(date_text))


def check_name(name: str, path: Path) -> None:
    """Session and root names become partition keys and folder names: letters, digits, ``._-`` only."""
    if not SAFE_NAME.match(name) or KEY_SEPARATOR in name or ".." in name:
        raise SessionInputError(
            path,
            f"the name {name!r} contains characters the platform does not accept (spaces, unicode, '..', '__' or shell characters)",
            "rename the folder using only letters, digits, '.', '_' and '-' (no '__' or '..')",
        )


def session_dir(ref: SessionRef, landing_roots: dict[str, Path]) -> Path:
    """The session folder, resolved inside its landing root (no traversal, no symlink escape)."""
    if ref.root not in landing_roots:
        raise SessionInputError(Path(ref.root), f"no landing root named {ref.root!r} is configured (known: {sorted(landing_roots)})", "add it to the platform's landing_roots config")
    root = Path(landing_roots[ref.root])
    check_name(ref.name, root / ref.name)
    return contained_path(root, root / ref.name)


def candidate_folders(root: Path) -> list[Path]:
    """Folders directly under a landing root (hidden ones skipped)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def fingerprint(source: RecordingSource, include_settings: bool = True) -> str:
    """Cheap content fingerprint: names, sizes, mtimes and the first/last MiB of each data file (+ the settings file).

    It changes when a file is replaced, appended or edited at either end; the full xxh3 checksum of
    the binary is taken during conversion. The sensor includes the settings file (an edited parameter set
    is a changed session to sort again); ``raw_recording``'s data version does not, so that a parameter
    change makes only the sorting stale, not the binary (the parameters have their own asset, ``session_settings``).
    """
    hasher = xxhash.xxh3_128()
    files = list(source.data_files)
    settings = source.session_dir / SESSION_SETTINGS_FILE
    if include_settings and settings.exists():
        files.append(settings)
    for path in files:
        stat = path.stat()
        hasher.update(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
        with open(path, "rb") as handle:
            hasher.update(handle.read(FINGERPRINT_EDGE_BYTES))
            if stat.st_size > 2 * FINGERPRINT_EDGE_BYTES:
                handle.seek(-FINGERPRINT_EDGE_BYTES, 2)
                hasher.update(handle.read(FINGERPRINT_EDGE_BYTES))
    return hasher.hexdigest()

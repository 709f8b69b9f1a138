"""Sessions and probes: the partition key of one probe of one recording in a folder under a landing root.

Key grammar (stable; docs/partition_keys.md): ``<YYYY-MM-DD>__<root>__<session>__<probe>``, e.g.
``2026-03-02__rig1__mouse12_g0__imec0``. Each part is a *key name*: the real name when it is safe
(letters, digits, ``._-``, no ``__`` or ``..``, at most 80 characters, no control character, not ending like a
derived name), else a slug of it plus ``-h`` and 8 hex digits of its hash, so raw folders are never renamed; the real
names are kept in metadata. A name that already ends in ``-h`` + 8 hex digits is derived too: a literal folder
``mouse7-day3-hcf373c60`` and a folder ``mouse7 day3`` (whose derived name that is) get different keys.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

from ks_platform.core.errors import SessionInputError
from ks_platform.core.store import contained_path

if TYPE_CHECKING:  # annotations only: formats.base imports key_name from here
    from ks_platform.core.formats.base import RecordingSource

KEY_SEPARATOR = "__"
KEY_PARTS = ("date", "root", "session", "probe")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+|_{2,}|\.{2,}")
#: The tail every derived key name has: a literal name ending like this would pass for another folder's key name.
DERIVED_TAIL = re.compile(r"-h[0-9a-f]{8}")
FINGERPRINT_EDGE_BYTES = 1024 * 1024


def is_safe_name(name: str) -> bool:
    """A name that can be a key part and a folder name as it is (the whole name: a trailing newline is not safe)."""
    return (
        isinstance(name, str)
        and bool(SAFE_NAME.fullmatch(name))
        and KEY_SEPARATOR not in name
        and ".." not in name
        and not name.endswith(".")
    )


def looks_derived(name: str) -> bool:
    """True for a name ending like a derived key name (``-h`` + 8 hex digits)."""
    return len(name) > 10 and DERIVED_TAIL.fullmatch(name, len(name) - 10) is not None


def key_name(name: str) -> str:
    """``name`` itself when safe, else a readable slug of it plus ``-h<8 hex>`` of its hash (stable, unique).

    A safe name that ends like a derived one is derived as well, so no literal name equals another name's derived
    key name (the derived name of ``a-h0123abcd`` ends in ``-h0123abcd-h<its own hash>``)."""
    if is_safe_name(name) and not looks_derived(name):
        return name
    slug = _UNSAFE_RUN.sub("-", name).strip("-._")[:60] or "x"
    return f"{slug}-h{xxhash.xxh3_64_hexdigest(name.encode('utf-8', 'surrogateescape'))[:8]}"


@dataclass(frozen=True)
class SessionRef:
    """Identity of one probe of a session: landing root, folder key name, recording date and probe key name."""

    root: str
    name: str
    date: dt.date
    probe: str

    @property
    def key(self) -> str:
        return KEY_SEPARATOR.join((self.date.isoformat(), self.root, self.name, self.probe))

    @property
    def session_key(self) -> str:
        """The key of the session all its probes share (``<date>__<root>__<session>``)."""
        return KEY_SEPARATOR.join((self.date.isoformat(), self.root, self.name))

    @classmethod
    def parse(cls, key: str) -> SessionRef:
        """Parse and check a partition key; anything else (traversal, separators, bad date) is refused."""
        parts = key.split(KEY_SEPARATOR) if isinstance(key, str) else []
        if len(parts) != len(KEY_PARTS):
            raise ValueError(f"partition key {key!r} is not <date>__<root>__<session>__<probe>")
        date_text, root, name, probe = parts
        for label, part in zip(KEY_PARTS[1:], (root, name, probe)):
            if not is_safe_name(part):
                raise ValueError(
                    f"partition key {key!r}: its {label} part {part!r} is not a key name (letters, digits, '._-')"
                )
        try:
            date = dt.date.fromisoformat(date_text)
        except ValueError:
            raise ValueError(f"partition key {key!r}: {date_text!r} is not a YYYY-MM-DD date") from None
        if date.isoformat() != date_text:
            raise ValueError(f"partition key {key!r}: {date_text!r} is not a YYYY-MM-DD date")
        return cls(root=root, name=name, date=date, probe=probe)


def parse_partition_key(key: str) -> SessionRef:
    """``SessionRef.parse`` for keys that come from outside (a run, the UI): a bad key is a user error, not a crash."""
    try:
        return SessionRef.parse(key)
    except ValueError as exc:
        raise SessionInputError(
            Path(str(key)),
            f"not a partition key of this platform ({exc})",
            "run only partitions that the sensor or `ks-platform register` added; delete this one from the UI (Partitions) or with `dagster instance`",
        ) from None


def check_name(name: str, path: Path) -> None:
    """Landing root names become key parts as they are: letters, digits, ``._-`` only, no ``__``."""
    if not is_safe_name(name):
        raise SessionInputError(
            path,
            f"the landing root name {name!r} cannot be part of a partition key (spaces, unicode, '..', '__' or shell characters)",
            "name the landing root in KS_PLATFORM_LANDING with letters, digits, '.', '_' and '-' only (the folder itself may keep its name)",
        )


def session_dir(ref: SessionRef, landing_roots: dict[str, Path]) -> Path:
    """The session folder whose key name is ``ref.name``, resolved inside its landing root (no escape).

    A folder named literally like a derived key name is not taken for the folder that name was derived from (its
    own key name differs), and a session folder that is a symlink to a folder inside the root is refused.
    """
    if ref.root not in landing_roots:
        raise SessionInputError(
            Path(ref.root),
            f"no landing root named {ref.root!r} is configured (known: {sorted(landing_roots)})",
            "add it to the platform's landing_roots config",
        )
    root = Path(landing_roots[ref.root])
    direct = root / ref.name
    matches = [direct] if direct.is_dir() and key_name(direct.name) == ref.name else []
    if not matches:
        matches = [folder for folder in candidate_folders(root) if key_name(folder.name) == ref.name]
    if len(matches) > 1:
        names = ", ".join(repr(folder.name) for folder in matches)
        raise SessionInputError(
            root,
            f"the folders {names} share the key name {ref.name!r}",
            "rename one of them (the catalog keeps the first one registered)",
        )
    if matches:
        refuse_linked_session(root, matches[0])
        return contained_path(root, matches[0])
    raise SessionInputError(
        direct,
        "the session folder does not exist (moved, renamed or deleted since it was registered)",
        "put the folder back, or retire the partition",
    )


def refuse_linked_session(root: Path, folder: Path) -> None:
    """Refuse a session folder that is a symlink to a folder inside its own landing root.

    Such a link would give one recording two partitions (the link's and the target's, when the target is a session
    folder itself) and a key that does not match the folder it resolves to. A link to a folder outside the root is
    refused where every path is checked to stay inside its root (``contained_path``).
    """
    if not folder.is_symlink():
        return
    root_resolved = Path(root).resolve()
    target = folder.resolve()
    if target == root_resolved or root_resolved not in target.parents:
        return
    inside = target.relative_to(root_resolved)
    registered = target.parent == root_resolved
    raise SessionInputError(
        folder,
        f"the session folder is a symbolic link to {inside} inside the same landing root; links are not followed "
        "there (one recording would get two keys)",
        f"remove the link: {inside} is registered under its own name"
        if registered
        else f"move the folder {inside} itself to {folder} (replace the link by the folder)",
    )


def candidate_folders(root: Path) -> list[Path]:
    """Folders directly under a landing root (hidden ones skipped)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


#: Blocks read across the middle of a data file besides its first and last MiB (``FINGERPRINT_BLOCK_BYTES`` each).
FINGERPRINT_SAMPLES = 64
FINGERPRINT_BLOCK_BYTES = 16 * 1024


def fingerprint(source: RecordingSource, include_settings: bool = True) -> str:
    """Cheap content fingerprint: names, sizes, mtimes, the first/last MiB of each data file and 64 blocks of 16 KiB
    spread evenly between them (+ the settings files); a folder (Zarr NWB) counts every file inside it.

    It changes when a file is replaced, appended, or edited in place at either end or anywhere the samples reach
    (an edit that keeps size and mtime, as ``rsync --inplace`` leaves it, included, when it covers more than
    1/64 of the file's middle); the full xxh3 checksum of the binary is taken during conversion. The sensor includes
    the session config files (an edited parameter set is a changed session to sort again); ``raw_recording``'s data
    version does not, so that a parameter change makes only the sorting stale, not the binary (the parameters
    have their own asset, ``session_settings``).
    """
    hasher = xxhash.xxh3_128()
    files: list[Path] = []
    for path in source.data_files:
        path = Path(path)
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    if include_settings:
        files.extend(Path(p) for p in source.details.get("config_files", ()))
    for path in files:
        stat = path.stat()
        hasher.update(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
        header = source.headers.get(path) if source.headers is not None else None
        if header is not None:  # a header the scan read: its bytes, not a second read
            hasher.update(header)
            continue
        with open(path, "rb") as handle:
            for offset, length in sample_spans(stat.st_size):
                handle.seek(offset)
                hasher.update(handle.read(length))
    return hasher.hexdigest()


def sample_spans(size: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of what ``fingerprint`` reads of a file of ``size`` bytes: all of it when small, else the
    first and last MiB and ``FINGERPRINT_SAMPLES`` blocks spread evenly between them."""
    edge = FINGERPRINT_EDGE_BYTES
    if size <= 2 * edge + FINGERPRINT_SAMPLES * FINGERPRINT_BLOCK_BYTES:
        return [(0, size)]
    middle = size - 2 * edge - FINGERPRINT_BLOCK_BYTES
    blocks = [
        (edge + middle * (i + 1) // (FINGERPRINT_SAMPLES + 1), FINGERPRINT_BLOCK_BYTES)
        for i in range(FINGERPRINT_SAMPLES)
    ]
    return [(0, edge), *blocks, (size - edge, edge)]

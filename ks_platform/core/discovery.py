"""Find sessions under landing roots and name them (partition keys); bad folders are reported, not fatal."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import open_recording
from ks_platform.core.sessions import SessionRef, candidate_folders, check_name, fingerprint
from ks_platform.core.store import contained_path


@dataclass(frozen=True)
class FoundSession:
    ref: SessionRef
    folder: Path
    fingerprint: str


@dataclass(frozen=True)
class RejectedFolder:
    folder: Path
    reason: str


def identify_session(root_name: str, root: Path, folder: Path) -> FoundSession:
    """Name one landing folder as a session; raises SessionInputError with the reason when it is not one."""
    check_name(folder.name, folder)
    contained_path(root, folder)
    source = open_recording(folder)
    return FoundSession(SessionRef(root_name, folder.name, source.recording_date), folder, fingerprint(source))


def discover(landing_roots: dict[str, Path]) -> tuple[list[FoundSession], list[RejectedFolder]]:
    """Every session folder under every landing root; folders that are not valid sessions are listed with why."""
    found: list[FoundSession] = []
    rejected: list[RejectedFolder] = []
    for name, root in sorted(landing_roots.items()):
        for folder in candidate_folders(Path(root)):
            try:
                found.append(identify_session(name, Path(root), folder))
            except SessionInputError as exc:
                rejected.append(RejectedFolder(folder, str(exc)))
    return found, rejected


def session_keys_in_date_range(keys: Iterable[str], start: dt.date, end: dt.date) -> list[str]:
    """The session partition keys whose recording date lies in ``[start, end]`` (both included), sorted.

    Keys that are not ``<date>__<root>__<folder>`` are ignored: they cannot be sessions of any date.
    """
    if end < start:
        raise ValueError(f"the end date {end} is before the start date {start}")
    selected: list[str] = []
    for key in keys:
        try:
            ref = SessionRef.parse(key)
        except ValueError:
            continue
        if start <= ref.date <= end:
            selected.append(key)
    return sorted(set(selected))

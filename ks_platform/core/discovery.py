"""Find sessions under landing roots and name them (partition keys); bad folders are reported, not fatal."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import scan_session
from ks_platform.core.sessions import SessionRef, candidate_folders, check_name, fingerprint, is_safe_name, key_name
from ks_platform.core.store import contained_path


@dataclass(frozen=True)
class FoundSession:
    """One probe of a landing folder, named as a partition."""

    ref: SessionRef
    folder: Path
    fingerprint: str
    #: The probe's name as the acquisition software wrote it (the key holds ``key_name`` of it).
    probe_name: str = ""
    #: Every probe of the folder and the streams it skips (shared by the folder's partitions).
    session_probes: tuple[str, ...] = ()
    skipped_streams: tuple[str, ...] = ()
    #: The probe's recording summary (``RecordingSource.summary``) as read when it was found.
    summary: dict[str, object] = field(default_factory=dict, compare=False)

    def metadata(self) -> dict[str, object]:
        """Real names and the session's other probes, for the partition's records."""
        return {
            "session_folder": str(self.folder),
            "folder_name": self.folder.name,
            "probe_name": self.probe_name,
            "session_key": self.ref.session_key,
            "session_probes": list(self.session_probes),
            "skipped_streams": list(self.skipped_streams),
        }


@dataclass(frozen=True)
class RejectedFolder:
    folder: Path
    reason: str


def identify_session(root_name: str, root: Path, folder: Path) -> list[FoundSession]:
    """Name each probe of one landing folder as a partition; SessionInputError with the reason when it holds none.

    All probes of a folder are read before any is named, so a folder is registered whole or not at all; they share
    the date of the first probe's recording (a run's probes start together).
    """
    check_name(root_name, root)
    contained_path(root, folder)
    scan = scan_session(folder)
    listing = scan.listing
    sources = scan.sources()
    date = min(source.recording_date for source in sources)  # type: ignore[type-var]  # dated by scan.open
    names = tuple(source.probe_name for source in sources)
    return [
        FoundSession(
            SessionRef(root_name, key_name(folder.name), date, key_name(source.probe_name)),
            folder,
            fingerprint(source),
            source.probe_name,
            names,
            listing.skipped,
            source.summary(),
        )
        for source in sources
    ]


def landing_root_problems(landing_roots: dict[str, Path], store_root: Path | None = None) -> list[str]:
    """What is wrong with the configured landing roots, each with its fix (empty when all are usable)."""
    problems: list[str] = []
    store = Path(store_root).resolve() if store_root is not None else None
    for name, root in sorted(landing_roots.items()):
        root = Path(root)
        where = f"landing root {name}={root}"
        if not is_safe_name(name):
            problems.append(
                f"{where}: the name cannot be part of a partition key (letters, digits, '._-' only, no '__'). Fix: rename it in KS_PLATFORM_LANDING (the folder may keep its name)"
            )
        if not root.exists():
            problems.append(
                f"{where} does not exist: no session can be found there. Fix: create it, mount it, or correct KS_PLATFORM_LANDING"
            )
        elif not root.is_dir():
            problems.append(
                f"{where} is a file, not a folder. Fix: point KS_PLATFORM_LANDING at the folder that holds the session folders"
            )
        elif not os.access(root, os.R_OK | os.X_OK):
            problems.append(
                f"{where} cannot be listed by uid {os.geteuid()}. Fix: give that user read and execute access"
            )
        elif store is not None and (store == root.resolve() or root.resolve() in store.parents):
            problems.append(
                f"the store {store} lies inside {where}: its folders would be taken for sessions. Fix: move the store (KS_PLATFORM_STORE) out of the landing root"
            )
    return problems


def discover(landing_roots: dict[str, Path]) -> tuple[list[FoundSession], list[RejectedFolder]]:
    """Every session folder under every landing root; folders that are not valid sessions are listed with why."""
    found: list[FoundSession] = []
    rejected: list[RejectedFolder] = []
    for name, root in sorted(landing_roots.items()):
        for folder in candidate_folders(Path(root)):
            try:
                found.extend(identify_session(name, Path(root), folder))
            except SessionInputError as exc:
                rejected.append(RejectedFolder(folder, str(exc)))
            except (
                Exception
            ) as exc:  # a reader bug or an input no check foresaw: that folder's report, never the others'
                rejected.append(RejectedFolder(folder, unexpected_error(folder, exc)))
    return found, rejected


def unexpected_error(folder: Path, exc: BaseException) -> str:
    """The report of a folder whose reading failed in a way no check foresaw (names the folder and what to do)."""
    return f"{folder}: unexpected {type(exc).__name__} while reading it ({exc}). Fix: check that the folder holds a complete recording; report the message if it does"


def session_keys_in_date_range(keys: Iterable[str], start: dt.date, end: dt.date) -> list[str]:
    """The session partition keys whose recording date lies in ``[start, end]`` (both included), sorted.

    Keys that are not partition keys (``<date>__<root>__<session>__<probe>``) are ignored: they have no date.
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

"""The catalog: what the landing roots hold, kept incrementally in SQLite under the store root.

One row per landing folder (stat-walk signature, state: ``session`` / ``rejected`` with the reason /
``unreadable``) and one row per partition key (folder, recording date, probe, content fingerprint,
state ``active`` / ``retired`` with the cause, reason and successor key). A refresh costs one ``stat`` walk;
a folder is opened (its data files read) only when it is new or its walk signature changed. Every row
change takes the next value of a catalog-wide sequence, so a reader (the sensor) asks for "what changed
since N". The sensor, ``ks-platform register``/``backfill``/``sessions`` and the rollup share it.

Lifecycle: a partition whose folder vanished is retired (``deleted``), or ``renamed`` when an active
partition elsewhere has the same content fingerprint; a folder whose recomputed keys differ from its
active ones retires the old keys (``re-dated`` when only the date changed, else ``probe gone``); a
folder that stops being a valid session retires its keys (``rejected``). Retired keys' store outputs are
kept and marked with ``RETIRED.json``; a key that becomes valid again is reactivated.

Stored at ``<store>/.catalog/sessions.sqlite`` (WAL; one short transaction per folder). A corrupt catalog
or one of another schema version is rebuilt from the landing roots, with a log line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from ks_platform.core.discovery import FoundSession, identify_session, unexpected_error
from ks_platform.core.errors import SessionInputError
from ks_platform.core.names import CATALOG_DIR, CATALOG_FILE, RETIRED_MARKER
from ks_platform.core.readiness import FolderScan, scan_folder, session_ready
from ks_platform.core.sessions import SessionRef, parse_partition_key, session_dir
from ks_platform.core.store import SessionStore, write_json_atomic

log = logging.getLogger(__name__)

#: Times this close to a walk's start may belong to a change the walk missed: no stamp is kept then.
STAMP_MARGIN_NS = 1_000_000_000

SCHEMA_VERSION = 1
#: Folder states.
SESSION, REJECTED, UNREADABLE = "session", "rejected", "unreadable"
#: Partition states.
ACTIVE, RETIRED = "active", "retired"
#: Why a partition was retired.
DELETED, RENAMED, REDATED, PROBE_GONE, NOT_A_SESSION = "deleted", "renamed", "re-dated", "probe gone", "rejected"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS folders (
    root TEXT NOT NULL, name TEXT NOT NULL, path TEXT NOT NULL, signature TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', seq INTEGER NOT NULL, PRIMARY KEY (root, name));
CREATE TABLE IF NOT EXISTS folder_stamps (
    root TEXT NOT NULL, name TEXT NOT NULL, paths TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (root, name));
CREATE TABLE IF NOT EXISTS partitions (
    key TEXT PRIMARY KEY, root TEXT NOT NULL, folder TEXT NOT NULL, path TEXT NOT NULL,
    recording_date TEXT NOT NULL, probe_name TEXT NOT NULL, fingerprint TEXT NOT NULL, state TEXT NOT NULL,
    cause TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '', successor TEXT,
    changed_at REAL NOT NULL, seq INTEGER NOT NULL, details TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS partitions_by_folder ON partitions (root, folder);
CREATE INDEX IF NOT EXISTS partitions_by_date ON partitions (state, recording_date);
CREATE INDEX IF NOT EXISTS partitions_by_seq ON partitions (seq);
CREATE INDEX IF NOT EXISTS partitions_by_fingerprint ON partitions (fingerprint);
CREATE INDEX IF NOT EXISTS folders_by_seq ON folders (seq);
"""


@dataclass(frozen=True)
class FolderRecord:
    root: str
    name: str
    path: str
    signature: str
    state: str
    reason: str
    seq: int

    @property
    def label(self) -> str:
        return f"{self.root}/{self.name}"


@dataclass(frozen=True)
class PartitionRecord:
    key: str
    root: str
    folder: str
    path: str
    recording_date: str
    probe_name: str
    fingerprint: str
    state: str
    cause: str
    reason: str
    successor: str | None
    changed_at: float
    seq: int
    #: Summary and metadata of the probe as read when it was found (format, size, channels, names...).
    details: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass
class RefreshReport:
    """What one refresh saw and did (the durable changes are in the catalog)."""

    #: ``(root/name, folder path, why)`` of folders that are not complete yet.
    waiting: list[tuple[str, Path, str]] = field(default_factory=list)
    #: Complete folders left for the next refresh (``max_open`` reached).
    deferred: int = 0
    #: ``root/name`` of the folders opened (data files read).
    opened: list[str] = field(default_factory=list)
    #: ``(root/name, message)``: a file vanished or was locked mid-read; tried again next time.
    retry: list[tuple[str, str]] = field(default_factory=list)
    #: ``(folder, reason)`` of incomplete folders opened only to say why they are not sessions (``open_unready``).
    unready_rejected: list[tuple[Path, str]] = field(default_factory=list)
    #: Partitions retired by this refresh.
    retired: list[PartitionRecord] = field(default_factory=list)


@dataclass(frozen=True)
class CatalogChanges:
    """Rows that changed after a sequence number, up to ``upto`` (the reader's next cursor)."""

    partitions: list[PartitionRecord]
    folders: list[FolderRecord]
    upto: int


def catalog_path(store_root: Path) -> Path:
    return Path(store_root) / CATALOG_DIR / CATALOG_FILE


def list_landing_folders(root: Path) -> list[tuple[str, str]] | None:
    """``(name, path)`` of the folders directly under a landing root, by name, hidden ones skipped; None when the
    root itself cannot be listed (missing, a file, no access), so that its sessions are not taken for deleted."""
    try:
        with os.scandir(root) as entries:
            return sorted((e.name, e.path) for e in entries if not e.name.startswith(".") and e.is_dir())
    except OSError:
        return None


class Catalog:
    """The landing roots' catalog in ``<store>/.catalog/sessions.sqlite``; use as a context manager."""

    def __init__(self, store_root: Path) -> None:
        self.store_root = Path(store_root).expanduser().resolve()
        self.path = catalog_path(self.store_root)
        #: Set when the file was unusable and was rebuilt (the caller may log it again).
        self.rebuilt_because: str | None = None
        #: Keys that became active during the current refresh (candidate successors of renamed folders).
        self._appeared: set[str] = set()
        self._db = self._connect()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # --- storage -------------------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = self._open_checked()
        except (sqlite3.DatabaseError, ValueError) as exc:
            self.rebuilt_because = f"{self.path} was unusable ({exc}); rebuilding it from the landing roots"
            log.warning(self.rebuilt_because)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            db = self._open_checked()
        return db

    def _open_checked(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "meta" in tables:
                row = db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
                if row is None or row[0] != str(SCHEMA_VERSION):
                    raise ValueError(f"schema version {row[0] if row else None}, expected {SCHEMA_VERSION}")
                return db
            with _transaction(db):
                for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    db.execute(statement)
                db.executemany(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    [("schema", str(SCHEMA_VERSION)), ("id", uuid.uuid4().hex), ("seq", "0")],
                )
            return db
        except BaseException:
            db.close()
            raise

    def _next_seq(self) -> int:
        value = int(self._db.execute("SELECT value FROM meta WHERE name='seq'").fetchone()[0]) + 1
        self._db.execute("UPDATE meta SET value=? WHERE name='seq'", (str(value),))
        return value

    @property
    def catalog_id(self) -> str:
        """Random id of this catalog file: a rebuilt catalog has another (its sequence restarts)."""
        return self._db.execute("SELECT value FROM meta WHERE name='id'").fetchone()[0]

    @property
    def seq(self) -> int:
        """The sequence number of the latest change."""
        return int(self._db.execute("SELECT value FROM meta WHERE name='seq'").fetchone()[0])

    # --- queries -------------------------------------------------------------------------------------------------

    def folders(self, states: tuple[str, ...] = (SESSION, REJECTED, UNREADABLE)) -> list[FolderRecord]:
        marks = ",".join("?" * len(states))
        rows = self._db.execute(f"SELECT * FROM folders WHERE state IN ({marks}) ORDER BY root, name", states)
        return [FolderRecord(*row) for row in rows]

    def partitions(self, state: str | None = None) -> list[PartitionRecord]:
        """Every partition (or those in ``state``), by key."""
        if state is None:
            return [_partition(row) for row in self._db.execute("SELECT * FROM partitions ORDER BY key")]
        return [
            _partition(r) for r in self._db.execute("SELECT * FROM partitions WHERE state=? ORDER BY key", (state,))
        ]

    def partition(self, key: str) -> PartitionRecord | None:
        row = self._db.execute("SELECT * FROM partitions WHERE key=?", (key,)).fetchone()
        return _partition(row) if row else None

    def active_keys(self, start: dt.date | None = None, end: dt.date | None = None) -> list[str]:
        """Active partition keys, optionally only those recorded from ``start`` to ``end`` (both included)."""
        if start is None or end is None:
            rows = self._db.execute("SELECT key FROM partitions WHERE state=? ORDER BY key", (ACTIVE,))
        else:
            rows = self._db.execute(
                "SELECT key FROM partitions WHERE state=? AND recording_date BETWEEN ? AND ? ORDER BY key",
                (ACTIVE, start.isoformat(), end.isoformat()),
            )
        return [row[0] for row in rows]

    def retired_on(self, date: dt.date) -> list[PartitionRecord]:
        """Retired partitions whose key carries ``date``."""
        rows = self._db.execute(
            "SELECT * FROM partitions WHERE state=? AND recording_date=? ORDER BY key", (RETIRED, date.isoformat())
        )
        return [_partition(row) for row in rows]

    def changes_since(self, after: int, limit: int | None = None) -> CatalogChanges:
        """Partition and folder rows changed after ``after``; at most ``limit`` partitions (the rest come next)."""
        upto = self.seq
        query = "SELECT * FROM partitions WHERE seq > ? ORDER BY seq"
        rows = self._db.execute(query + (f" LIMIT {int(limit) + 1}" if limit is not None else ""), (after,)).fetchall()
        if limit is not None and len(rows) > limit:
            rows = rows[:limit]
            upto = rows[-1][12] if rows else after
        folders = self._db.execute(
            "SELECT * FROM folders WHERE seq > ? AND seq <= ? AND state != ? ORDER BY seq", (after, upto, SESSION)
        )
        return CatalogChanges([_partition(r) for r in rows], [FolderRecord(*r) for r in folders], upto)

    # --- refresh -------------------------------------------------------------------------------------------------

    def refresh(
        self,
        landing_roots: Mapping[str, Path],
        *,
        settle_seconds: float = 0.0,
        marker_name: str | None = None,
        now: float | None = None,
        max_open: int | None = None,
        open_unready: bool = False,
    ) -> RefreshReport:
        """Bring the catalog up to date with the landing roots: one ``stat`` walk, new/changed folders opened.

        ``max_open`` caps the folders opened (the rest are counted in ``deferred``). ``open_unready`` opens folders
        that are not complete yet only to report why they are not sessions (nothing is recorded for them).
        """
        now = time.time() if now is None else now
        report = RefreshReport()
        self._appeared = set()
        known: dict[tuple[str, str], tuple[str, str]] = {
            (root, name): (signature, state)
            for root, name, signature, state in self._db.execute("SELECT root, name, signature, state FROM folders")
        }
        stamps = {
            (root, name): (paths, digest)
            for root, name, paths, digest in self._db.execute("SELECT * FROM folder_stamps")
        }
        listed: set[tuple[str, str]] = set()
        searched_roots: set[str] = set()
        for root_name, root in sorted(landing_roots.items()):
            entries = list_landing_folders(Path(root))
            if entries is None:
                continue  # a root that cannot be listed says nothing about its sessions (reported by the caller)
            searched_roots.add(root_name)
            for name, path in entries:
                listed.add((root_name, name))
                settled = known.get((root_name, name), ("", UNREADABLE))[1] in (SESSION, REJECTED)
                if settled and stamp_unchanged(*stamps.get((root_name, name), ("", ""))):
                    continue  # no file or sub-folder of it changed, appeared or went since its last walk
                self._refresh_folder(
                    root_name,
                    Path(root),
                    name,
                    Path(path),
                    known.get((root_name, name)),
                    now,
                    settle_seconds,
                    marker_name,
                    max_open,
                    open_unready,
                    report,
                )
        for root_name, name in sorted(set(known) - listed):
            if root_name in searched_roots:
                self._vanished(root_name, name, now, report)
        return report

    def _refresh_folder(
        self,
        root_name: str,
        root: Path,
        name: str,
        folder: Path,
        known: tuple[str, str] | None,
        now: float,
        settle_seconds: float,
        marker_name: str | None,
        max_open: int | None,
        open_unready: bool,
        report: RefreshReport,
    ) -> None:
        label = f"{root_name}/{name}"
        started_ns = time.time_ns()
        try:
            scan = scan_folder(folder)
        except PermissionError as exc:
            if known is None or known[1] != UNREADABLE:
                reason = f"cannot list it ({exc.strerror}). Fix: give the Dagster user read access"
                with _transaction(self._db):
                    self._put_folder(root_name, name, folder, "", UNREADABLE, reason)
            return
        except OSError:  # removed or renamed since the listing; the next refresh sees the new state
            return
        stamp = folder_stamp(scan, folder, started_ns - STAMP_MARGIN_NS)
        if known is not None and known[0] == scan.signature and known[1] != UNREADABLE:
            self._put_stamp(root_name, name, stamp)
            return
        ready, why = session_ready(folder, settle_seconds, marker_name, now, scan=scan)
        if not ready and not open_unready:
            report.waiting.append((label, folder, why))
            return
        if max_open is not None and len(report.opened) >= max_open:
            report.deferred += 1
            return
        report.opened.append(label)
        try:
            probes = identify_session(root_name, root, folder)
        except SessionInputError as exc:
            reason = str(exc)
        except OSError as exc:  # a file vanished or is locked mid-read: try again next time
            report.retry.append((label, str(exc)))
            return
        except Exception as exc:  # a reader bug or an input no check foresaw: never stops the other sessions
            reason = unexpected_error(folder, exc)
        else:
            if not ready:
                report.unready_rejected.append(
                    (folder, f"{folder}: not complete yet ({why}). Fix: wait until the copy has finished")
                )
                return
            with _transaction(self._db):
                self._put_folder(root_name, name, folder, scan.signature, SESSION, "")
                self._put_stamp(root_name, name, stamp)
                self._put_session(root_name, name, probes, now, report)
            return
        if not ready:
            report.unready_rejected.append((folder, reason))
            return
        with _transaction(self._db):
            self._put_folder(root_name, name, folder, scan.signature, REJECTED, reason)
            self._put_stamp(root_name, name, stamp)
            for record in self._active_of(root_name, name):
                self._retire(
                    record, NOT_A_SESSION, f"the folder is no longer a valid session: {reason}", None, now, report
                )

    def _put_folder(self, root: str, name: str, path: Path, signature: str, state: str, reason: str) -> None:
        row = self._db.execute("SELECT state, reason FROM folders WHERE root=? AND name=?", (root, name)).fetchone()
        if row is not None and row == (state, reason):  # same report: keep its sequence number (reported once)
            self._db.execute(
                "UPDATE folders SET signature=?, path=? WHERE root=? AND name=?", (signature, str(path), root, name)
            )
            return
        self._db.execute(
            "INSERT OR REPLACE INTO folders VALUES (?, ?, ?, ?, ?, ?, ?)",
            (root, name, str(path), signature, state, reason, self._next_seq()),
        )

    def _put_stamp(self, root: str, name: str, stamp: tuple[str, str]) -> None:
        self._db.execute("INSERT OR REPLACE INTO folder_stamps VALUES (?, ?, ?, ?)", (root, name, *stamp))

    def _active_of(self, root: str, name: str) -> list[PartitionRecord]:
        rows = self._db.execute("SELECT * FROM partitions WHERE root=? AND folder=? AND state=?", (root, name, ACTIVE))
        return [_partition(row) for row in rows]

    def _put_session(self, root: str, name: str, probes: list[FoundSession], now: float, report: RefreshReport) -> None:
        new = {found.ref.key: found for found in probes}
        for record in self._active_of(root, name):
            if record.key in new:
                continue
            old = SessionRef.parse(record.key)
            same_probe = [k for k, f in new.items() if f.ref.probe == old.probe]
            if same_probe:
                successor = same_probe[0]
                self._retire(
                    record, REDATED, f"the recording date is now {new[successor].ref.date}", successor, now, report
                )
            else:
                self._retire(record, PROBE_GONE, "the folder no longer holds this probe", None, now, report)
        for key, found in new.items():
            existing = self.partition(key)
            unchanged = (
                existing is not None
                and existing.state == ACTIVE
                and existing.fingerprint == found.fingerprint
                and existing.path == str(found.folder)
            )
            if unchanged:
                continue
            details = {**found.summary, **found.metadata()}
            self._db.execute(
                "INSERT OR REPLACE INTO partitions VALUES (?, ?, ?, ?, ?, ?, ?, ?, '', '', NULL, ?, ?, ?)",
                (
                    key,
                    root,
                    name,
                    str(found.folder),
                    found.ref.date.isoformat(),
                    found.probe_name,
                    found.fingerprint,
                    ACTIVE,
                    now,
                    self._next_seq(),
                    json.dumps(details, default=str),
                ),
            )
            if existing is not None and existing.state == ACTIVE:
                continue
            self._appeared.add(key)
            if existing is not None:
                SessionStore(self.store_root, key).dir.joinpath(RETIRED_MARKER).unlink(missing_ok=True)
            # A partition retired as deleted whose content appears here under a new key was renamed.
            orphans = self._db.execute(
                "SELECT * FROM partitions WHERE fingerprint=? AND state=? AND cause=? AND key != ?",
                (found.fingerprint, RETIRED, DELETED, key),
            ).fetchall()
            for orphan in map(_partition, orphans):
                self._retire(orphan, RENAMED, f"its folder was renamed to {root}/{name}", key, now, report)

    def _vanished(self, root: str, name: str, now: float, report: RefreshReport) -> None:
        with _transaction(self._db):
            for record in self._active_of(root, name):
                twins = self._db.execute(
                    "SELECT key, root, folder FROM partitions WHERE fingerprint=? AND state=? AND key != ?",
                    (record.fingerprint, ACTIVE, record.key),
                )
                twin = next((row for row in twins if row[0] in self._appeared), None)
                if twin is not None:
                    self._retire(
                        record, RENAMED, f"its folder was renamed to {twin[1]}/{twin[2]}", twin[0], now, report
                    )
                else:
                    self._retire(
                        record, DELETED, f"the folder {root}/{name} was deleted or moved away", None, now, report
                    )
            self._db.execute("DELETE FROM folders WHERE root=? AND name=?", (root, name))
            self._db.execute("DELETE FROM folder_stamps WHERE root=? AND name=?", (root, name))

    def _retire(
        self,
        record: PartitionRecord,
        cause: str,
        reason: str,
        successor: str | None,
        now: float,
        report: RefreshReport,
    ) -> None:
        self._db.execute(
            "UPDATE partitions SET state=?, cause=?, reason=?, successor=?, changed_at=?, seq=? WHERE key=?",
            (RETIRED, cause, reason, successor, now, self._next_seq(), record.key),
        )
        retired = self.partition(record.key)
        report.retired.append(retired)
        mark_retired(self.store_root, retired)
        log.info(f"retired partition {record.key}: {cause}: {reason}" + (f"; now {successor}" if successor else ""))


def folder_stamp(scan: FolderScan, folder: Path, changed_before_ns: int) -> tuple[str, str]:
    """The paths of a walk's folders and files and a digest of their ``stat`` (size, mtime, ctime): a later
    refresh re-stats just these paths instead of walking. Empty when something changed after
    ``changed_before_ns`` (the walk may have missed that change): the next refresh walks again."""
    top = os.fspath(folder)
    paths = [*scan.dirs, *(os.path.join(top, rel) for rel in scan.files)]
    digest = stat_digest(paths, changed_before_ns)
    return ("\n".join(paths), digest) if digest else ("", "")


def stat_digest(paths: list[str], changed_before_ns: int | None = None) -> str:
    """xxh3 of the size, mtime and ctime of each path; empty when one cannot be read (or changed too recently).

    A file added, removed or renamed changes its folder's times; a file written changes its own."""
    digest = xxhash.xxh3_64()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return ""
        if changed_before_ns is not None and max(st.st_mtime_ns, st.st_ctime_ns) >= changed_before_ns:
            return ""
        digest.update(b"%d %d %d;" % (st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return digest.hexdigest()


def stamp_unchanged(paths: str, digest: str) -> bool:
    """True when the stamped folders and files all have the times and sizes they had at their last walk."""
    return bool(digest) and stat_digest(paths.split("\n")) == digest


def mark_retired(store_root: Path, record: PartitionRecord) -> None:
    """Write ``RETIRED.json`` (cause, reason, time, successor) into the key's store folder when it has outputs."""
    folder = SessionStore(Path(store_root), record.key).dir
    if not folder.is_dir():
        return
    write_json_atomic(
        folder / RETIRED_MARKER,
        {
            "key": record.key,
            "cause": record.cause,
            "reason": record.reason,
            "successor": record.successor,
            "retired_at": dt.datetime.fromtimestamp(record.changed_at, dt.UTC).isoformat(timespec="seconds"),
        },
    )


def lookup_partition(store_root: Path, key: str) -> PartitionRecord | None:
    """The catalog's record of ``key``, without creating a catalog; None when there is none or it is unreadable."""
    path = catalog_path(Path(store_root).expanduser().resolve())
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            row = db.execute("SELECT * FROM partitions WHERE key=?", (key,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return _partition(row) if row else None


def current_session_folder(key: str, landing_roots: Mapping[str, Path], store_root: Path) -> Path:
    """The landing folder of ``key``, refusing a key that was retired or no longer matches the folder's recording.

    Reads the folder's recordings (as ``identify_session``): a re-dated folder is refused before anything is sorted.
    When the folder cannot be identified, the folder is returned unchecked for the caller's own reader to report why.
    """
    ref = parse_partition_key(key)
    record = lookup_partition(store_root, key)
    if record is not None and record.state == RETIRED:
        then = f"; its successor is {record.successor}" if record.successor else ""
        raise SessionInputError(
            Path(record.path),
            f"partition {key} was retired ({record.cause}: {record.reason}){then}",
            f"materialize {record.successor} instead; the outputs of {key} are kept in the store"
            if record.successor
            else "nothing to sort under this key; its outputs are kept in the store (`ks-platform sessions --retired`)",
        )
    folder = session_dir(ref, dict(landing_roots))
    try:
        keys = [found.ref.key for found in identify_session(ref.root, Path(landing_roots[ref.root]), folder)]
    except Exception:  # an unreadable probe: the step that reads this probe reports the real problem, file and fix
        return folder
    if key not in keys:
        same_probe = [k for k in keys if SessionRef.parse(k).probe == ref.probe]
        now_is = f"it is now {same_probe[0]} (re-dated)" if same_probe else f"its keys are now {', '.join(keys)}"
        raise SessionInputError(
            folder,
            f"partition {key} no longer matches its folder: {now_is}",
            "run `ks-platform register` (or let the sensor tick) to retire it and add the current key, then sort that one",
        )
    return folder


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _partition(row: tuple) -> PartitionRecord:
    *head, details = row
    return PartitionRecord(*head, details=json.loads(details))

"""The catalog: what the landing roots hold, kept incrementally in SQLite under the store root.

One row per landing folder (stat-walk signature, state: ``session`` / ``rejected`` with the reason /
``unreadable``, since when it is absent) and one row per partition key (folder, recording date, probe, content
fingerprint, state ``active`` / ``retired`` with the cause, reason and successor key). A refresh costs one ``stat``
walk; a folder is opened (its data files read) only when it is new or its walk signature changed, settled folders
that look like recordings first. Every row change takes the next value of a catalog-wide sequence, so a reader (the
sensor) asks for "what changed since N". The sensor, ``ks-platform register``/``backfill``/``sessions`` and the
rollup share it.

Lifecycle, retiring only on evidence: a landing root that is missing, unreadable, empty or lost most of its folders
at once is *unavailable* (reported; nothing in it is retired). A folder absent from an available root is retired
(``deleted``) only once it has been absent for ``retire_after`` seconds (default one day), or at once as ``renamed``
when its content (fingerprint) is active under another key whose folder is present. A folder whose recomputed keys
differ from its active ones retires the old keys (``re-dated`` when only the date changed, ``re-keyed`` when the
folder's key name did, else ``probe gone``); a folder that stops being a valid session retires its keys
(``rejected``). Each reason names its evidence. Retired keys' store outputs are kept and marked with
``RETIRED.json`` (the whole record), and a key that becomes valid again is reactivated.

Stored at ``<store>/.catalog/sessions.sqlite`` (WAL; one short transaction per folder; refreshes take turns through
``flock`` on ``.catalog/.lock``). The catalog is never deleted: a file SQLite's integrity check finds damaged is
kept beside a new one (``sessions.sqlite.damaged-<time>``), and the new one restores every retired record from
the store's ``RETIRED.json`` files before the landing roots are read again. A locked, full or read-only store is one
:class:`SessionInputError` naming the file and the fix; read-only access (``Catalog.open_read_only``) writes nothing.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from ks_platform.core.discovery import FoundSession, identify_session, unexpected_error
from ks_platform.core.errors import PlatformConfigError, SessionInputError
from ks_platform.core.names import CATALOG_DIR, CATALOG_FILE, CATALOG_WAIT_ENV, RETIRE_AFTER_ENV, RETIRED_MARKER
from ks_platform.core.readiness import FUTURE_TOLERANCE_SECONDS, FolderScan, format_duration, scan_folder, session_ready
from ks_platform.core.sessions import SessionRef, key_name, parse_partition_key, refuse_linked_session, session_dir
from ks_platform.core.store import SessionStore, read_json, write_json_atomic

log = logging.getLogger(__name__)

#: Times this close to a walk's start may belong to a change the walk missed: no stamp is kept then.
STAMP_MARGIN_NS = 1_000_000_000

SCHEMA_VERSION = 2
#: Folder states.
SESSION, REJECTED, UNREADABLE = "session", "rejected", "unreadable"
#: Partition states.
ACTIVE, RETIRED = "active", "retired"
#: Why a partition was retired.
DELETED, RENAMED, REDATED, PROBE_GONE, NOT_A_SESSION = "deleted", "renamed", "re-dated", "probe gone", "rejected"
REKEYED = "re-keyed"

#: How long a folder must be absent from an available landing root before its partitions are retired.
RETIRE_AFTER_SECONDS = 86400.0
#: How long a command or a sensor tick waits for the catalog while another one holds it.
WAIT_SECONDS = 60.0
#: A root that lists fewer than this fraction of the session folders present at its last listing lost "most of its
#: folders at once" (junk folders do not count: cleaning them up is no alarm) ...
LOST_FRACTION = 0.5
#: ... when it had at least this many (a smaller root is judged only by being empty).
LOST_MIN_FOLDERS = 4
#: The lock file refreshes take turns on, beside the catalog.
LOCK_FILE = ".lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS folders (
    root TEXT NOT NULL, name TEXT NOT NULL, path TEXT NOT NULL, signature TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', seq INTEGER NOT NULL, absent_since REAL,
    PRIMARY KEY (root, name));
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
CREATE TABLE IF NOT EXISTS pending (root TEXT NOT NULL, name TEXT NOT NULL, signature TEXT NOT NULL,
    since REAL NOT NULL, PRIMARY KEY (root, name));
"""
#: Schema 1 → 2: when a folder went absent, and when a folder dated in the future was first seen as it is.
_MIGRATE_1_TO_2 = """
ALTER TABLE folders ADD COLUMN absent_since REAL;
CREATE TABLE IF NOT EXISTS pending (root TEXT NOT NULL, name TEXT NOT NULL, signature TEXT NOT NULL,
    since REAL NOT NULL, PRIMARY KEY (root, name));
"""
_FOLDER_COLUMNS = "root, name, path, signature, state, reason, seq"


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


@dataclass(frozen=True)
class UnavailableRoot:
    """A landing root that said nothing reliable about its sessions this time: nothing in it was retired."""

    name: str
    path: Path
    why: str
    #: Folders the catalog holds for it (kept as they are).
    kept: int
    #: What to do; None: the fix for a share that is not mounted.
    fix: str | None = None

    @property
    def message(self) -> str:
        fix = self.fix or (
            "mount the share or plug the disk in; if its folders were removed on purpose, run "
            f"`ks-platform register --accept-root {self.name}`"
        )
        return (
            f"landing root {self.name} ({self.path}) is unavailable: {self.why}. Nothing in it was retired "
            f"({self.kept} folder(s) kept as they are). Fix: {fix}"
        )


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
    #: Landing roots that were not searched for absent folders, with why.
    unavailable: list[UnavailableRoot] = field(default_factory=list)
    #: ``(root/name, absent since)`` of folders absent from an available root, not yet for ``retire_after``.
    absent: list[tuple[str, float]] = field(default_factory=list)
    #: ``(root/name, seconds ahead, file)`` of folders with a file dated ahead of this host's clock.
    future: list[tuple[str, float, str]] = field(default_factory=list)
    #: ``(key, cause, reason)`` of partitions that would have been retired but have a run in flight (next time).
    held: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class CatalogChanges:
    """Rows that changed after a sequence number, up to ``upto`` (the reader's next cursor)."""

    partitions: list[PartitionRecord]
    folders: list[FolderRecord]
    upto: int


@dataclass(frozen=True)
class _Candidate:
    """A new or changed folder, walked, waiting to be opened in priority order."""

    root_name: str
    root: Path
    name: str
    folder: Path
    known: tuple[str, str] | None
    scan: FolderScan
    stamp: tuple[str, str]
    ready: bool
    why: str

    @property
    def priority(self) -> tuple:
        """Settled folders that look like recordings first, new before changed, then by root and name."""
        return (not self.ready, not self.scan.looks_like_recording, self.known is not None, self.root_name, self.name)


def catalog_path(store_root: Path) -> Path:
    return Path(store_root) / CATALOG_DIR / CATALOG_FILE


def seconds_from_env(name: str, default: float) -> float:
    """A non-negative number of seconds from the environment variable ``name`` (``default`` when unset)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise PlatformConfigError(f"{name}={text!r} is not a number of seconds (e.g. {default:g})") from None
    if not value >= 0:
        raise PlatformConfigError(f"{name}={text!r} must be a number of seconds ≥ 0")
    return value


def retire_after_from_env() -> float:
    """``KS_PLATFORM_RETIRE_AFTER_SECONDS`` (default one day): how long a folder is absent before it is retired."""
    return seconds_from_env(RETIRE_AFTER_ENV, RETIRE_AFTER_SECONDS)


def list_landing_folders(root: Path) -> list[tuple[str, str]] | None:
    """``(name, path)`` of the folders directly under a landing root, by name, hidden ones skipped; None when the
    root itself cannot be listed (missing, a file, no access), so that its sessions are not taken for deleted."""
    try:
        with os.scandir(root) as entries:
            return sorted((e.name, e.path) for e in entries if not e.name.startswith(".") and e.is_dir())
    except OSError:
        return None


def root_unavailable(listed: int, held: int, sessions_before: int, sessions_now: int) -> str | None:
    """Why a root that lists ``listed`` folders says nothing reliable about absent ones: it is empty while the catalog
    ``held`` folders of it, or it lists ``sessions_now`` of the ``sessions_before`` session folders present at its
    last listing, under ``LOST_FRACTION`` of them (when there were at least ``LOST_MIN_FOLDERS``)."""
    if listed == 0 and held > 0:
        return (
            f"it is empty, and held {held} folder(s) at its last listing (an unmounted network share or an "
            "unplugged disk looks like this)"
        )
    if sessions_before >= LOST_MIN_FOLDERS and sessions_now < sessions_before * LOST_FRACTION:
        return (
            f"it lists {sessions_now} of the {sessions_before} session folders it had at its last listing: most are "
            "gone at once (a partial mount or another disk at the same path looks like this)"
        )
    return None


class Catalog:
    """The landing roots' catalog in ``<store>/.catalog/sessions.sqlite``; use as a context manager.

    ``Catalog(store)`` may write (it creates, migrates or repairs the file); ``Catalog.open_read_only(store)`` never
    writes. ``wait_seconds`` bounds the wait for another process holding it (default ``WAIT_SECONDS``, or
    ``KS_PLATFORM_CATALOG_WAIT_SECONDS``).
    """

    def __init__(self, store_root: Path, *, wait_seconds: float | None = None, _read_only: bool = False) -> None:
        self.store_root = Path(store_root).expanduser().resolve()
        self.path = catalog_path(self.store_root)
        self.wait_seconds = seconds_from_env(CATALOG_WAIT_ENV, WAIT_SECONDS) if wait_seconds is None else wait_seconds
        self.read_only = _read_only
        #: Set when the file was unusable and a new one was started (the caller may log it again).
        self.rebuilt_because: str | None = None
        #: Keys that became active during the current refresh (candidate successors of renamed folders).
        self._appeared: set[str] = set()
        #: Keys with a run queued or running (never retired), and folders to look at again next refresh because a
        #: retirement was held back for one of them.
        self._in_flight: set[str] = set()
        self._recheck: set[tuple[str, str]] = set()
        self._db = self._connect_read_only() if _read_only else self._connect()

    @classmethod
    def open_read_only(cls, store_root: Path, *, wait_seconds: float | None = None) -> Catalog | None:
        """The catalog for reading only (nothing is created, migrated, repaired or locked); None when there is none."""
        if not catalog_path(Path(store_root).expanduser().resolve()).is_file():
            return None
        return cls(store_root, wait_seconds=wait_seconds, _read_only=True)

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # --- storage -------------------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        with self._mapped_errors("create the catalog's folder"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._exclusive(), self._mapped_errors("open the catalog"):
            try:
                if self.path.exists():
                    return self._open_checked()
                self._db = self._open_checked()  # none yet, or deleted: the retired records come back from the store
                restored, unreadable = self._restore_retired()
                if restored or unreadable:
                    self.rebuilt_because = (
                        f"{self.path} did not exist: started a new catalog; {restored} retired partition(s) restored "
                        f"from the store's {RETIRED_MARKER} files{_unreadable(unreadable)}; the landing roots are read"
                    )
                    log.warning(self.rebuilt_because)
                return self._db
            except sqlite3.DatabaseError as exc:
                damage = self._damage(exc)
                if damage is None:
                    raise
            except _ForeignFile as exc:
                damage = str(exc)
            return self._start_over(damage)

    def _open_checked(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.wait_seconds, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if "meta" not in _tables(db):
                with _transaction(db):
                    if "meta" not in _tables(db):  # another process may have created it while this one waited
                        for statement in _statements(_SCHEMA):
                            db.execute(statement)
                        db.executemany(
                            "INSERT OR IGNORE INTO meta VALUES (?, ?)",
                            [("schema", str(SCHEMA_VERSION)), ("id", uuid.uuid4().hex), ("seq", "0")],
                        )
            version = _schema_version(db)
            if version == 1:
                self._migrate_1_to_2(db)
            elif version != SCHEMA_VERSION:
                raise _newer_schema(self.path, version)
            return db
        except BaseException:
            db.close()
            raise

    def _connect_read_only(self) -> sqlite3.Connection:
        """Open without writing: through SQLite's read-only mode while a write-ahead log exists (a writer has it
        open, or one stopped mid-way), else as an immutable file (no ``-wal``/``-shm`` created)."""
        wal = Path(f"{self.path}-wal")
        has_log = wal.is_file() and wal.stat().st_size > 0
        mode = "mode=ro" if has_log else "immutable=1"
        with self._mapped_errors("read the catalog"):
            db = sqlite3.connect(f"file:{self.path}?{mode}", uri=True, timeout=self.wait_seconds)
            try:
                version = _schema_version(db)
                if version not in (1, SCHEMA_VERSION):
                    raise _newer_schema(self.path, version)
                db.execute("SELECT count(*) FROM partitions").fetchone()
            except sqlite3.DatabaseError as exc:
                db.close()
                if _is_damage(exc):
                    raise self._damaged_error(f"{exc}") from None
                raise
            except _ForeignFile as exc:
                db.close()
                raise self._damaged_error(str(exc)) from None
            except BaseException:
                db.close()
                raise
        return db

    def _migrate_1_to_2(self, db: sqlite3.Connection) -> None:
        """Add absence and root bookkeeping; folders whose key name changed under the current rules are walked again."""
        with _transaction(db):
            if _schema_version(db) != 1:
                return
            for statement in _statements(_MIGRATE_1_TO_2):
                db.execute(statement)
            rows = db.execute("SELECT DISTINCT root, folder, key FROM partitions WHERE state=?", (ACTIVE,)).fetchall()
            stale = {(root, folder) for root, folder, key in rows if key.split("__")[2:3] != [key_name(folder)]}
            for root, folder in stale:
                db.execute("UPDATE folders SET signature='' WHERE root=? AND name=?", (root, folder))
                db.execute("DELETE FROM folder_stamps WHERE root=? AND name=?", (root, folder))
            db.execute("UPDATE meta SET value=? WHERE name='schema'", (str(SCHEMA_VERSION),))

    def _damage(self, exc: sqlite3.DatabaseError) -> str | None:
        """What SQLite's integrity check says is wrong with the file after ``exc``; None when it is not damaged."""
        if not _is_damage(exc):
            return None
        return integrity_problem(self.path, self.wait_seconds)

    def _start_over(self, damage: str) -> sqlite3.Connection:
        """Keep the damaged file (and its log) beside a new catalog; restore the retired records into the new one."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        kept = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{self.path}{suffix}").exists():
                os.replace(f"{self.path}{suffix}", f"{kept}{suffix}")
        db = self._open_checked()
        self._db = db
        restored, unreadable = self._restore_retired()
        self.rebuilt_because = (
            f"{self.path} was damaged ({damage}); kept it as {kept.name} and started a new catalog: {restored} retired "
            f"partition(s) restored from the store's {RETIRED_MARKER} files{_unreadable(unreadable)}; the landing "
            "roots are read again"
        )
        log.warning(self.rebuilt_because)
        return db

    def _restore_retired(self) -> tuple[int, list[str]]:
        """Retired records from ``<store>/sessions/*/RETIRED.json`` into this (new) catalog."""
        restored, unreadable = 0, []
        sessions = self.store_root / "sessions"
        markers = sorted(sessions.glob(f"*/{RETIRED_MARKER}")) if sessions.is_dir() else []
        with _transaction(self._db):
            for marker in markers:
                try:
                    record = retired_record_from_marker(marker)
                except (OSError, ValueError, TypeError, KeyError) as exc:
                    unreadable.append(f"{marker} ({exc})")
                    continue
                self._db.execute(
                    "INSERT OR IGNORE INTO partitions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.key,
                        record.root,
                        record.folder,
                        record.path,
                        record.recording_date,
                        record.probe_name,
                        record.fingerprint,
                        RETIRED,
                        record.cause,
                        record.reason,
                        record.successor,
                        record.changed_at,
                        self._next_seq(),
                        json.dumps(record.details, default=str),
                    ),
                )
                restored += 1
        return restored, unreadable

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Take the catalog's lock (``flock`` on ``.catalog/.lock``): one refresh or repair at a time."""
        with self._mapped_errors("open the catalog's lock file"):
            handle = open(self.path.parent / LOCK_FILE, "a+")
        with handle:
            deadline = time.monotonic() + self.wait_seconds
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        handle.seek(0)
                        holder = (handle.read().strip().splitlines() or ["another process"])[-1]
                        raise self._locked_error(f"held by {holder}") from None
                    time.sleep(0.05)
            try:
                try:
                    handle.seek(0)
                    handle.truncate()
                    handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
                    handle.flush()
                except OSError:  # a full store: the holder's name only serves the message of a waiter
                    pass
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @contextmanager
    def _mapped_errors(self, doing: str) -> Iterator[None]:
        """A locked, full, read-only or damaged store becomes one :class:`SessionInputError` naming the fix."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self._storage_error(exc, doing) from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO):
                raise self._storage_error(exc, doing) from None
            raise

    def _storage_error(self, exc: BaseException, doing: str) -> SessionInputError:
        name = getattr(exc, "sqlite_errorname", "") or ""
        code = getattr(exc, "errno", None)
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return self._locked_error(f"SQLite: {exc}")
        if _is_damage(exc):
            return self._damaged_error(str(exc))
        if name.startswith("SQLITE_FULL") or code in (errno.ENOSPC, errno.EDQUOT) or _store_full(self.path.parent):
            return SessionInputError(
                self.path,
                f"the store is full: could not {doing} ({exc}); the catalog was left as it was",
                "free space on the store's disk (or move KS_PLATFORM_STORE to a larger one), then run the command again",
            )
        if code in (errno.EROFS, errno.EACCES, errno.EPERM) or name.startswith(
            ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")
        ):
            where = "the store is read-only" if _read_only_fs(self.path.parent) else "the store cannot be written"
            return SessionInputError(
                self.path,
                f"{where}: could not {doing} ({exc}; uid {os.geteuid()})",
                "remount the store read-write or give that user write access to it (KS_PLATFORM_STORE); "
                "`ks-platform sessions` still lists what the catalog holds",
            )
        return SessionInputError(
            self.path,
            f"could not {doing} ({type(exc).__name__}: {exc})",
            "check the store's disk (dmesg, df) and run the command again; the catalog was left as it was",
        )

    def _locked_error(self, detail: str) -> SessionInputError:
        return SessionInputError(
            self.path,
            f"the landing catalog stayed locked for {self.wait_seconds:g} s ({detail})",
            "wait for the other `ks-platform register`/`backfill` or sensor tick to finish and run the command again; "
            f"if none is running, find the process holding it with `fuser -v {self.path} {self.path.parent / LOCK_FILE}`",
        )

    def _damaged_error(self, detail: str) -> SessionInputError:
        return SessionInputError(
            self.path,
            f"the landing catalog is damaged ({detail})",
            "run `ks-platform register`: it keeps the damaged file beside a new catalog, restores the retired "
            f"partitions from the store's {RETIRED_MARKER} files and reads the landing roots again",
        )

    def _next_seq(self) -> int:
        value = int(self._db.execute("SELECT value FROM meta WHERE name='seq'").fetchone()[0]) + 1
        self._db.execute("UPDATE meta SET value=? WHERE name='seq'", (str(value),))
        return value

    @property
    def catalog_id(self) -> str:
        """Random id of this catalog file: a rebuilt catalog has another (its sequence restarts)."""
        with self._mapped_errors("read the catalog"):
            return self._db.execute("SELECT value FROM meta WHERE name='id'").fetchone()[0]

    @property
    def seq(self) -> int:
        """The sequence number of the latest change."""
        return int(self._db.execute("SELECT value FROM meta WHERE name='seq'").fetchone()[0])

    # --- queries -------------------------------------------------------------------------------------------------

    def folders(self, states: tuple[str, ...] = (SESSION, REJECTED, UNREADABLE)) -> list[FolderRecord]:
        marks = ",".join("?" * len(states))
        with self._mapped_errors("read the catalog"):
            rows = self._db.execute(
                f"SELECT {_FOLDER_COLUMNS} FROM folders WHERE state IN ({marks}) ORDER BY root, name", states
            ).fetchall()
        return [FolderRecord(*row) for row in rows]

    def partitions(self, state: str | None = None) -> list[PartitionRecord]:
        """Every partition (or those in ``state``), by key."""
        with self._mapped_errors("read the catalog"):
            if state is None:
                rows = self._db.execute("SELECT * FROM partitions ORDER BY key").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM partitions WHERE state=? ORDER BY key", (state,)).fetchall()
        return [_partition(row) for row in rows]

    def partition(self, key: str) -> PartitionRecord | None:
        row = self._db.execute("SELECT * FROM partitions WHERE key=?", (key,)).fetchone()
        return _partition(row) if row else None

    def active_keys(self, start: dt.date | None = None, end: dt.date | None = None) -> list[str]:
        """Active partition keys, optionally only those recorded from ``start`` to ``end`` (both included)."""
        with self._mapped_errors("read the catalog"):
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

    def not_complete(
        self, landing_roots: Mapping[str, Path], settle_seconds: float, marker_name: str | None, now: float
    ) -> list[tuple[str, Path, str]]:
        """``(root/name, folder, why)`` of the landing folders a refresh would not record now because they are not
        complete yet (new or changed since they were recorded); a complete one not recorded yet says so. A walk of
        those folders only; writes nothing (works on a catalog opened read-only)."""
        with self._mapped_errors("read the catalog"):
            known = {(r, n): s for r, n, s in self._db.execute("SELECT root, name, state FROM folders")}
            stamps = {(r, n): (p, d) for r, n, p, d in self._db.execute("SELECT * FROM folder_stamps")}
        found = []
        for root_name, root in sorted(landing_roots.items()):
            for name, path in list_landing_folders(Path(root)) or []:
                settled = known.get((root_name, name)) in (SESSION, REJECTED)
                if settled and stamp_unchanged(*stamps.get((root_name, name), ("", ""))):
                    continue
                ready, why = session_ready(Path(path), settle_seconds, marker_name, now)
                if ready and settled:  # recorded; a change is read by the next refresh
                    continue
                if ready:
                    why = f"complete ({why}), not read yet: the next sensor tick or `ks-platform register` reads it"
                found.append((f"{root_name}/{name}", Path(path), why))
        return found

    def changes_since(self, after: int, limit: int | None = None) -> CatalogChanges:
        """Partition and folder rows changed after ``after``; at most ``limit`` partitions (the rest come next)."""
        with self._mapped_errors("read the catalog"):
            upto = self.seq
            query = "SELECT * FROM partitions WHERE seq > ? ORDER BY seq"
            limited = query + (f" LIMIT {int(limit) + 1}" if limit is not None else "")
            rows = self._db.execute(limited, (after,)).fetchall()
            if limit is not None and len(rows) > limit:
                rows = rows[:limit]
                upto = rows[-1][12] if rows else after
            folders = self._db.execute(
                f"SELECT {_FOLDER_COLUMNS} FROM folders WHERE seq > ? AND seq <= ? AND state != ? ORDER BY seq",
                (after, upto, SESSION),
            ).fetchall()
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
        retire_after: float = RETIRE_AFTER_SECONDS,
        accept_roots: Collection[str] = (),
        in_flight: Collection[str] = (),
    ) -> RefreshReport:
        """Bring the catalog up to date with the landing roots: one ``stat`` walk, new/changed folders opened.

        ``max_open`` caps the folders opened (settled ones that look like recordings first; the rest are counted in
        ``deferred``). ``open_unready`` opens folders that are not complete yet only to report why they are not
        sessions (nothing is recorded for them). ``retire_after``: seconds a folder must be absent from an available
        root before its partitions are retired. ``accept_roots``: roots whose listing is taken as it is even when it
        lost most of its folders (their absences start counting), or when the catalog knows them at another path (the
        root moved: its records move with it). ``in_flight``: partition keys with a run queued or running; none of
        them is retired (they are looked at again by the next refresh).

        A configured root whose name the catalog knows at another path belongs to another configuration sharing this
        store: it is reported as unavailable and nothing in it is read, added or retired.
        """
        if self.read_only:
            raise ValueError("a catalog opened read-only cannot be refreshed")
        arguments = (landing_roots, settle_seconds, marker_name, now, max_open, open_unready, retire_after)
        self._in_flight = set(in_flight)
        with self._exclusive(), self._mapped_errors("update the catalog"):
            try:
                return self._refresh(*arguments, set(accept_roots))
            except sqlite3.DatabaseError as exc:
                damage = self._damage(exc)
                if damage is None:
                    raise
                self._db.close()
                self._db = self._start_over(damage)
                return self._refresh(*arguments, set(accept_roots))

    def _refresh(
        self,
        landing_roots: Mapping[str, Path],
        settle_seconds: float,
        marker_name: str | None,
        now: float | None,
        max_open: int | None,
        open_unready: bool,
        retire_after: float,
        accept_roots: set[str],
    ) -> RefreshReport:
        now = time.time() if now is None else now
        report = RefreshReport()
        self._appeared = set()
        self._recheck = set()
        known: dict[tuple[str, str], tuple[str, str]] = {}
        absent_before: set[tuple[str, str]] = set()
        for root, name, signature, state, absent_since in self._db.execute(
            "SELECT root, name, signature, state, absent_since FROM folders"
        ):
            known[(root, name)] = (signature, state)
            if absent_since is not None:
                absent_before.add((root, name))
        stamps = {(r, n): (paths, digest) for r, n, paths, digest in self._db.execute("SELECT * FROM folder_stamps")}
        pending = {(r, n): (sig, since) for r, n, sig, since in self._db.execute("SELECT * FROM pending")}
        listed: set[tuple[str, str]] = set()
        searched_roots: set[str] = set()
        candidates: list[_Candidate] = []
        for root_name, root in sorted(landing_roots.items()):
            root = Path(root)
            held = sum(1 for r, _ in known if r == root_name)
            elsewhere = self._recorded_elsewhere(root_name, root)
            if elsewhere is not None and root_name not in accept_roots:
                report.unavailable.append(_other_configuration(root_name, root, elsewhere, held))
                continue  # not searched: none of its folders is read, added or taken for absent
            if elsewhere is not None:
                self._move_root(root_name, elsewhere, root)
            entries = list_landing_folders(root)
            if entries is None:  # missing, a file or no access: said by the caller's root checks when it matters
                if held:
                    report.unavailable.append(UnavailableRoot(root_name, root, "it cannot be listed", held))
                continue
            listed_here = {name for name, _ in entries}
            present = [n for (r, n), (_, state) in known.items() if r == root_name and state == SESSION]
            present = [n for n in present if (root_name, n) not in absent_before]  # sessions there last time
            still = sum(1 for n in present if n in listed_here)
            why = None if root_name in accept_roots else root_unavailable(len(entries), held, len(present), still)
            if why is not None:
                report.unavailable.append(UnavailableRoot(root_name, root, why, held))
            else:
                searched_roots.add(root_name)
            by_key_name: dict[str, list[str]] = {}
            for name, _ in entries:
                by_key_name.setdefault(key_name(name), []).append(name)
            shared = {name: group for group in by_key_name.values() if len(group) > 1 for name in group}
            returned = [(root_name, name) for name, _ in entries if (root_name, name) in absent_before]
            if returned:
                with _transaction(self._db):
                    self._db.executemany("UPDATE folders SET absent_since=NULL WHERE root=? AND name=?", returned)
            for name, path in entries:
                listed.add((root_name, name))
                if name in shared:
                    others = [other for other in shared[name] if other != name]
                    self._refuse_shared_key(root_name, name, Path(path), others, now, report)
                    continue
                settled = known.get((root_name, name), ("", UNREADABLE))[1] in (SESSION, REJECTED)
                if settled and stamp_unchanged(*stamps.get((root_name, name), ("", ""))):
                    continue  # no file or sub-folder of it changed, appeared or went since its last walk
                folder = (root_name, root, name, Path(path), known.get((root_name, name)))
                candidate = self._examine(*folder, now, settle_seconds, marker_name, open_unready, pending, report)
                if candidate is not None:
                    candidates.append(candidate)
        for candidate in sorted(candidates, key=lambda c: c.priority):
            self._open(candidate, now, max_open, report)
        for root_name, name in sorted(set(known) - listed):
            if root_name in searched_roots:
                self._absent(root_name, name, now, retire_after, report)
        if self._recheck:  # a retirement held back for a run in flight: walk and open these folders again next time
            with _transaction(self._db):
                for root_name, name in sorted(self._recheck):
                    self._db.execute("UPDATE folders SET signature='' WHERE root=? AND name=?", (root_name, name))
                    self._db.execute("DELETE FROM folder_stamps WHERE root=? AND name=?", (root_name, name))
        return report

    def _recorded_elsewhere(self, root_name: str, root: Path) -> Path | None:
        """The folder this catalog's records of ``root_name`` lie in, when it is not ``root``: the root belongs to
        another configuration sharing the store, or it moved."""
        rows = self._db.execute("SELECT path FROM folders WHERE root=?", (root_name,))
        parents = {os.path.dirname(path) for (path,) in rows}
        here = Path(root).resolve()
        for parent in sorted(parents):
            if Path(parent) != here and Path(parent).resolve() != here:
                return Path(parent)
        return None

    def _move_root(self, root_name: str, old: Path, new: Path) -> None:
        """``register --accept-root``: the root moved from ``old`` to ``new``; its records follow it."""
        old_prefix, new_prefix = f"{old}{os.sep}", f"{Path(new)}{os.sep}"
        with _transaction(self._db):
            for table in ("folders", "partitions"):
                self._db.execute(
                    f"UPDATE {table} SET path = ? || substr(path, ?) WHERE root=? AND substr(path, 1, ?) = ?",
                    (new_prefix, len(old_prefix) + 1, root_name, len(old_prefix), old_prefix),
                )
        log.info(f"landing root {root_name} moved from {old} to {new}: its folders' records now point there")

    def _examine(
        self,
        root_name: str,
        root: Path,
        name: str,
        folder: Path,
        known: tuple[str, str] | None,
        now: float,
        settle_seconds: float,
        marker_name: str | None,
        open_unready: bool,
        pending: dict[tuple[str, str], tuple[str, float]],
        report: RefreshReport,
    ) -> _Candidate | None:
        """Walk a new or changed folder; the candidate to open, or None (unchanged, waiting, refused, unreadable)."""
        label = f"{root_name}/{name}"
        if folder.is_symlink():
            try:
                refuse_linked_session(root, folder)
            except SessionInputError as exc:
                try:
                    signature = f"link:{os.readlink(folder)}"
                except OSError:  # removed since the listing: the next refresh sees what is there
                    return None
                if known != (signature, REJECTED):
                    with _transaction(self._db):
                        self._put_folder(root_name, name, folder, signature, REJECTED, str(exc))
                        self._retire_folder(
                            root_name, name, f"the folder is no longer a valid session: {exc}", now, report
                        )
                return None
        started_ns = time.time_ns()
        try:
            scan = scan_folder(folder)
        except PermissionError as exc:
            if known is None or known[1] != UNREADABLE:
                reason = f"cannot list it ({exc.strerror}). Fix: give the Dagster user read access"
                with _transaction(self._db):
                    self._put_folder(root_name, name, folder, "", UNREADABLE, reason)
            return None
        except OSError:  # removed or renamed since the listing; the next refresh sees the new state
            return None
        stamp = folder_stamp(scan, folder, started_ns - STAMP_MARGIN_NS)
        if known is not None and known[0] == scan.signature and known[1] != UNREADABLE:
            with _transaction(self._db):
                self._put_stamp(root_name, name, stamp)
            return None
        first_seen = None
        ahead = scan.latest_change() - now
        if ahead > FUTURE_TOLERANCE_SECONDS:
            report.future.append((label, ahead, scan.newest))
            seen = pending.get((root_name, name))
            first_seen = seen[1] if seen is not None and seen[0] == scan.signature else now
            if first_seen == now:
                with _transaction(self._db):
                    self._db.execute(
                        "INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?)", (root_name, name, scan.signature, now)
                    )
        ready, why = session_ready(folder, settle_seconds, marker_name, now, scan=scan, first_seen=first_seen)
        if not ready and not open_unready:
            report.waiting.append((label, folder, why))
            return None
        return _Candidate(root_name, root, name, folder, known, scan, stamp, ready, why)

    def _open(self, c: _Candidate, now: float, max_open: int | None, report: RefreshReport) -> None:
        """Read a candidate's recordings and record it as a session (its partitions) or as rejected."""
        label = f"{c.root_name}/{c.name}"
        if max_open is not None and len(report.opened) >= max_open:
            report.deferred += 1
            return
        report.opened.append(label)
        try:
            probes = identify_session(c.root_name, c.root, c.folder)
        except SessionInputError as exc:
            reason = str(exc)
        except OSError as exc:  # a file vanished or is locked mid-read: try again next time
            report.retry.append((label, str(exc)))
            return
        except Exception as exc:  # a reader bug or an input no check foresaw: never stops the other sessions
            reason = unexpected_error(c.folder, exc)
        else:
            if not c.ready:
                report.unready_rejected.append(
                    (c.folder, f"{c.folder}: not complete yet ({c.why}). Fix: wait until the copy has finished")
                )
                return
            with _transaction(self._db):
                self._put_folder(c.root_name, c.name, c.folder, c.scan.signature, SESSION, "")
                self._put_stamp(c.root_name, c.name, c.stamp)
                self._db.execute("DELETE FROM pending WHERE root=? AND name=?", (c.root_name, c.name))
                self._put_session(c.root_name, c.name, probes, now, report)
            return
        if not c.ready:
            report.unready_rejected.append((c.folder, reason))
            return
        with _transaction(self._db):
            self._put_folder(c.root_name, c.name, c.folder, c.scan.signature, REJECTED, reason)
            self._put_stamp(c.root_name, c.name, c.stamp)
            self._db.execute("DELETE FROM pending WHERE root=? AND name=?", (c.root_name, c.name))
            self._retire_folder(c.root_name, c.name, f"the folder is no longer a valid session: {reason}", now, report)

    def _put_folder(self, root: str, name: str, path: Path, signature: str, state: str, reason: str) -> None:
        row = self._db.execute("SELECT state, reason FROM folders WHERE root=? AND name=?", (root, name)).fetchone()
        if row is not None and row == (state, reason):  # same report: keep its sequence number (reported once)
            self._db.execute(
                "UPDATE folders SET signature=?, path=?, absent_since=NULL WHERE root=? AND name=?",
                (signature, str(path), root, name),
            )
            return
        self._db.execute(
            "INSERT OR REPLACE INTO folders VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
            (root, name, str(path), signature, state, reason, self._next_seq()),
        )

    def _put_stamp(self, root: str, name: str, stamp: tuple[str, str]) -> None:
        self._db.execute("INSERT OR REPLACE INTO folder_stamps VALUES (?, ?, ?, ?)", (root, name, *stamp))

    def _active_of(self, root: str, name: str) -> list[PartitionRecord]:
        rows = self._db.execute("SELECT * FROM partitions WHERE root=? AND folder=? AND state=?", (root, name, ACTIVE))
        return [_partition(row) for row in rows]

    def _retire_folder(self, root: str, name: str, reason: str, now: float, report: RefreshReport) -> None:
        for record in self._active_of(root, name):
            self._retire(record, NOT_A_SESSION, reason, None, now, report)

    def _refuse_shared_key(
        self, root_name: str, name: str, folder: Path, others: list[str], now: float, report: RefreshReport
    ) -> None:
        """Two folder names of one root give one key name (their hashes' first 8 hex digits agree): neither is
        registered under it, so no recording is ever sorted under the other's key. Re-examined once renamed."""
        shared = key_name(name)
        signature = f"shared key name:{shared}"
        with _transaction(self._db):
            row = self._db.execute("SELECT signature, state FROM folders WHERE root=? AND name=?", (root_name, name))
            if row.fetchone() == (signature, REJECTED):
                return
            named = ", ".join(repr(other) for other in others)
            reason = (
                f"{folder}: its key name {shared!r} is also the key name of {named} in this landing root, so neither is "
                "registered under it. Fix: rename one of the folders (letters, digits, '._-' keep the name as it is)"
            )
            self._put_folder(root_name, name, folder, signature, REJECTED, reason)
            self._db.execute("DELETE FROM folder_stamps WHERE root=? AND name=?", (root_name, name))
            self._retire_folder(root_name, name, f"the folder is no longer a valid session: {reason}", now, report)

    def _put_session(self, root: str, name: str, probes: list[FoundSession], now: float, report: RefreshReport) -> None:
        new = {found.ref.key: found for found in probes}
        for record in self._active_of(root, name):
            if record.key in new:
                continue
            old = SessionRef.parse(record.key)
            same_probe = [k for k, f in new.items() if f.ref.probe == old.probe]
            if not same_probe:
                self._retire(record, PROBE_GONE, "the folder no longer holds this probe", None, now, report)
                continue
            successor = same_probe[0]
            now_ref = new[successor].ref
            if now_ref.date != old.date:
                reason = f"the recording date is now {now_ref.date}"
                self._retire(record, REDATED, reason, successor, now, report)
            else:
                reason = f"the folder's key name is now {now_ref.name!r} (key names of unsafe or derived-looking names)"
                self._retire(record, REKEYED, reason, successor, now, report)
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
                unmark_retired(self.store_root, key)
            # The same content under a key whose folder is gone (retired as deleted, or absent still): renamed.
            orphans = self._db.execute(
                "SELECT p.* FROM partitions p LEFT JOIN folders f ON f.root = p.root AND f.name = p.folder "
                "WHERE p.fingerprint=? AND p.key != ? AND ((p.state=? AND p.cause=?) "
                "OR (p.state=? AND f.absent_since IS NOT NULL))",
                (found.fingerprint, key, RETIRED, DELETED, ACTIVE),
            ).fetchall()
            for orphan in map(_partition, orphans):
                evidence = f"its content (fingerprint {found.fingerprint[:12]}) is now in {root}/{name}"
                self._retire(orphan, RENAMED, f"its folder was renamed to {root}/{name}: {evidence}", key, now, report)

    def _absent(self, root: str, name: str, now: float, retire_after: float, report: RefreshReport) -> None:
        """A known folder missing from an available root: retired on evidence (its content appeared under another key
        in this refresh, or it has been absent for ``retire_after``)."""
        with _transaction(self._db):
            row = self._db.execute("SELECT absent_since FROM folders WHERE root=? AND name=?", (root, name)).fetchone()
            since = now if row is None or row[0] is None else float(row[0])
            if row is not None and row[0] is None:
                self._db.execute("UPDATE folders SET absent_since=? WHERE root=? AND name=?", (now, root, name))
            kept = 0
            for record in self._active_of(root, name):
                twins = self._db.execute(
                    "SELECT key, root, folder FROM partitions WHERE fingerprint=? AND state=? AND key != ?",
                    (record.fingerprint, ACTIVE, record.key),
                )
                twin = next((row for row in twins if row[0] in self._appeared), None)
                if twin is not None:
                    evidence = f"its content (fingerprint {record.fingerprint[:12]}) appeared there as {twin[0]}"
                    reason = f"its folder was renamed to {twin[1]}/{twin[2]}: {root}/{name} went and {evidence}"
                    kept += not self._retire(record, RENAMED, reason, twin[0], now, report)
                elif now - since >= retire_after:
                    first = dt.datetime.fromtimestamp(since, dt.UTC).isoformat(timespec="seconds")
                    reason = (
                        f"the folder {root}/{name} was deleted or moved away: absent from every listing of the "
                        f"available landing root {root} since {first} ({format_duration(now - since)}, retired after "
                        f"{format_duration(retire_after)})"
                    )
                    kept += not self._retire(record, DELETED, reason, None, now, report)
                else:
                    kept += 1
            if kept:
                report.absent.append((f"{root}/{name}", since))
                return
            self._db.execute("DELETE FROM folders WHERE root=? AND name=?", (root, name))
            self._db.execute("DELETE FROM folder_stamps WHERE root=? AND name=?", (root, name))
            self._db.execute("DELETE FROM pending WHERE root=? AND name=?", (root, name))

    def _retire(
        self,
        record: PartitionRecord,
        cause: str,
        reason: str,
        successor: str | None,
        now: float,
        report: RefreshReport,
    ) -> bool:
        """Retire one partition and write its record into the store (``RETIRED.json``), in the caller's transaction;
        False (nothing done, the folder looked at again next time) while the key has a run in flight."""
        if record.key in self._in_flight:
            report.held.append((record.key, cause, reason))
            self._recheck.add((record.root, record.folder))
            log.info(f"partition {record.key} not retired yet ({cause}): a run of it is queued or running")
            return False
        self._db.execute(
            "UPDATE partitions SET state=?, cause=?, reason=?, successor=?, changed_at=?, seq=? WHERE key=?",
            (RETIRED, cause, reason, successor, now, self._next_seq(), record.key),
        )
        retired = self.partition(record.key)
        mark_retired(self.store_root, retired)
        report.retired.append(retired)
        log.info(f"retired partition {record.key}: {cause}: {reason}" + (f"; now {successor}" if successor else ""))
        return True


def _other_configuration(root_name: str, root: Path, elsewhere: Path, held: int) -> UnavailableRoot:
    why = (
        f"this configuration has {root_name}={root}, but this store's catalog holds {root_name}'s folders in {elsewhere} "
        "(another configuration shares the store)"
    )
    fix = (
        f"use the KS_PLATFORM_LANDING of the configuration that has {root_name}={elsewhere}, or give this one its own "
        f"KS_PLATFORM_STORE; if {root_name} moved to {root} for good, run `ks-platform register --accept-root {root_name}`"
    )
    return UnavailableRoot(root_name, root, why, held, fix)


class _ForeignFile(Exception):
    """A SQLite file that is not a catalog of this platform (no schema row)."""


def _tables(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _schema_version(db: sqlite3.Connection) -> int:
    if "meta" not in _tables(db):
        raise _ForeignFile("it holds no catalog (no meta table)")
    row = db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
    if row is None:
        raise _ForeignFile("its meta table has no schema version")
    try:
        return int(row[0])
    except ValueError:
        raise _ForeignFile(f"its schema version {row[0]!r} is not a number") from None


def _newer_schema(path: Path, version: int) -> SessionInputError:
    return SessionInputError(
        path,
        f"the landing catalog has schema version {version}; this ks_platform reads {SCHEMA_VERSION} (and 1)",
        "run the ks_platform version that wrote it, or a newer one; the file is left as it is",
    )


def _unreadable(markers: list[str]) -> str:
    return f"; {len(markers)} could not be read: {', '.join(markers[:3])}" if markers else ""


def _is_damage(exc: BaseException) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def integrity_problem(path: Path, wait_seconds: float = WAIT_SECONDS) -> str | None:
    """What SQLite's ``PRAGMA integrity_check`` finds wrong with a database file; None when it is sound."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=wait_seconds)
        try:
            rows = [row[0] for row in db.execute("PRAGMA integrity_check(5)")]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return f"integrity check: {exc}" if _is_damage(exc) else None
    if rows == ["ok"]:
        return None
    found = [line.strip() for row in rows for line in str(row).splitlines() if line.strip() and "***" not in line]
    return "integrity check: " + "; ".join(found[:3]) + (f"; +{len(found) - 3} more" if len(found) > 3 else "")


def _store_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 64 * 1024
    except OSError:
        return False


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


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
    """Write the whole retired record as ``RETIRED.json`` into the key's store folder (made when there are no outputs
    yet): the outputs are marked, and a new catalog restores the record from it."""
    folder = SessionStore(Path(store_root), record.key).dir
    write_json_atomic(
        folder / RETIRED_MARKER,
        {
            "key": record.key,
            "root": record.root,
            "folder": record.folder,
            "path": record.path,
            "recording_date": record.recording_date,
            "probe_name": record.probe_name,
            "fingerprint": record.fingerprint,
            "cause": record.cause,
            "reason": record.reason,
            "successor": record.successor,
            "changed_at": record.changed_at,
            "retired_at": dt.datetime.fromtimestamp(record.changed_at, dt.UTC).isoformat(timespec="seconds"),
            "details": record.details,
        },
    )


def unmark_retired(store_root: Path, key: str) -> None:
    """Remove a reactivated key's ``RETIRED.json`` (and its store folder when nothing else is in it)."""
    folder = SessionStore(Path(store_root), key).dir
    (folder / RETIRED_MARKER).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # it holds outputs (or is gone)
        pass


def retired_record_from_marker(marker: Path) -> PartitionRecord:
    """The retired record a ``RETIRED.json`` holds (older markers without the folder fields: taken from the key)."""
    payload = read_json(marker)
    key = marker.parent.name
    if not isinstance(payload, dict) or payload.get("key", key) != key:
        raise ValueError(f"it does not describe the key {key}")
    ref = SessionRef.parse(key)
    changed_at = payload.get("changed_at")
    if not isinstance(changed_at, int | float):
        changed_at = dt.datetime.fromisoformat(payload["retired_at"]).timestamp()
    details = payload.get("details")
    return PartitionRecord(
        key=key,
        root=str(payload.get("root") or ref.root),
        folder=str(payload.get("folder") or ref.name),
        path=str(payload.get("path") or ""),
        recording_date=str(payload.get("recording_date") or ref.date.isoformat()),
        probe_name=str(payload.get("probe_name") or ref.probe),
        fingerprint=str(payload.get("fingerprint") or ""),
        state=RETIRED,
        cause=str(payload["cause"]),
        reason=str(payload.get("reason") or ""),
        successor=payload.get("successor") or None,
        changed_at=float(changed_at),
        seq=0,
        details=details if isinstance(details, dict) else {},
    )


def lookup_partition(store_root: Path, key: str) -> PartitionRecord | None:
    """The catalog's record of ``key``, read without writing anything; None when there is no catalog, no record, or
    the catalog cannot be read (the step that reads the recording reports its own problems)."""
    try:
        catalog = Catalog.open_read_only(store_root, wait_seconds=30)
    except SessionInputError:
        return None
    if catalog is None:
        return None
    with catalog:
        try:
            return catalog.partition(key)
        except sqlite3.Error:
            return None


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
        if db.in_transaction:  # SQLite may already have rolled back (e.g. on SQLITE_FULL)
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _partition(row: tuple) -> PartitionRecord:
    *head, details = row
    return PartitionRecord(*head, details=json.loads(details))

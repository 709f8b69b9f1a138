"""Session store layout and atomic writes: nothing half-written ever sits under a final name."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ks_platform.core.names import RUN_ID_ENV

#: A key is one folder name under ``<store>/sessions``: no separators, no ``..``, nothing hidden.
STORE_KEY = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,400}$")
TEMP_MARK = ".tmp-"
OLD_MARK = ".old-"
#: Set by an executor that can lose sight of a running step (SLURM: a node stops answering while its job runs on): the
#: file naming the step's live attempt, and this process's attempt token. A publish by an attempt that is no longer
#: the live one (the executor failed, cancelled or retried it) is refused, so an orphan never replaces outputs.
ATTEMPT_FILE_ENV = "KS_PLATFORM_ATTEMPT_FILE"
ATTEMPT_TOKEN_ENV = "KS_PLATFORM_ATTEMPT_TOKEN"


@dataclass(frozen=True)
class SessionStore:
    """Where one session's outputs live: ``<store_root>/sessions/<partition_key>/<step>``."""

    root: Path
    key: str
    #: Use this folder instead of ``<root>/sessions/<key>`` (``ks-platform sort --out``).
    folder: Path | None = None

    def __post_init__(self) -> None:
        if self.folder is None and not STORE_KEY.match(self.key or ""):
            raise ValueError(
                f"{self.key!r} is not a partition key the store accepts (one folder name of letters, digits, '._-'): "
                "nothing is written for it"
            )

    @classmethod
    def in_folder(cls, folder: Path) -> SessionStore:
        """One session's outputs directly under ``folder`` (outside any store root)."""
        folder = Path(folder).resolve()
        return cls(folder.parent, folder.name, folder)

    @property
    def dir(self) -> Path:
        return self.folder if self.folder is not None else self.root / "sessions" / self.key

    @property
    def raw_manifest(self) -> Path:
        return self.dir / "raw_recording.json"

    @property
    def probe_dir(self) -> Path:
        return self.dir / "probe"

    @property
    def binary_dir(self) -> Path:
        return self.dir / "binary"

    @property
    def sorting_dir(self) -> Path:
        return self.dir / "sorting"

    @property
    def phy_dir(self) -> Path:
        return self.dir / "phy"

    @property
    def metrics_dir(self) -> Path:
        return self.dir / "metrics"

    def compared_dir(self, sorter: str) -> Path:
        """Outputs of a sorter compared with the probe's own sorting: ``sorters/<sorter>/{sorting,phy}``."""
        return self.dir / "sorters" / sorter

    def compared_sorting_dir(self, sorter: str) -> Path:
        return self.compared_dir(sorter) / "sorting"

    def compared_phy_dir(self, sorter: str) -> Path:
        return self.compared_dir(sorter) / "phy"

    @property
    def agreement_dir(self) -> Path:
        """How much the probe's sorters agree (``core/agreement.py``)."""
        return self.dir / "agreement"


#: errno values that mean "the store may not be written here" (not a bad input, not a full disk).
_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


@contextmanager
def store_writes(where: Path) -> Iterator[None]:
    """Turn "the store is read-only / not ours" into one clear error naming the path and the fix."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _READ_ONLY_ERRNOS:
            raise
        from ks_platform.core.errors import SessionInputError

        who = f"uid {os.geteuid()}" if hasattr(os, "geteuid") else "the platform's user"
        raise SessionInputError(
            Path(exc.filename or where),
            f"the store cannot be written ({exc.strerror}; {who})",
            "make the store writable (remount it read-write, or give that user write access to it), "
            "or set KS_PLATFORM_STORE to a writable folder",
        ) from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(parent: Path) -> list[Path]:
    """Delete leftovers of interrupted writes (``.name.tmp-*``/``.name.old-*``) in ``parent``."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        if entry.name.startswith(".") and (TEMP_MARK in entry.name or OLD_MARK in entry.name):
            _remove(entry)
            removed.append(entry)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    libc = _libc()
    if libc is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        return libc
    except (OSError, AttributeError):
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class StaleAttemptError(RuntimeError):
    """This process's step attempt is no longer the live one: it must not publish."""


@contextmanager
def live_attempt(final: Path) -> Iterator[None]:
    """Hold the attempt file (shared ``flock``) while publishing ``final``; refuse unless this attempt is the live one.

    A no-op unless :data:`ATTEMPT_FILE_ENV` and :data:`ATTEMPT_TOKEN_ENV` are set. The executor rewrites the file
    under an exclusive lock when it gives up on an attempt, so a publish either ends before that or is refused.
    """
    path, token = os.environ.get(ATTEMPT_FILE_ENV), os.environ.get(ATTEMPT_TOKEN_ENV)
    if not path or not token:
        yield
        return
    try:
        handle = open(path)  # noqa: SIM115 - held for the whole publish
    except OSError as exc:
        raise StaleAttemptError(
            f"{final}: not published: the attempt file {path} cannot be read ({exc.strerror}), so this step attempt "
            "cannot show it is the live one. Fix: nothing here; the executor's retry or a new run writes this output"
        ) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        live = handle.read().strip()
        if live != token:
            raise StaleAttemptError(
                f"{final}: not published: this step attempt ({token[:12]}) is no longer the live one ({path}: "
                f"{live[:200] or 'empty'}); the executor failed, cancelled or retried it. Fix: nothing here; the "
                "executor's retry or a new run writes this output"
            )
        yield


def replace_path(staged: Path, final: Path) -> None:
    """Move ``staged`` to ``final``: ``final`` is always either the complete old output or the complete new one.

    An existing ``final`` is exchanged with ``staged`` atomically (``RENAME_EXCHANGE``) and the old one, now
    under the staged name, is deleted. Where the kernel cannot exchange, the old output is renamed aside first:
    a crash between the two renames then leaves ``final`` missing (never partial), and the next write of that
    step cleans the aside copy up. Only the live attempt of a step publishes (:func:`live_attempt`).
    """
    with live_attempt(final):
        if final.exists() or final.is_symlink():
            if _exchange(staged, final):
                old = staged
            else:
                old = final.parent / f".{final.name}{OLD_MARK}{uuid.uuid4().hex[:8]}"
                os.rename(final, old)
                os.rename(staged, final)
        else:
            old = None
            os.rename(staged, final)
        _fsync_dir(final.parent)
    if old is not None:
        _remove(old)


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it becomes ``final``, on error it is removed."""
    staged = final.parent / f".{final.name}{TEMP_MARK}{uuid.uuid4().hex[:8]}"
    with store_writes(final.parent):
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final.parent)
        staged.mkdir()
    try:
        yield staged
        replace_path(staged, final)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


@contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling file path; on success it is renamed to ``final``."""
    with store_writes(final.parent):
        final.parent.mkdir(parents=True, exist_ok=True)
    staged = final.parent / f".{final.name}{TEMP_MARK}{uuid.uuid4().hex[:8]}"
    try:
        yield staged
        if staged.exists():
            with open(staged, "rb+") as handle:
                os.fsync(handle.fileno())
        replace_path(staged, final)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` atomically."""
    with atomic_file(path) as staged, store_writes(path.parent):
        staged.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def contained_path(root: Path, candidate: Path, root_label: str = "the configured root") -> Path:
    """Resolve ``candidate`` and refuse it unless it lies inside ``root`` (no traversal, no symlink escape)."""
    root_resolved = Path(root).resolve()
    resolved = Path(candidate).resolve()
    if resolved != root_resolved and root_resolved not in resolved.parents:
        from ks_platform.core.errors import SessionInputError

        raise SessionInputError(
            candidate,
            f"resolves to {resolved}, outside {root_label} {root_resolved}",
            f"keep session files (and what symlinks point to) inside {root_label}",
        )
    return resolved


LOCK_FILE = ".lock"
#: What a lock holder writes into the lock file: ``pid <pid> on <host> (<step>, run <run id or ->)``.
_HOLDER = re.compile(r"^pid (\d+) on (\S+) \((\S+), run (\S+)\)")


def sibling_step(holder: str) -> str | None:
    """The step holding the lock when it is a step of this process's own Dagster run (``KS_PLATFORM_RUN_ID``, set by
    the Dagster layer in every step process), else None."""
    match = _HOLDER.match(holder)
    run = os.environ.get(RUN_ID_ENV)
    if match is None or not run or match.group(4) != run:
        return None
    return match.group(3)


@contextmanager
def session_lock(
    store: SessionStore, log: Callable[[str], None] | None = None, poll_seconds: float = 5.0, step: str = "a step"
) -> Iterator[None]:
    """Hold the session's write lock (``flock`` on ``<session>/.lock``) for one step (``step`` names it to a waiter).

    A second run of the same session waits here, saying so after ``poll_seconds`` and then every minute, until the
    first one's step ends; the kernel releases the lock if its holder dies (even by ``kill -9``), so a crash never
    leaves a stale lock. Steps of one run that write the session at the same time (``probe_map`` and
    ``recording_binary``) take turns too, silently: that wait is part of a normal run. Without ``log`` the wait is
    logged as a warning on the ``ks_platform`` logger (a Dagster-managed logger, so it reaches the run's event log).
    """
    if log is None:
        log = logging.getLogger(__name__).warning
    with store_writes(store.dir):
        store.dir.mkdir(parents=True, exist_ok=True)
        handle = open(store.dir / LOCK_FILE, "a+")
    with handle:
        waited = 0.0
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                said = waited > 0 and (waited - poll_seconds) % 60 < poll_seconds
                if said and sibling_step(holder) is None:
                    log(f"session {store.key} is being written by {holder}; waiting for it ({waited:.0f} s so far)")
                time.sleep(poll_seconds)
                waited += poll_seconds
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(
                f"pid {os.getpid()} on {os.uname().nodename} ({step}, run {os.environ.get(RUN_ID_ENV) or '-'})\n"
            )
            handle.flush()
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

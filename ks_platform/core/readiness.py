"""Is a landing folder a *complete* session yet? And a cheap signature to notice when it changes.

A copy into a landing root takes minutes to hours; a session must not be sorted half-copied. A folder is
ready when

* a **marker** file is configured (e.g. ``.ready`` or ``COPY_DONE``, written by the copy script as its
  last step) and exists directly in the folder; or, with no marker configured,
* nothing under it (files and sub-folders, recursively) has **changed for ``settle_seconds``**.

"Changed" is the newer of a file's mtime and ctime: copy tools that preserve modification times
(``rsync -a``, ``cp -p``, robocopy) give finished files an old mtime, but the kernel still sets the ctime
when the file is written, renamed or re-stamped, and creating or deleting a file changes its folder's
times. On network mounts both times come from the file server's clock, compared here with this host's
clock: keep the settle time well above any clock skew.

A file dated ahead of this host's clock by more than ``FUTURE_TOLERANCE_SECONDS`` (a bad timestamp, a file
server whose clock is far off) says nothing about when the folder last changed: such a folder is reported with how
far ahead it is, and its settle time is counted on this host's clock from when the caller first saw it unchanged
(``first_seen``), so it is neither sorted at once nor kept waiting forever.

Either way a folder holding an in-progress copy (``*.part``, ``*.partial``, ``*.tmp``, ``*.crdownload``,
``*.filepart``, rsync's hidden ``.name.XXXXXX`` temporaries) or no file at all is never ready.

Plain Python, no Dagster: the sensor (``ks_platform.defs.sensors``) walks every landing folder once per
tick (``scan_folder``) and asks ``session_ready`` only about folders that are new or changed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import xxhash

from ks_platform.core.errors import PlatformConfigError
from ks_platform.core.names import MARKER_ENV, SETTLE_ENV

#: Name endings of files that copy tools write while a transfer is still running.
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".filepart", ".!sync", ".inprogress")
#: rsync writes ``.<name>.<6 random letters/digits>`` next to the final name, then renames it. A tail of
#: six lowercase letters (``.notes.backup``) is taken for a word, not for rsync's random suffix.
RSYNC_TEMP = re.compile(r"^\..+\.([A-Za-z0-9]{6})$")
#: A file dated further ahead of this host's clock than this is "from the future" (not ordinary clock skew).
FUTURE_TOLERANCE_SECONDS = 60.0
#: Name endings of the files the recording formats read (only to order the work: the readers decide what is one).
RECORDING_SUFFIXES = (".bin", ".dat", ".raw", ".meta", ".oebin", ".nwb", ".plx", ".continuous", ".zarr")


@dataclass(frozen=True)
class FolderScan:
    """What one ``stat`` walk of a session folder's files tells: its signature and when its files last changed."""

    #: xxh3-64 hex of every file's (relative name, size, mtime_ns, ctime_ns), sorted by name.
    signature: str
    #: Newest mtime/ctime of any file under the folder, in ns since the epoch (0 when there is none).
    latest_file_change_ns: int
    #: Relative names of the files (``sub/name``), in walk order.
    files: tuple[str, ...]
    #: The folder and its sub-folders (absolute paths); their times are read only when readiness is asked.
    dirs: tuple[str, ...]
    #: Relative name of the file with the newest mtime/ctime ("" when there is none).
    newest: str = ""

    @property
    def looks_like_recording(self) -> bool:
        """True when a file or sub-folder has a name ending a recording format reads (a cheap hint, no file opened)."""
        names = (*self.files, *(os.path.basename(d) for d in self.dirs[1:]))
        return any(name.lower().endswith(RECORDING_SUFFIXES) for name in names)

    @property
    def in_progress(self) -> tuple[str, ...]:
        """Relative names of files that look like a copy still in progress."""
        return tuple(sorted(rel for rel in self.files if is_partial_copy(rel.rpartition("/")[2])))

    def latest_change(self) -> float:
        """Newest mtime/ctime (seconds since the epoch) of the folder, its sub-folders and its files.

        The folders' own times matter: deleting or renaming a file changes only its folder's times.
        """
        latest = self.latest_file_change_ns
        for path in self.dirs:
            try:
                st = os.stat(path)
            except OSError:
                continue
            latest = max(latest, st.st_mtime_ns, st.st_ctime_ns)
        return latest / 1e9


def is_partial_copy(name: str) -> bool:
    """True for the temporary names copy tools use before the final rename."""
    if name.lower().endswith(PARTIAL_SUFFIXES):
        return True
    match = RSYNC_TEMP.match(name) if name.startswith(".") else None
    return bool(match) and not match.group(1).islower()


def scan_folder(folder: Path) -> FolderScan:
    """One recursive ``stat`` walk of the files under ``folder`` (``os.scandir``; no file is opened).

    One ``stat`` per file; sub-folders are recognised from the directory entries (no ``stat``) and not
    followed through symlinks. Raises ``FileNotFoundError``/``NotADirectoryError`` when ``folder`` itself
    is gone. A sub-folder or file that vanishes or cannot be read during the walk is recorded in the
    signature as such (so the signature changes, and the recording reader reports the real problem
    later); it never aborts the walk.
    """
    top = os.fspath(folder)
    entries: list[tuple] = []
    dirs = [top]
    latest = 0
    newest = ""
    stack = [(top, "")]
    while stack:
        path, prefix = stack.pop()
        try:
            iterator = os.scandir(path)
        except OSError as exc:
            if not prefix:
                raise
            entries.append((prefix, "unreadable", exc.errno))
            continue
        with iterator:
            for entry in iterator:
                rel = prefix + entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        dirs.append(entry.path)
                        stack.append((entry.path, rel + "/"))
                        continue
                    st = entry.stat()
                except OSError:  # vanished between listing and stat, or a dangling symlink
                    entries.append((rel, "gone"))
                    continue
                mtime, ctime = st.st_mtime_ns, st.st_ctime_ns
                if mtime > latest or ctime > latest:
                    latest, newest = max(mtime, ctime, latest), rel
                entries.append((rel, st.st_size, mtime, ctime))
    entries.sort()
    signature = xxhash.xxh3_64_hexdigest(repr(entries).encode("utf-8", "surrogateescape"))
    files = tuple(e[0] for e in entries if len(e) == 4)
    return FolderScan(signature, latest, files, tuple(dirs), newest)


def fast_folder_signature(folder: Path) -> str:
    """Cheap signature of a folder's content: names, sizes, mtimes and ctimes of all files (no reads).

    Any copy, append, edit, touch, rename, addition or deletion under the folder changes it.
    """
    return scan_folder(folder).signature


def session_ready(
    folder: Path,
    settle_seconds: float,
    marker_name: str | None,
    now: float,
    *,
    scan: FolderScan | None = None,
    first_seen: float | None = None,
) -> tuple[bool, str]:
    """``(ready, reason)`` for a landing folder (see the module docstring for the rules).

    ``now`` is seconds since the epoch (``time.time()``); ``scan`` reuses a walk already made. ``first_seen`` is when
    the caller first saw the folder as it is now (same walk signature); it times folders whose files are dated in
    the future (``now`` when not given). ``settle_seconds <= 0`` means "ready as soon as it is complete-looking"
    (tests, trusted atomic moves).
    """
    folder = Path(folder)
    if scan is None:
        try:
            scan = scan_folder(folder)
        except (FileNotFoundError, NotADirectoryError):
            return False, "the folder no longer exists"
    if not scan.files:
        return False, "the folder is empty"
    in_progress = scan.in_progress
    if in_progress:
        more = f" (+{len(in_progress) - 1} more)" if len(in_progress) > 1 else ""
        return False, f"a copy is still in progress: {in_progress[0]}{more}"
    if marker_name:
        if (folder / marker_name).is_file():
            return True, f"marker {marker_name!r} present"
        return False, f"waiting for the marker file {marker_name!r}"
    latest = scan.latest_change()
    ahead = latest - now
    if ahead > FUTURE_TOLERANCE_SECONDS:
        quiet = max(now - (now if first_seen is None else first_seen), 0.0)
        dated = f"{scan.newest or 'a file'} is dated {format_duration(ahead)} ahead of this host's clock"
        if settle_seconds <= 0 or quiet >= settle_seconds:
            return True, f"{dated}; unchanged for {quiet:.0f} s by this host's clock (settle time {settle_seconds:g} s)"
        return False, (
            f"{dated} (a bad timestamp or the file server's clock); waiting until it has been unchanged for "
            f"{settle_seconds:g} s by this host's clock ({quiet:.0f} s so far)"
        )
    age = now - latest
    if settle_seconds <= 0 or age >= settle_seconds:
        return True, f"unchanged for {max(age, 0.0):.0f} s (settle time {settle_seconds:g} s)"
    return False, f"changed {max(age, 0.0):.0f} s ago; waiting until it has been unchanged for {settle_seconds:g} s"


def format_duration(seconds: float) -> str:
    """A rough human length of time: ``45 s``, ``12 min``, ``5.0 h``, ``3.2 days``, ``74.1 years``."""
    for unit, size, shown_from in (("years", 365.25 * 86400, 1), ("days", 86400, 2), ("h", 3600, 2)):
        if seconds >= size * shown_from:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


#: Seconds without a change after which a landing folder counts as complete (``KS_PLATFORM_SETTLE_SECONDS``).
DEFAULT_SETTLE_SECONDS = 120.0


def settle_seconds_from_env() -> float:
    """``KS_PLATFORM_SETTLE_SECONDS`` (default 120)."""
    text = os.environ.get(SETTLE_ENV, "").strip()
    if not text:
        return DEFAULT_SETTLE_SECONDS
    try:
        value = float(text)
    except ValueError:
        raise PlatformConfigError(f"{SETTLE_ENV}={text!r} is not a number of seconds (e.g. 120)") from None
    if value < 0:
        raise PlatformConfigError(f"{SETTLE_ENV}={text!r} must be ≥ 0")
    return value


def marker_from_env() -> str | None:
    """``KS_PLATFORM_READY_MARKER`` (unset: the settle time decides)."""
    return check_marker(os.environ.get(MARKER_ENV, "").strip() or None)


def check_marker(marker: str | None) -> str | None:
    """A ready marker must be a plain file name in the session folder."""
    if marker and (os.sep in marker or "/" in marker or marker in (".", "..")):
        raise PlatformConfigError(
            f"ready marker {marker!r} must be a plain file name inside the session folder (e.g. .ready)"
        )
    return marker or None

"""Every landing folder that is not a partition, with why: the one place a person looks for a session that did not
come in (the ``landing_folders`` asset in the UI, ``ks-platform sessions --rejected``).

Rejected and unreadable folders come from the catalog (kept there as long as the folder is there, whatever the
sensor's tick retention); folders that are not complete yet come from the refresh that saw them (the sensor) or from a
read-only walk (the CLI). Each row says the folder, its state, the problem, the file the problem is in and the fix.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import xxhash

from ks_platform.core.catalog import FolderRecord

#: Rows of each kind the UI's markdown shows (the CLI lists them all).
SHOWN_ROWS = 100
WAITING = "waiting"


@dataclass(frozen=True)
class FolderReport:
    """One landing folder that is not a partition."""

    folder: str  # root/name
    path: str
    state: str  # rejected, unreadable or waiting
    problem: str
    file: str
    fix: str
    #: The whole text as the catalog or the readiness check gave it.
    reason: str


@dataclass
class LandingReport:
    folders: list[FolderReport] = field(default_factory=list)
    #: Messages of landing roots that could not be searched (unavailable, another configuration's), with their fix.
    roots: list[str] = field(default_factory=list)
    #: ``(key, cause, reason)`` of partitions whose retirement waits for their run to end.
    held: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def rejected(self) -> list[FolderReport]:
        return [f for f in self.folders if f.state != WAITING]

    @property
    def waiting(self) -> list[FolderReport]:
        return [f for f in self.folders if f.state == WAITING]

    def digest(self) -> str:
        """Changes when a folder, its state or its problem changes (not when a waiting folder's clock ticks)."""
        content = [(f.folder, f.state, f.problem if f.state != WAITING else f.fix) for f in self.folders]
        payload = json.dumps([sorted(content), sorted(self.roots), sorted(k for k, _, _ in self.held)])
        return xxhash.xxh3_64_hexdigest(payload.encode())

    def to_json(self) -> dict:
        return {
            "folders": [asdict(f) for f in self.folders],
            "roots": list(self.roots),
            "held": [{"key": k, "cause": c, "reason": r} for k, c, r in self.held],
        }

    def markdown(self, shown: int = SHOWN_ROWS) -> str:
        """Tables for the UI: rejected folders (problem, file, fix), folders not complete yet, roots not searched."""
        parts = [
            f"**{len(self.rejected)} landing folder(s) are not sessions**, {len(self.waiting)} are not complete yet."
        ]
        for title, rows, columns in (
            ("Not sessions", self.rejected, ("folder", "state", "problem", "file", "fix")),
            ("Not complete yet", self.waiting, ("folder", "problem", "fix")),
        ):
            if not rows:
                continue
            parts.append(f"### {title}\n\n| {' | '.join(columns)} |\n|{'---|' * len(columns)}")
            parts[-1] += "".join(
                "\n| " + " | ".join(_cell(getattr(row, column)) for column in columns) + " |" for row in rows[:shown]
            )
            if len(rows) > shown:
                parts.append(f"+{len(rows) - shown} more: `ks-platform sessions --rejected` lists them all")
        if self.roots:
            parts.append("### Landing roots not searched\n\n" + "\n".join(f"- {_cell(m)}" for m in self.roots))
        if self.held:
            parts.append(
                "### Retirements waiting for a run to end\n\n"
                + "\n".join(f"- `{k}` ({c}): {_cell(r)}" for k, c, r in self.held)
            )
        return "\n\n".join(parts)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def split_reason(reason: str, folder: str) -> tuple[str, str, str]:
    """``(file, problem, fix)`` of a stored reason (``"<file>: <problem>. Fix: <fix>"``, as ``SessionInputError``
    words it); a reason without a file names the folder."""
    head, _, fix = reason.partition(". Fix: ")
    file, sep, problem = head.partition(": ")
    if not sep or not file.startswith("/"):
        file, problem = folder, head
    return file, problem, fix.rstrip(".") or "see the problem"


def waiting_fix(why: str, marker_name: str | None) -> str:
    """What to do about a folder that is not complete yet."""
    if why.startswith("the folder is empty"):
        return "copy the session into it, or remove the folder"
    if why.startswith("a copy is still in progress"):
        return "nothing while the copy runs; if it was interrupted, finish it (or remove the partial files)"
    if marker_name:
        return f"write the marker file {marker_name!r} into the folder as the copy's last step"
    return "nothing: it is read once no file in it has changed for the settle time (KS_PLATFORM_SETTLE_SECONDS)"


def build_report(
    rejected: list[FolderRecord],
    waiting: list[tuple[str, Path, str]],
    roots: list[str],
    held: list[tuple[str, str, str]] = (),
    marker_name: str | None = None,
) -> LandingReport:
    """The report from the catalog's rejected/unreadable folders, the folders not complete yet
    (``(root/name, folder, why)``), messages of landing roots not searched, and held retirements."""
    folders = []
    for record in rejected:
        file, problem, fix = split_reason(record.reason, record.path)
        folders.append(FolderReport(record.label, record.path, record.state, problem, file, fix, record.reason))
    folders += [
        FolderReport(label, str(folder), WAITING, why, str(folder), waiting_fix(why, marker_name), why)
        for label, folder, why in waiting
    ]
    folders.sort(key=lambda f: (f.state == WAITING, f.folder))
    return LandingReport(folders, list(roots), list(held))

"""Session store layout and atomic writes: nothing half-written ever sits under a final name."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEMP_MARK = ".tmp-"
OLD_MARK = ".old-"


@dataclass(frozen=True)
class SessionStore:
    """Where one session's outputs live: ``<store_root>/sessions/<partition_key>/<step>``."""

    root: Path
    key: str

    @property
    def dir(self) -> Path:
        return self.root / "sessions" / self.key

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
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def replace_path(staged: Path, final: Path) -> None:
    """Move ``staged`` to ``final``; an existing ``final`` is swapped out first, then deleted.

    ``final`` is either the complete old output or the complete new one, never a mix.
    """
    old = None
    if final.exists() or final.is_symlink():
        old = final.parent / f".{final.name}{OLD_MARK}{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    os.rename(staged, final)
    _fsync_dir(final.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it becomes ``final``, on error it is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent)
    staged = final.parent / f".{final.name}{TEMP_MARK}{uuid.uuid4().hex[:8]}"
    staged.mkdir()
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    replace_path(staged, final)


@contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling file path; on success it is renamed to ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = final.parent / f".{final.name}{TEMP_MARK}{uuid.uuid4().hex[:8]}"
    try:
        yield staged
        if staged.exists():
            with open(staged, "rb+") as handle:
                os.fsync(handle.fileno())
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    replace_path(staged, final)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` atomically."""
    with atomic_file(path) as staged:
        staged.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def contained_path(root: Path, candidate: Path) -> Path:
    """Resolve ``candidate`` and refuse it unless it lies inside ``root`` (no traversal, no symlink escape)."""
    root_resolved = Path(root).resolve()
    resolved = Path(candidate).resolve()
    if resolved != root_resolved and root_resolved not in resolved.parents:
        from ks_platform.core.errors import SessionInputError

        raise SessionInputError(
            candidate,
            f"resolves to {resolved}, outside the configured root {root_resolved}",
            "keep session files (and what symlinks point to) inside the landing root",
        )
    return resolved

"""One error type for everything a user can fix: it names the file, the problem and the fix."""

from __future__ import annotations

from pathlib import Path


class SessionInputError(Exception):
    """Bad input in a session: always says which file, what is wrong and what to do."""

    def __init__(self, path: Path | str, problem: str, fix: str) -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}. Fix: {fix}")


class PlatformConfigError(Exception):
    """Bad platform configuration (store root, landing roots, inventory)."""

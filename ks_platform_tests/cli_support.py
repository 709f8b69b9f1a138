"""The ``ks-platform`` command line run in the test's process, for the tests that every command answers with the
platform's own message and never a traceback (test_hostile_corpus.py, test_catalog_safety.py)."""

from __future__ import annotations

from contextlib import redirect_stderr, redirect_stdout
from io import StringIO

from ks_platform.cli import main

TRACEBACK = "Traceback (most recent call last)"


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``ks-platform argv`` in this process; (exit status, stdout, stderr)."""
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()

"""Where the suite's time goes: every test's seconds (setup + call + teardown) in ``test-artifacts/durations.json``,
seconds per file at the end of the run, and the slowest tests held to their recorded budget.

The budget (``durations_budget.json`` beside this file) lists the slowest calls of a CI run (2 cores) with their
seconds; a run in which one of them takes more than 1.5 times its budget fails, naming it. A run that did not run a
budgeted test (``pytest -k``, one file) checks only those it ran. Refresh the budget with
``python -m ks_platform_tests.durations_plugin test-artifacts/durations.json`` after a change that is meant to cost.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import pytest

BUDGET_FILE = Path(__file__).with_name("durations_budget.json")
ARTIFACT = Path("test-artifacts") / "durations.json"
#: How far over its budget a budgeted call may run before the suite fails.
BUDGET_SLACK = 1.5
#: How many of the slowest calls the budget holds.
BUDGETED_CALLS = 10


class Durations:
    """Collects the seconds of every phase of every test of this run."""

    def __init__(self) -> None:
        self.seconds: dict[str, dict[str, float]] = defaultdict(dict)
        self.over_budget: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid][report.when] = round(report.duration, 2)

    def per_file(self) -> list[tuple[str, float, int]]:
        files: dict[str, list[float]] = defaultdict(list)
        for nodeid, phases in self.seconds.items():
            files[nodeid.split("::")[0]].append(sum(phases.values()))
        return sorted(((f, round(sum(s), 1), len(s)) for f, s in files.items()), key=lambda row: -row[1])

    def check_budget(self) -> list[str]:
        """One line per budgeted call of this run that took more than ``BUDGET_SLACK`` times its budget."""
        budget = json.loads(BUDGET_FILE.read_text()) if BUDGET_FILE.is_file() else {}
        over = []
        for nodeid, allowed in budget.items():
            took = self.seconds.get(nodeid, {}).get("call")
            if took is not None and took > BUDGET_SLACK * allowed:
                over.append(f"{nodeid}: {took:.0f} s, budget {allowed:.0f} s (x{took / allowed:.2f})")
        return over

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        ARTIFACT.parent.mkdir(exist_ok=True)
        ARTIFACT.write_text(json.dumps(self.seconds, indent=1, sort_keys=True))
        self.over_budget = self.check_budget()
        if self.over_budget and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        rows = self.per_file()
        if not rows:
            return
        total = sum(seconds for _, seconds, _ in rows)
        terminalreporter.section(f"seconds per test file ({total:.0f} s in all)")
        for name, seconds, count in rows:
            terminalreporter.write_line(f"{seconds:8.1f} s {count:5d} tests  {name}")
        if self.over_budget:
            terminalreporter.section("slowest tests over their budget (ks_platform_tests/durations_budget.json)")
            for line in self.over_budget:
                terminalreporter.write_line(f"OVER BUDGET {line}")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(Durations(), "ks_platform_durations")


def budget_from(durations: dict[str, dict[str, float]], count: int = BUDGETED_CALLS) -> dict[str, float]:
    """The ``count`` slowest calls of a run's ``durations.json``, as a budget."""
    calls = sorted(((p.get("call", 0.0), n) for n, p in durations.items()), reverse=True)[:count]
    return {nodeid: seconds for seconds, nodeid in calls}


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else ARTIFACT)
    BUDGET_FILE.write_text(json.dumps(budget_from(json.loads(source.read_text())), indent=1) + "\n")
    print(f"wrote {BUDGET_FILE} from {source}")

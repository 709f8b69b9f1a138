"""The suite's own time: the budget names tests that exist, and the plugin fails a run that overshoots it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ks_platform_tests.durations_plugin import BUDGET_FILE, BUDGET_SLACK, Durations, budget_from

REPO = Path(__file__).resolve().parent.parent


def test_every_budgeted_call_names_a_test_of_the_suite():
    budget = json.loads(BUDGET_FILE.read_text())
    assert 5 <= len(budget) <= 10
    for nodeid, seconds in budget.items():
        file, name = nodeid.split("::")
        function = re.sub(r"\[.*\]$", "", name)
        assert (REPO / file).is_file(), nodeid
        assert f"def {function}(" in (REPO / file).read_text(), f"{nodeid}: no such test (renamed? refresh the budget)"
        assert 0 < seconds < 1800


def test_a_call_over_its_budget_by_half_is_named_and_one_within_is_not():
    budget = json.loads(BUDGET_FILE.read_text())
    slow, quick = list(budget)[:2]
    durations = Durations()
    durations.seconds[slow]["call"] = budget[slow] * BUDGET_SLACK + 1
    durations.seconds[quick]["call"] = budget[quick] * BUDGET_SLACK - 1
    over = durations.check_budget()
    assert len(over) == 1 and over[0].startswith(slow), over


def test_the_budget_is_the_slowest_calls_of_a_run():
    run = {f"t.py::test_{i}": {"setup": 100.0, "call": float(i)} for i in range(20)}
    assert list(budget_from(run, count=3)) == ["t.py::test_19", "t.py::test_18", "t.py::test_17"]

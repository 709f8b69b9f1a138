"""A step whose upstream output is missing (never materialized, or removed) fails with one error naming the missing
file and the step to run, through the pipeline functions and through a real Dagster run: never a traceback."""

from __future__ import annotations

import shutil

import pytest

from ks_platform.core import pipeline
from ks_platform.core.errors import SessionInputError
from ks_platform.core.store import SessionStore
from ks_platform_tests.conftest import failure_messages

KEY = "2026-03-02__rig1__demo_seed42__imec0"


def test_each_step_names_what_is_missing(tmp_path, generated_session):
    folder = shutil.copytree(generated_session, tmp_path / "landing" / generated_session.name)
    store = SessionStore(tmp_path / "store", KEY)
    pipeline.observe_raw_recording(folder, store)
    pipeline.build_probe_map(folder, store)
    with pytest.raises(SessionInputError) as caught:
        pipeline.sort_session(folder, store, backend="cpu")
    assert "materialize recording_binary" in caught.value.fix
    pipeline.build_recording_binary(folder, store)
    for upstream, step in {"sorted_units": pipeline.export_phy, "phy_bundle": pipeline.measure_units}.items():
        with pytest.raises(SessionInputError) as caught:
            step(store)
        assert f"materialize {upstream}" in caught.value.fix, (upstream, str(caught.value))
    with pytest.raises(SessionInputError, match="no sorting to score") as caught:
        pipeline.score_session(folder, store)
    assert "materialize sorted_units" in caught.value.fix


def test_a_dagster_run_of_a_step_without_its_upstream_fails_with_the_fix(workspace, generated_session):
    shutil.copytree(generated_session, workspace.landing / generated_session.name)
    key = workspace.key(workspace.landing / generated_session.name)
    result = workspace.run_assets(key, ["phy_bundle"])
    assert not result.success
    [message] = failure_messages(result)
    assert "the session has no recording binary" in message and "Fix: materialize recording_binary" in message
    assert "Traceback" not in message, message

"""The daily rollup (issue #6): content on a real store, the asset's metadata and figure, and the sensor that refreshes it.

Reuses the shared ``sorted_workspace`` store (one real Kilosort sort of the canonical 2026-03-02 session)
and adds sessions whose real runs fail (a missing SpikeGLX meta file, a missing folder) on a fresh instance.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil

import dagster as dg
import pytest

from ks_platform.core import rollup as core_rollup
from ks_platform.core.names import ROLLUP_JOB_NAME, ROLLUP_START_ENV, SUMMARY_FILE
from ks_platform.core.sorting import load_sort_result
from ks_platform.core.store import read_json
from ks_platform.definitions import build_definitions
from ks_platform.defs import rollup
from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME
from ks_platform.defs.resources import PlatformResource
from ks_platform_tests.conftest import TEST_SPEC

DAY = dt.date(2026, 3, 2)


def test_empty_day_has_a_rollup_and_a_figure(tmp_path):
    result = core_rollup.build_daily_rollup(tmp_path / "store", DAY, ["2026-03-03__rig1__other_g0__imec0__imec0"])
    assert result.n_sessions == 0 and result.n_units == 0 and result.devices == []
    # the asset reports these as MetadataValue.float, which refuses the int 0 an empty sum gives
    assert isinstance(result.recording_seconds, float) and isinstance(result.sorting_seconds, float)
    files = core_rollup.write_daily_rollup(tmp_path / "store", result)
    assert files.png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_json(files.json_path)["n_sessions"] == 0


@pytest.fixture
def rollup_setup(sorted_workspace, tmp_path):
    """A fresh instance with: the sorted canonical session, one whose run failed, one never run, one from another day."""
    ws, sorted_key, result = sorted_workspace
    assert result.success
    broken_landing = tmp_path / "rigx"
    broken_landing.mkdir()
    broken = shutil.copytree(ws.landing / sorted_key.split("__")[2], broken_landing / "broken_g0")
    next(broken.glob("*.ap.meta")).unlink()
    platform = PlatformResource(
        store_root=str(ws.store_root), landing_roots=f"rig1={ws.landing},rigx={broken_landing}", backend="cpu"
    )
    keys = {
        "sorted": sorted_key,
        "broken": "2026-03-02__rigx__broken_g0__imec0",
        "waiting": "2026-03-02__rigx__waiting_g0__imec0",
        "other_day": "2026-03-05__rigx__later_g0__imec0",
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, list(keys.values()))
        defs = build_definitions(platform, sensors=[])
        failed = defs.resolve_job_def("sort_session").execute_in_process(
            partition_key=keys["broken"], instance=instance, raise_on_error=False
        )
        assert not failed.success
        yield instance, platform, defs, keys


def test_rollup_asset_counts_sessions_units_failures_and_times(rollup_setup):
    instance, platform, defs, keys = rollup_setup
    run = defs.resolve_job_def(ROLLUP_JOB_NAME).execute_in_process(partition_key=DAY.isoformat(), instance=instance)
    assert run.success
    [materialization] = run.asset_materializations_for_node("daily_rollup")
    meta = {k: getattr(v, "value", getattr(v, "text", v)) for k, v in materialization.metadata.items()}

    summary = load_sort_result(platform.store(keys["sorted"]).sorting_dir)
    assert (meta["sessions"], meta["sorted"], meta["failed"], meta["pending"]) == (3, 1, 1, 1)
    assert meta["units"] == summary.n_units > 0 and meta["good_units"] == summary.n_good_units
    assert meta["recording_time_s"] == pytest.approx(TEST_SPEC.duration_s) and meta["sorting_time_s"] == pytest.approx(
        summary.seconds
    )
    assert meta["devices"].startswith("cpu")
    assert meta["figure"].startswith(f"![rollup {DAY}](data:image/png;base64,")

    rows = {r.data["session"]: r.data for r in materialization.metadata["per_session"].value.records}
    assert set(rows) == {keys["sorted"], keys["broken"], keys["waiting"]}  # the 2026-03-05 session is another day's
    assert (
        rows[keys["broken"]]["status"] == "failed"
        and "raw_recording" in rows[keys["broken"]]["error"]
        and "meta" in rows[keys["broken"]]["error"]
    )
    assert rows[keys["waiting"]]["status"] == "pending"

    written = read_json(core_rollup.rollup_dir(platform.store_root, DAY) / core_rollup.ROLLUP_JSON)
    assert written["n_units"] == summary.n_units and written["devices"] == [meta["devices"]]
    assert (core_rollup.rollup_dir(platform.store_root, DAY) / core_rollup.ROLLUP_PNG).read_bytes()[:4] == b"\x89PNG"
    assert (
        materialization.tags["dagster/data_version"]
        == core_rollup.build_daily_rollup(
            platform.store_root,
            DAY,
            [keys["sorted"], keys["broken"], keys["waiting"]],
            {keys["broken"]: rows[keys["broken"]]["error"]},
        ).content_hash()
    )
    assert (platform.store(keys["sorted"]).sorting_dir / SUMMARY_FILE).is_file()


def test_rollup_sensor_requests_the_date_of_each_finished_session_run(rollup_setup):
    instance, platform, defs, keys = rollup_setup
    sensor = rollup.build_rollup_sensor()

    def tick(cursor):
        result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
        assert isinstance(result, dg.SensorResult)
        return result

    # The broken session's run failed: its date's rollup is requested (the canonical session was sorted on another
    # instance).
    first = tick(None)
    [request] = first.run_requests
    assert request.partition_key == "2026-03-02" and request.run_key.startswith("2026-03-02:")
    assert tick(first.cursor).run_requests == []  # nothing new since

    # A rollup run is not a session run: it requests nothing. A failed run of another day's session requests that day.
    defs.resolve_job_def(ROLLUP_JOB_NAME).execute_in_process(partition_key="2026-03-02", instance=instance)
    defs.resolve_job_def("sort_session").execute_in_process(
        partition_key=keys["other_day"], instance=instance, raise_on_error=False
    )
    second = tick(first.cursor)
    assert [r.partition_key for r in second.run_requests] == ["2026-03-05"]

    # Two runs of one day between ticks: one request for that day.
    for key in (keys["waiting"], keys["broken"]):
        defs.resolve_job_def("sort_session").execute_in_process(
            partition_key=key, instance=instance, raise_on_error=False
        )
    third = tick(second.cursor)
    assert [r.partition_key for r in third.run_requests] == ["2026-03-02"] and third.run_requests[
        0
    ].run_key != request.run_key

    # Cursor lost: the same events give the same run keys (Dagster launches nothing twice).
    replay = tick(None)
    assert {r.run_key for r in replay.run_requests} == {third.run_requests[0].run_key, second.run_requests[0].run_key}
    assert json.loads(replay.cursor) == json.loads(third.cursor)

    # A session dated before the rollup's first day is logged, not requested.
    early = "2023-05-01__rigx__early_g0__imec0"
    instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, [early])
    defs.resolve_job_def("sort_session").execute_in_process(
        partition_key=early, instance=instance, raise_on_error=False
    )
    assert tick(third.cursor).run_requests == []


def test_rollup_start_is_configurable(monkeypatch):
    monkeypatch.setenv(ROLLUP_START_ENV, "2025-06-01")
    assert rollup.rollup_start_from_env() == "2025-06-01"
    monkeypatch.setenv(ROLLUP_START_ENV, "June 2025")
    with pytest.raises(Exception, match="KS_PLATFORM_ROLLUP_START"):
        rollup.rollup_start_from_env()

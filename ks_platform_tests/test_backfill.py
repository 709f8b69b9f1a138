"""Backfills by recording date (issue #6): selection by date range, empty ranges, --only-stale, one real Dagster backfill.

Real generated sessions, a real Dagster instance and Dagster's own backfill records and stale-status
resolver. The stale test reuses the shared ``sorted_workspace`` materialization (one Kilosort run per
test session); the daemon that executes backfills is exercised in ``test_live_dagster.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus

from ks_platform.cli import build_parser
from ks_platform.cli.backfill_command import run_backfill
from ks_platform.core.discovery import session_keys_in_date_range
from ks_platform.core.names import ONLY_STALE_TAG, RECORDING_DATES_TAG, SESSIONS_PARTITIONS_NAME
from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session
from ks_platform.definitions import ALL_ASSETS, build_definitions
from ks_platform.defs.resources import PlatformResource
from ks_platform.operations import backfill as backfills
from ks_platform.operations.sessions import register_sessions

#: The assets of sort_session (group session_pipeline, and sorter_comparison: compared_sortings, sorter_agreement).
SESSION_ASSETS = [
    "compared_sortings",
    "phy_bundle",
    "probe_map",
    "raw_recording",
    "recording_binary",
    "sorted_units",
    "sorter_agreement",
    "unit_labels",
    "unit_metrics",
]


def test_date_range_selection_is_inclusive_and_ignores_other_keys():
    keys = [
        "2026-03-01__rig1__a__imec0",
        "2026-03-15__rig2__b__imec0",
        "2026-03-16__rig1__c__imec0",
        "2026-02-28__rig1__d__imec0",
        "not-a-session",
        "2026-13-01__rig1__e__imec0",
    ]
    assert session_keys_in_date_range(keys, dt.date(2026, 3, 1), dt.date(2026, 3, 15)) == [
        "2026-03-01__rig1__a__imec0",
        "2026-03-15__rig2__b__imec0",
    ]
    assert session_keys_in_date_range(keys, dt.date(2026, 4, 1), dt.date(2026, 4, 30)) == []
    with pytest.raises(ValueError, match="before the start"):
        session_keys_in_date_range(keys, dt.date(2026, 3, 2), dt.date(2026, 3, 1))


@pytest.fixture
def dated_landing(tmp_path) -> tuple[Path, PlatformResource]:
    """rig1 with sessions recorded 2026-03-02 (two), 2026-03-20, and one folder that is not a session."""
    landing = tmp_path / "landing"
    for name, date in (("m1_g0", dt.date(2026, 3, 2)), ("m2_g0", dt.date(2026, 3, 2)), ("m3_g0", dt.date(2026, 3, 20))):
        make_spikeglx_session(landing / name, DemoSessionSpec(duration_s=0.5, n_units=2, seed=3, recording_date=date))
    (landing / "notes").mkdir()
    (landing / "notes" / "readme.txt").write_text("not a recording")
    return landing, PlatformResource(store_root=str(tmp_path / "store"), landing_roots=f"rig1={landing}", backend="cpu")


def cli(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["backfill", *argv])


def test_cli_launches_one_backfill_for_exactly_the_sessions_in_range(dated_landing, capsys):
    landing, platform = dated_landing
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(
            SESSIONS_PARTITIONS_NAME, ["2026-03-05__rig2__handmade_g0__imec0"]
        )  # added by hand: unknown to the landing catalog, so left alone and never selected
        assert run_backfill(cli("--start", "2026-03-01", "--end", "2026-03-15"), instance, platform) == 0
        out = capsys.readouterr()
        assert "registered 3 new session(s)" in out.out and "skipped" in out.err and "notes" in out.err

        # Registration added the landing sessions in key (= date) order.
        assert instance.get_dynamic_partitions(SESSIONS_PARTITIONS_NAME) == [
            "2026-03-05__rig2__handmade_g0__imec0",
            "2026-03-02__rig1__m1_g0__imec0",
            "2026-03-02__rig1__m2_g0__imec0",
            "2026-03-20__rig1__m3_g0__imec0",
        ]
        [backfill] = instance.get_backfills()
        expected = ["2026-03-02__rig1__m1_g0__imec0", "2026-03-02__rig1__m2_g0__imec0"]
        assert backfills.backfill_partitions(instance, backfill.backfill_id) == {
            asset: expected for asset in SESSION_ASSETS
        }
        assert backfill.is_asset_backfill and backfill.status == BulkActionStatus.REQUESTED
        assert backfill.tags[RECORDING_DATES_TAG] == "2026-03-01..2026-03-15" and "2026-03-01" in backfill.title
        assert f"launched backfill {backfill.backfill_id} (2 session(s) × {len(SESSION_ASSETS)} assets)" in out.out
        assert instance.get_runs() == []  # runs are the daemon's job, not the CLI's

        # A range with no sessions: a message, no backfill, no failure.
        assert run_backfill(cli("--start", "2026-04-01", "--end", "2026-04-30"), instance, platform) == 0
        assert "no sessions recorded from 2026-04-01 to 2026-04-30" in capsys.readouterr().out
        assert len(instance.get_backfills()) == 1

        # --end before --start is a usage error.
        assert run_backfill(cli("--start", "2026-03-15", "--end", "2026-03-01"), instance, platform) == 2


def test_dry_run_registers_and_launches_nothing(dated_landing, capsys):
    landing, platform = dated_landing
    with dg.instance_for_test() as instance:
        assert run_backfill(cli("--start", "2026-03-20", "--end", "2026-03-20", "--dry-run"), instance, platform) == 0
        out = capsys.readouterr().out
        assert "2026-03-20__rig1__m3_g0__imec0" in out and "2026-03-02" not in out and "dry run" in out
        assert instance.get_dynamic_partitions(SESSIONS_PARTITIONS_NAME) == [] and instance.get_backfills() == []


def test_bad_dates_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["backfill", "--start", "2026-3-1x", "--end", "2026-03-15"])
    assert "is not a date; write YYYY-MM-DD" in capsys.readouterr().err


def test_only_stale_uses_dagsters_stale_status(sorted_workspace, generated_session, tmp_path, capsys):
    """Sorted and unchanged → skipped; registered but never sorted → selected; sort code changed → selected."""
    ws, sorted_key, result = sorted_workspace
    assert result.success
    instance = ws.instance
    rig9 = tmp_path / "rig9"
    shutil.copytree(generated_session, rig9 / "never_sorted_g0")
    make_spikeglx_session(
        rig9 / "other_day_g0", DemoSessionSpec(duration_s=0.5, n_units=2, recording_date=dt.date(2026, 3, 3))
    )
    # The sorted session's landing root plus rig9, with a catalog of their own (the stale status is the instance's).
    platform = PlatformResource(
        store_root=str(tmp_path / "store"), landing_roots=f"{ws.platform.landing_roots},rig9={rig9}", backend="cpu"
    )
    never_sorted = "2026-03-02__rig9__never_sorted_g0__imec0"
    graph = build_definitions(platform, sensors=[]).resolve_asset_graph()
    register_sessions(instance, platform.roots(), Path(platform.store_root))

    store = Path(platform.store_root)
    selection = backfills.select_backfill(
        instance, graph, store, dt.date(2026, 3, 2), dt.date(2026, 3, 2), only_stale=True
    )
    assert selection.in_range == sorted([sorted_key, never_sorted]) and sorted_key.startswith("2026-03-02__")
    assert selection.selected == [never_sorted] and selection.up_to_date == [sorted_key]

    # The same with the sorting step's code version bumped (e.g. a Kilosort upgrade): the sorted session is stale now.
    upgraded = [
        a.map_asset_specs(lambda spec: spec.replace_attributes(code_version="kilosort-upgraded"))
        if a.key == dg.AssetKey("sorted_units")
        else a
        for a in ALL_ASSETS
    ]
    upgraded_graph = dg.Definitions(assets=upgraded, resources={"platform": ws.platform}).resolve_asset_graph()
    assert backfills.stale_sessions(instance, upgraded_graph, [sorted_key, never_sorted]) == [sorted_key, never_sorted]

    # Through the CLI: only the never-sorted session is backfilled; the up-to-date one is reported as skipped.
    before = {b.backfill_id for b in instance.get_backfills()}
    assert run_backfill(cli("--start", "2026-03-02", "--end", "2026-03-02", "--only-stale"), instance, platform) == 0
    out = capsys.readouterr().out
    assert "1 session(s) already up to date (skipped)" in out
    [new] = [b for b in instance.get_backfills() if b.backfill_id not in before]
    assert backfills.backfill_partitions(instance, new.backfill_id)["sorted_units"] == [never_sorted]
    assert new.tags[ONLY_STALE_TAG] == "true"
    instance.update_backfill(new.with_status(BulkActionStatus.CANCELED))  # the shared instance has no daemon

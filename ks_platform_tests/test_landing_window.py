"""What the lab sees of its landing roots (issue #27): rejected and waiting folders listed in one place, partitions
never retired while a run of them is in flight or from a landing root another configuration owns, the demo in its own
landing root.

Real generated SpikeGLX sessions, a real instance, the sensor (requests applied as the daemon does) and ``register``
(the ``Harness`` of catalog_support.py), the real CLI. Injected: a run "in flight" is a run record added in state
STARTED (nothing executes it).
"""

from __future__ import annotations

import json
import shutil
import uuid
from contextlib import redirect_stdout
from dataclasses import replace
from io import StringIO

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from ks_platform.cli import main
from ks_platform.cli.pipeline_commands import DEMO_LANDING, DEMO_ROOT, demo_platform
from ks_platform.core.catalog import ACTIVE, DELETED, REDATED, RETIRED
from ks_platform.core.names import PARTITION_TAG, SETTLE_ENV
from ks_platform.core.synthetic import make_spikeglx_session
from ks_platform.defs import sensors
from ks_platform.defs.landing import landing_folders
from ks_platform.defs.resources import PlatformResource
from ks_platform.operations.sessions import register_sessions
from ks_platform_tests import catalog_support
from ks_platform_tests.catalog_support import DATE, DAY, ROOT, SPEC, key_of, rewrite_meta
from ks_platform_tests.sensor_support import tick

# Fixtures of another module, used here by name.
template, harness = catalog_support.template, catalog_support.harness


def start_run(instance: dg.DagsterInstance, key: str) -> str:
    """A run of ``key`` in flight (a record in state STARTED; nothing executes it)."""
    run_id = str(uuid.uuid4())
    instance.add_run(
        DagsterRun(job_name="sort_session", run_id=run_id, status=DagsterRunStatus.STARTED, tags={PARTITION_TAG: key})
    )
    return run_id


def cli(env: dict[str, str], monkeypatch, *argv: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = StringIO()
    with redirect_stdout(out):
        assert main(list(argv)) == 0
    return out.getvalue()


def test_a_partition_with_a_run_in_flight_is_never_retired(harness):
    """Deleted past the retire time, and re-dated: neither key is retired while its run is unfinished (that would fail
    the run: every step refuses a retired key); both are retired, with their evidence, by the first sync after."""
    gone = harness.add("gone_g0")
    redated = harness.add("redated_g0")
    assert harness.sync() == {key_of("gone_g0"), key_of("redated_g0")}
    runs = [start_run(harness.instance, key_of(name)) for name in ("gone_g0", "redated_g0")]

    shutil.rmtree(gone)
    rewrite_meta(redated, f"fileCreateTime={DATE}", "fileCreateTime=2026-02-27")
    new = key_of("redated_g0", "2026-02-27")
    harness.sync()  # the absence is noticed (its clock starts)
    assert harness.sync_after(2 * DAY) == {key_of("gone_g0"), key_of("redated_g0"), new}
    assert harness.record(key_of("gone_g0")).state == ACTIVE
    assert harness.record(key_of("redated_g0")).state == ACTIVE
    if harness.driver == "sensor":
        for name in ("gone_g0", "redated_g0"):
            assert f"partition {key_of(name)} is not retired yet" in "\n".join(harness.messages), harness.messages
    assert harness.sync_after(60) == {key_of("gone_g0"), key_of("redated_g0"), new}  # still in flight: still kept

    for run_id in runs:
        harness.instance.delete_run(run_id)
    assert harness.sync_after(60) == {new}
    gone_record, old_record = harness.record(key_of("gone_g0")), harness.record(key_of("redated_g0"))
    assert (gone_record.state, gone_record.cause) == (RETIRED, DELETED)
    assert (old_record.state, old_record.cause, old_record.successor) == (RETIRED, REDATED, new)


def test_a_landing_root_of_another_configuration_is_neither_read_nor_retired(harness, tmp_path, monkeypatch):
    """A UI started with another KS_PLATFORM_LANDING on the same store: its root ``rig1`` is elsewhere. Nothing of the
    store's rig1 is retired (days later), nothing of the other folder is added; the root is reported with the fix;
    ``sessions`` shows the demo's partition as unconfigured there. ``register --accept-root`` takes the move."""
    harness.add("demo_g0")
    assert harness.sync() == {key_of("demo_g0")}
    elsewhere = tmp_path / "elsewhere"
    make_spikeglx_session(elsewhere / "other_g0", replace(SPEC, seed=12))  # other content: not taken for a rename
    harness.platform = PlatformResource(store_root=str(harness.store), landing_roots=f"{ROOT}={elsewhere}")
    for days in (1, 3):
        assert harness.sync_after(days * DAY) == {key_of("demo_g0")}, harness.messages
        assert harness.record(key_of("demo_g0")).state == ACTIVE
        [message] = [m for m in harness.messages if "another configuration shares the store" in m]
        assert f"this configuration has {ROOT}={elsewhere}" in message and str(harness.landing) in message
        assert f"`ks-platform register --accept-root {ROOT}`" in message and "KS_PLATFORM_STORE" in message
    env = {"KS_PLATFORM_STORE": str(harness.store), "KS_PLATFORM_LANDING": f"{ROOT}={elsewhere}"}
    listing = cli(env, monkeypatch, "sessions").splitlines()
    assert listing[0].startswith(f"unconfigured {key_of('demo_g0')}  {harness.landing / 'demo_g0'} is not in")
    assert listing[-1] == "0 active, 1 unconfigured, 0 retired partition(s)"
    if harness.driver == "register":  # the lab says the root moved: its records follow, the new folder comes in
        assert harness.sync_after(60, accept_roots=(ROOT,)) == {key_of("demo_g0"), key_of("other_g0")}
        assert harness.sync_after(DAY + 60) == {key_of("other_g0")}  # demo_g0 is not in the moved root


def test_rejected_and_waiting_folders_are_listed_in_the_ui_asset_and_the_cli(template, tmp_path, monkeypatch):
    """One place lists every landing folder that is not a partition: the ``landing_folders`` asset, observed by the
    sensor when the list changes (not at every tick), and ``ks-platform sessions --rejected``."""
    landing, store = tmp_path / "landing", tmp_path / "store"
    shutil.copytree(template, landing / "good_g0")
    bad = shutil.copytree(template, landing / "bad_config_g0")
    (bad / "ks_session.json").write_text('{"recording_date": "2026-03-02",}')  # invalid JSON
    copying = shutil.copytree(template, landing / "copying_g0")
    (copying / "more.ap.bin.part").write_bytes(b"\0" * 64)
    platform = PlatformResource(store_root=str(store), landing_roots=f"{ROOT}={landing}", backend="cpu")
    sensor = sensors.build_new_session_sensor(settle_seconds=0, marker_name="")
    with dg.instance_for_test() as instance:
        first = tick(sensor, instance, platform)
        [report] = [e for e in first.asset_events if e.asset_key == landing_folders.key]
        assert (report.metadata["not_sessions"].value, report.metadata["not_complete_yet"].value) == (1, 1)
        table = report.metadata["report"].value
        row = next(line for line in table.splitlines() if line.startswith(f"| {ROOT}/bad_config_g0 |"))
        assert row.startswith(f"| {ROOT}/bad_config_g0 | rejected | not valid JSON (") and "JSON" in row, row
        assert row.endswith(f" | {bad / 'ks_session.json'} | fix the JSON syntax (e.g. with `python -m json.tool`) |")
        waiting = next(line for line in table.splitlines() if line.startswith(f"| {ROOT}/copying_g0 |"))
        assert "a copy is still in progress: more.ap.bin.part" in waiting and "nothing while the copy runs" in waiting
        assert [r.partition_key for r in first.run_requests] == [key_of("good_g0")]

        second = tick(sensor, instance, platform, first.cursor)
        assert [e for e in second.asset_events if e.asset_key == landing_folders.key] == []  # unchanged: not again

        (bad / "ks_session.json").unlink()
        third = tick(sensor, instance, platform, second.cursor)
        [report] = [e for e in third.asset_events if e.asset_key == landing_folders.key]
        assert report.metadata["not_sessions"].value == 0 and "bad_config_g0" not in report.metadata["report"].value
        (bad / "ks_session.json").write_text("[]")  # a config that is no object: rejected again, with its file

        env = {"KS_PLATFORM_STORE": str(store), "KS_PLATFORM_LANDING": f"{ROOT}={landing}", SETTLE_ENV: "0"}
        assert register_sessions(instance, platform.roots(), store).active == [key_of("good_g0")]
        latest = instance.fetch_observations(landing_folders.key, limit=1).records[0].asset_observation
        assert latest.metadata["not_sessions"].value == 1  # register refreshed the UI's list as well
    text = cli(env, monkeypatch, "sessions", "--rejected")
    assert f"rejected   {ROOT}/bad_config_g0\n    problem: the config file must hold a JSON object, not list\n" in text
    assert f"    file:    {bad / 'ks_session.json'}\n    fix:     write a JSON object such as" in text
    assert f"waiting    {ROOT}/copying_g0\n    problem: a copy is still in progress" in text
    assert text.splitlines()[-1] == "1 landing folder(s) are not sessions, 1 not complete yet"
    rows = {row["folder"]: row for row in json.loads(cli(env, monkeypatch, "sessions", "--rejected", "--json"))}
    assert (
        rows[f"{ROOT}/bad_config_g0"]["file"] == str(bad / "ks_session.json") and rows[f"{ROOT}/bad_config_g0"]["fix"]
    )
    assert rows[f"{ROOT}/copying_g0"]["state"] == "waiting"


def test_the_demo_writes_registers_and_runs_only_in_its_own_landing_root(tmp_path):
    lab = PlatformResource(store_root=str(tmp_path / "store"), landing_roots=f"rig1={tmp_path / 'real_rig'}")
    assert demo_platform(lab).roots() == {DEMO_ROOT: DEMO_LANDING.resolve()}
    assert demo_platform(lab).store_root == lab.store_root
    configured = PlatformResource(landing_roots=f"rig1={tmp_path / 'rig'},{DEMO_ROOT}={tmp_path / 'demo'}")
    assert demo_platform(configured).roots() == {DEMO_ROOT: (tmp_path / "demo").resolve()}

"""The landing catalog and partition lifecycle (issues #17, #18).

``plan_tick`` is checked as plain data (no Dagster). Each lifecycle case (deleted, renamed, re-dated, changed
content, rejected then fixed, valid then rejected, unreadable) goes through both the sensor (real instance,
``build_sensor_context``, its partition requests applied as the daemon would) and ``register``. Data reads are
counted with an audit hook on ``open`` (nothing patched). Real generated SpikeGLX sessions throughout.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import dagster as dg

from ks_platform.cli import main
from ks_platform.core import catalog
from ks_platform.core.catalog import (
    ACTIVE,
    DELETED,
    NOT_A_SESSION,
    REDATED,
    RENAMED,
    RETIRED,
    Catalog,
    CatalogChanges,
    FolderRecord,
    PartitionRecord,
    RefreshReport,
)
from ks_platform.core.names import FINGERPRINT_TAG, RETIRE_AFTER_ENV, RETIRED_MARKER, SESSIONS_PARTITIONS_NAME
from ks_platform.core.session_plan import cursor_position, dump_cursor, plan_tick
from ks_platform.definitions import build_definitions
from ks_platform.defs.resources import PlatformResource
from ks_platform.operations import backfill
from ks_platform.operations.sessions import register_sessions
from ks_platform_tests import catalog_support
from ks_platform_tests.catalog_support import DATE, DAY, ROOT, SPEC, key_of, rewrite_meta
from ks_platform_tests.conftest import failure_messages

# Fixtures of another module, used here by name.
template, harness = catalog_support.template, catalog_support.harness


# --- plan_tick: plain data -----------------------------------------------------------------------------------------


def record(key: str, state: str = ACTIVE, **changes) -> PartitionRecord:
    values = dict(
        key=key,
        root=ROOT,
        folder=key.split("__")[2],
        path=f"/landing/{key.split('__')[2]}",
        recording_date=key[:10],
        probe_name="imec0",
        fingerprint="f" * 32,
        state=state,
        cause="",
        reason="",
        successor=None,
        changed_at=0.0,
        seq=1,
        details={"format": "spikeglx", "n_channels": 5, "duration_s": 1.0, "folder_name": "x"},
    )
    values.update(changes)
    return PartitionRecord(**values)


def test_plan_tick_turns_catalog_changes_into_requests_and_reports():
    active = record(key_of("a_g0"), seq=3)
    retired = record(key_of("b_g0"), RETIRED, cause=RENAMED, reason="its folder was renamed", successor=key_of("c_g0"))
    rejected = FolderRecord(ROOT, "bad", "/landing/bad", "sig", "rejected", "/landing/bad/x.meta: broken. Fix: fix", 4)
    refresh = RefreshReport(waiting=[("rig1/copying", Path("/landing/copying"), "a copy is still in progress")])
    plan = plan_tick(refresh, CatalogChanges([active, retired], [rejected], 9), "cat1", 100)

    assert plan.add_keys == [active.key]
    assert plan.retire == [(retired.key, "renamed: its folder was renamed")]
    [run] = plan.runs
    assert run.run_key == f"{active.key}:{'f' * 32}" and run.tags[FINGERPRINT_TAG] == "f" * 32
    assert run.tags["dagster/partition"] == active.key and run.tags["ks_platform/session_folder"] == "/landing/a_g0"
    [observation] = plan.observations
    assert observation.metadata["format"] == "spikeglx" and observation.metadata["landing_root"] == ROOT
    messages = {(line.level, line.message) for line in plan.logs}
    assert ("warning", f"skipped landing folder {ROOT}/bad: {rejected.reason}") in messages
    assert any(level == "warning" and f"successor is {key_of('c_g0')}" in text for level, text in messages)
    assert ("debug", "not complete yet: rig1/copying (a copy is still in progress)") in messages
    assert plan.skip_reason is None and cursor_position(plan.cursor, "cat1") == 9

    idle = plan_tick(RefreshReport(deferred=2), CatalogChanges([], [], 9), "cat1", 3)
    assert idle.runs == [] and idle.skip_reason == "no new complete session" and idle.cursor == plan.cursor
    assert any("2 more complete folder(s) wait" in line.message for line in idle.logs)


def test_cursor_is_small_and_a_foreign_or_broken_one_replays_everything():
    cursor = dump_cursor("cat1", 12)
    assert len(cursor) < 64 and cursor_position(cursor, "cat1") == 12
    assert cursor_position(cursor, "rebuilt-catalog") == 0
    for broken in (None, "", "not json", "[]", '{"v": 1, "seen": {}}', '{"v": 2, "catalog": "cat1", "seq": -3}'):
        assert cursor_position(broken, "cat1") == 0


def test_core_modules_do_not_import_dagster():
    code = "import sys, ks_platform.core.catalog, ks_platform.core.session_plan; sys.exit('dagster' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- lifecycle through the sensor and through register -------------------------------------------------------------


def test_deleted_session_is_retired_and_its_outputs_kept_and_marked(harness):
    folder = harness.add("gone_g0")
    harness.add("stays_g0")
    assert harness.sync() == {key_of("gone_g0"), key_of("stays_g0")}
    outputs = harness.give_outputs(key_of("gone_g0"))

    shutil.rmtree(folder)
    # Absent, not retired yet: an unmounted share and a deleted folder look alike until it stays away for a day.
    assert harness.sync() == {key_of("gone_g0"), key_of("stays_g0")}
    assert harness.record(key_of("gone_g0")).state == ACTIVE and not (outputs / RETIRED_MARKER).exists()
    assert harness.sync_after(DAY - 60) == {key_of("gone_g0"), key_of("stays_g0")}
    assert harness.sync_after(61) == {key_of("stays_g0")}
    retired = harness.record(key_of("gone_g0"))
    assert (retired.state, retired.cause, retired.successor) == (RETIRED, DELETED, None)
    assert "absent from every listing of the available landing root rig1 since" in retired.reason
    marker = json.loads((outputs / RETIRED_MARKER).read_text())
    assert marker["cause"] == DELETED and marker["key"] == key_of("gone_g0") and marker["retired_at"]
    assert (outputs / "raw_recording.json").is_file()  # outputs kept
    assert harness.run_keys == []


def test_renamed_session_is_retired_with_its_successor(harness):
    harness.add("old_name_g0")
    assert harness.sync() == {key_of("old_name_g0")}
    (harness.landing / "old_name_g0").rename(harness.landing / "new_name_g0")
    assert harness.sync() == {key_of("new_name_g0")}
    retired = harness.record(key_of("old_name_g0"))
    assert (retired.cause, retired.successor) == (RENAMED, key_of("new_name_g0"))
    assert "new_name_g0" in retired.reason


def test_redated_session_is_retired_and_its_old_key_refused_by_raw_recording(harness):
    folder = harness.add("dated_g0")
    assert harness.sync() == {key_of("dated_g0")}
    old, new = key_of("dated_g0"), key_of("dated_g0", "2026-02-27")

    rewrite_meta(folder, f"fileCreateTime={DATE}", "fileCreateTime=2026-02-27")
    job = build_definitions(harness.platform, sensors=[]).resolve_job_def("sort_session")

    def ingest(key: str) -> list[str]:
        result = job.execute_in_process(
            partition_key=key,
            instance=harness.instance,
            raise_on_error=False,
            asset_selection=[dg.AssetKey("raw_recording")],
        )
        return failure_messages(result)

    # Before any sync notices: the old key no longer matches the folder's recording, so nothing is sorted under it.
    [message] = ingest(old)
    assert f"partition {old} no longer matches its folder: it is now {new} (re-dated)" in message and "Fix:" in message

    assert harness.sync() == {new}
    retired = harness.record(old)
    assert (retired.cause, retired.successor) == (REDATED, new) and "2026-02-27" in retired.reason
    harness.instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, [old])  # e.g. re-added by hand from the UI
    [message] = ingest(old)
    assert f"partition {old} was retired (re-dated:" in message and f"materialize {new} instead" in message
    assert ingest(new) == []


def test_changed_content_keeps_the_key_and_changes_the_fingerprint(harness):
    folder = harness.add("edited_g0")
    harness.sync()
    before = harness.record(key_of("edited_g0"))
    with open(next(folder.rglob("*.ap.bin")), "r+b") as handle:
        handle.write(b"\x01\x02" * 64)
    assert harness.sync() == {key_of("edited_g0")}
    after = harness.record(key_of("edited_g0"))
    assert after.state == ACTIVE and after.fingerprint != before.fingerprint
    if harness.driver == "sensor":
        assert harness.run_keys == [f"{key_of('edited_g0')}:{after.fingerprint}"]


def test_rejected_then_fixed_and_valid_then_rejected(harness):
    folder = harness.add("flaky_g0")
    meta = next(folder.rglob("*.ap.meta"))
    saved = meta.read_bytes()
    meta.unlink()
    assert harness.sync() == set()
    with Catalog(harness.store) as cat:
        [rejected] = cat.folders(("rejected",))
    assert rejected.name == "flaky_g0" and "Fix:" in rejected.reason

    meta.write_bytes(saved)  # fixed
    assert harness.sync() == {key_of("flaky_g0")}
    outputs = harness.give_outputs(key_of("flaky_g0"))

    meta.unlink()  # broken again: its partition is retired, its outputs kept
    assert harness.sync() == set()
    retired = harness.record(key_of("flaky_g0"))
    assert retired.cause == NOT_A_SESSION and "meta" in retired.reason
    assert (outputs / RETIRED_MARKER).is_file()

    meta.write_bytes(saved)  # fixed again: the same key comes back, the mark goes
    assert harness.sync() == {key_of("flaky_g0")}
    assert harness.record(key_of("flaky_g0")).state == ACTIVE and not (outputs / RETIRED_MARKER).exists()


def test_unreadable_folder_is_reported_and_keeps_its_partition(harness, monkeypatch):
    harness.add("locked_g0")
    assert harness.sync() == {key_of("locked_g0")}
    (next(harness.landing.rglob("*.ap.meta"))).touch()  # changed, so the next sync walks it again
    real = catalog.scan_folder

    def denied(folder):  # the tests run as root, where chmod cannot take read access away
        if Path(folder).name == "locked_g0":
            raise PermissionError(13, "Permission denied")
        return real(folder)

    monkeypatch.setattr(catalog, "scan_folder", denied)
    assert harness.sync() == {key_of("locked_g0")}  # not taken for deleted
    with Catalog(harness.store) as cat:
        [unreadable] = cat.folders(("unreadable",))
    assert "Permission denied" in unreadable.reason and "Fix:" in unreadable.reason
    assert harness.record(key_of("locked_g0")).state == ACTIVE


def test_a_missing_landing_root_retires_nothing(harness):
    harness.add("safe_g0")
    assert harness.sync() == {key_of("safe_g0")}
    harness.landing.rename(harness.landing.with_name("unmounted"))
    assert harness.sync() == {key_of("safe_g0")}
    assert harness.record(key_of("safe_g0")).state == ACTIVE


# --- cost: nothing new reads no data file --------------------------------------------------------------------------

_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], str | bytes | os.PathLike):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def opened_under(folder: Path, action) -> list[str]:
    """Files under ``folder`` opened (any mode) while ``action()`` runs, as the interpreter's audit hook sees them."""
    global _OPENED
    _OPENED = []
    try:
        action()
        return sorted({p for p in _OPENED if p.startswith(str(folder))})
    finally:
        _OPENED = None


def test_a_call_with_nothing_new_reads_no_data_file(harness):
    for index in range(3):
        harness.add(f"s{index}_g0")
    landing = harness.landing.resolve()
    first = opened_under(landing, harness.sync)
    assert any(p.endswith(".ap.bin") for p in first) and any(p.endswith(".ap.meta") for p in first)

    assert opened_under(landing, harness.sync) == []  # nothing new: a stat walk only

    with open(next((harness.landing / "s1_g0").rglob("*.ap.bin")), "r+b") as handle:
        handle.write(b"\x07" * 8)
    reopened = opened_under(landing, harness.sync)
    assert reopened and all("/s1_g0/" in p for p in reopened)  # only the changed folder is read


def test_backfill_selection_never_includes_retired_keys(harness):
    harness.add("kept_g0")
    doomed = harness.add("doomed_g0")
    harness.sync()
    shutil.rmtree(doomed)
    harness.sync()
    harness.sync_after(DAY)
    graph = build_definitions(harness.platform, sensors=[]).resolve_asset_graph()
    day = SPEC.recording_date
    for only_stale in (False, True):
        selection = backfill.select_backfill(harness.instance, graph, harness.store, day, day, only_stale=only_stale)
        assert selection.in_range == [key_of("kept_g0")] and selection.selected == [key_of("kept_g0")]


# --- storage, CLI --------------------------------------------------------------------------------------------------


def test_a_corrupt_catalog_is_kept_beside_a_new_one_with_a_log_line(template, tmp_path):
    landing = tmp_path / "landing"
    shutil.copytree(template, landing / "one_g0")
    store = tmp_path / "store"
    with dg.instance_for_test() as instance:
        assert register_sessions(instance, {ROOT: landing}, store).active == [key_of("one_g0")]
        path = catalog.catalog_path(store.resolve())
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        path.write_bytes(b"this is not a database" * 100)
        outcome = register_sessions(instance, {ROOT: landing}, store)
    assert outcome.active == [key_of("one_g0")] and "started a new catalog" in (outcome.rebuilt_because or "")
    [kept] = path.parent.glob(f"{path.name}.damaged-*")  # the damaged file is kept, never deleted
    assert kept.read_bytes() == b"this is not a database" * 100 and kept.name in outcome.rebuilt_because


def test_sessions_command_lists_active_and_retired(template, tmp_path, monkeypatch):
    landing = tmp_path / "landing"
    for name in ("alive_g0", "removed_g0"):
        shutil.copytree(template, landing / name)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("KS_PLATFORM_LANDING", f"{ROOT}={landing}")
    monkeypatch.setenv("KS_PLATFORM_STORE", str(tmp_path / "store"))
    monkeypatch.setenv(RETIRE_AFTER_ENV, "0")  # retire a folder as soon as it is absent

    def run(*argv: str) -> str:
        out = StringIO()
        with redirect_stdout(out):
            assert main(list(argv)) == 0
        return out.getvalue()

    assert run("register").split() == [key_of("alive_g0"), key_of("removed_g0")]
    shutil.rmtree(landing / "removed_g0")
    assert run("register").split() == [key_of("alive_g0")]

    listing = run("sessions").splitlines()
    assert listing[0] == f"active       {key_of('alive_g0')}"
    assert listing[1].startswith(
        f"retired      {key_of('removed_g0')}  deleted: the folder {ROOT}/removed_g0 was deleted"
    )
    assert listing[-1] == "1 active, 0 unconfigured, 1 retired partition(s)"
    assert [line.split()[1] for line in run("sessions", "--retired").splitlines()[:-1]] == [key_of("removed_g0")]
    [row] = json.loads(run("sessions", "--retired", "--json"))
    assert row["key"] == key_of("removed_g0") and row["cause"] == DELETED and row["successor"] is None
    assert dt.datetime.fromisoformat(row["changed_at"])


def test_the_daily_rollup_lists_retired_partitions(template, tmp_path):
    landing = tmp_path / "landing"
    shutil.copytree(template, landing / "left_g0")
    platform = PlatformResource(store_root=str(tmp_path / "store"), landing_roots=f"{ROOT}={landing}", backend="cpu")
    with dg.instance_for_test() as instance:
        register_sessions(instance, platform.roots(), Path(platform.store_root))
        shutil.rmtree(landing / "left_g0")  # its root is empty now: retired only when the root's state is accepted
        register_sessions(instance, platform.roots(), Path(platform.store_root), retire_after=0, accept_roots=[ROOT])
        defs = build_definitions(platform, sensors=[])
        run = defs.resolve_job_def("daily_rollup_job").execute_in_process(partition_key=DATE, instance=instance)
    assert run.success
    written = json.loads((tmp_path / "store" / "rollups" / DATE / "rollup.json").read_text())
    assert written["n_sessions"] == 0
    assert [(r["key"], r["cause"]) for r in written["retired"]] == [(key_of("left_g0"), DELETED)]

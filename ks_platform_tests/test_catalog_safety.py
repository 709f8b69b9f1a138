"""Catalog safety (issue #25): the catalog is never lost, partitions are retired only on evidence, keys never collide,
junk does not starve work, and no store state is a traceback.

Each case goes through the entry points it reaches: a ``new_session_sensor`` tick (``build_sensor_context`` with a real
``instance_for_test``), ``ks-platform register``, ``ks-platform sessions`` and ``ks-platform backfill --dry-run`` (the
real ``main(argv)`` in this process; the concurrent ``register``s as real subprocesses). Full and read-only stores are
real tmpfs mounts (the tests run as root, whom ``chmod`` does not stop); a locked catalog is another process holding
SQLite's write lock or the catalog's ``flock``. What is injected: the clock of the sensor and of ``register`` is moved
on instead of waiting a day, and ``KS_PLATFORM_CATALOG_WAIT_SECONDS=1`` instead of waiting 60 s for a lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest

from ks_platform.cli import pipeline_commands
from ks_platform.core import catalog
from ks_platform.core.catalog import ACTIVE, DELETED, RETIRED, catalog_path, current_session_folder
from ks_platform.core.errors import SessionInputError
from ks_platform.core.names import CATALOG_DIR, CATALOG_WAIT_ENV, RETIRE_AFTER_ENV, RETIRED_MARKER
from ks_platform.core.sessions import SessionRef, key_name, session_dir
from ks_platform.defs import sensors
from ks_platform.defs.resources import PlatformResource
from ks_platform.operations.sessions import register_sessions
from ks_platform_tests import catalog_support
from ks_platform_tests.catalog_support import DAY, ROOT, key_of
from ks_platform_tests.cli_support import TRACEBACK, run_cli
from ks_platform_tests.conftest import Workspace, failure_messages, small_tmpfs
from ks_platform_tests.sensor_support import tick

REPO = Path(__file__).resolve().parent.parent

# Fixtures of another module, used here by name.
template, harness = catalog_support.template, catalog_support.harness


# ------------------------------------------------------------------------------------------ fixtures and helpers
class Lab:
    """A landing root, a store and a ``DAGSTER_HOME``, as the command line sees them (environment set)."""

    def __init__(self, base: Path, template: Path, monkeypatch, store: Path | None = None) -> None:
        self.template = template
        self.landing = base / "landing"
        self.landing.mkdir(parents=True)
        self.store = store or base / "store"
        self.home = base / "home"
        self.home.mkdir()
        (self.home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.env = {
            "DAGSTER_HOME": str(self.home),
            "KS_PLATFORM_LANDING": f"{ROOT}={self.landing}",
            "KS_PLATFORM_STORE": str(self.store),
        }
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        self.platform = PlatformResource(
            store_root=str(self.store), landing_roots=f"{ROOT}={self.landing}", backend="cpu"
        )

    def add(self, name: str, distinct: int = 0) -> Path:
        """A copy of the template session; ``distinct`` > 0 changes its data (another fingerprint)."""
        folder = Path(shutil.copytree(self.template, self.landing / name))
        if distinct:
            with open(next(folder.rglob("*.ap.bin")), "r+b") as handle:
                handle.write(distinct.to_bytes(2, "little") * 32)
        return folder

    def cli(self, *argv: str) -> tuple[int, str, str]:
        """``ks-platform argv`` in this process: (exit status, stdout, stderr); a traceback would fail the test."""
        code, out, err = run_cli(list(argv))
        assert TRACEBACK not in out + err, err
        return code, out, err

    def listing(self) -> dict[str, dict]:
        """``ks-platform sessions --json`` by key (it must succeed)."""
        code, out, err = self.cli("sessions", "--json")
        assert code == 0, err
        return {row["key"]: row for row in json.loads(out)}

    def tick(self, instance, cursor: str | None = None, **options) -> tuple[dg.SensorResult, list[str]]:
        options = {"settle_seconds": 0, "marker_name": "", **options}
        logs: list[logging.LogRecord] = []
        result = tick(sensors.build_new_session_sensor(**options), instance, self.platform, cursor, logs=logs)
        return result, [r.getMessage() for r in logs]


@pytest.fixture
def lab(tmp_path, template, monkeypatch) -> Lab:
    return Lab(tmp_path, template, monkeypatch)


def one_error_line(code: int, err: str, *needles: str) -> str:
    """Exit status 2 and one ``error:`` line (file, problem, ``Fix:``) holding every needle."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Fix:" in lines[0], err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def skipped(result: dg.SensorResult) -> str:
    """The tick's skip message ("" when it requested something)."""
    return result.skip_reason.skip_message if result.skip_reason else ""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def with_one_retired(lab: Lab, monkeypatch) -> dict[str, dict]:
    """Three sessions registered, one with outputs retired (deleted), one without outputs retired; their listing."""
    monkeypatch.setenv(RETIRE_AFTER_ENV, "0")
    for name in ("keep_g0", "sorted_g0", "unsorted_g0"):
        lab.add(name, distinct=len(name))
    assert lab.cli("register")[0] == 0
    outputs = catalog.SessionStore(lab.store.resolve(), key_of("sorted_g0")).dir
    outputs.mkdir(parents=True)
    (outputs / "raw_recording.json").write_text("{}")
    shutil.rmtree(lab.landing / "sorted_g0")
    shutil.rmtree(lab.landing / "unsorted_g0")
    code, _, err = lab.cli("register")
    assert code == 0, err
    listing = lab.listing()
    assert {k: r["state"] for k, r in listing.items()} == {
        key_of("keep_g0"): ACTIVE,
        key_of("sorted_g0"): RETIRED,
        key_of("unsorted_g0"): RETIRED,
    }
    monkeypatch.delenv(RETIRE_AFTER_ENV)
    return listing


@contextmanager
def mounted(path: Path, size: str = "2m") -> Iterator[Path]:
    with small_tmpfs(path, size) as mount:
        yield mount


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def fill(folder: Path) -> None:
    """Write into ``folder`` until its filesystem is full (ENOSPC)."""
    with open(folder / "filler", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    with pytest.raises(OSError):
        (folder / "one_more").write_bytes(b"\0" * 65536)


# ------------------------------------------------------------------------------------------ loss: damaged catalog
DAMAGES = {
    "header": lambda data: b"this is not a database" * 5 + data[110:],  # SQLite refuses the file (NOTADB)
    "pages": lambda data: data[:4096] + b"\xa5" * (len(data) - 4096),  # the schema is fine, every table page is not
}


@pytest.mark.parametrize(
    ("damage", "driver"), [("header", "register"), ("pages", "sensor"), ("header", "backfill")], ids=str
)
def test_a_damaged_catalog_is_kept_and_a_new_one_restores_every_retired_record(lab, monkeypatch, damage, driver):
    before = with_one_retired(lab, monkeypatch)
    path = catalog_path(lab.store.resolve())
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    damaged = digest(path)
    assert catalog.integrity_problem(path) is not None  # SQLite's own check says it is damaged

    # A read-only command says so and changes nothing.
    code, _, err = lab.cli("sessions")
    one_error_line(code, err, "landing catalog is damaged", "run `ks-platform register`")
    assert digest(path) == damaged and not list(path.parent.glob("*.damaged-*"))

    if driver == "sensor":
        with dg.instance_for_test() as instance:
            result, logs = lab.tick(instance)
        assert [r.partition_key for r in result.run_requests] == [key_of("keep_g0")]
        said = "\n".join(logs)
    else:
        argv = ["register"] if driver == "register" else ["backfill", "--start", "2026-03-01", "--end", "2026-03-09"]
        code, _, said = lab.cli(*argv, *(["--dry-run"] if driver == "backfill" else []))
        assert code == 0, said
    [kept] = [p for p in path.parent.glob(f"{path.name}.damaged-*") if not p.name.endswith(("-wal", "-shm"))]
    assert digest(kept) == damaged, "the damaged file is kept byte for byte"
    assert f"kept it as {kept.name}" in said and "2 retired partition(s) restored" in said, said

    after = lab.listing()
    assert set(after) == set(before)
    for key, row in before.items():
        if row["state"] == RETIRED:
            assert after[key] == row, key  # cause, reason, successor, time: all restored
        else:  # found again in the landing root
            assert {**after[key], "changed_at": ""} == {**row, "changed_at": ""}, key
    assert (catalog.SessionStore(lab.store.resolve(), key_of("sorted_g0")).dir / "raw_recording.json").is_file()


def test_a_deleted_catalog_comes_back_with_its_retired_records(lab, monkeypatch):
    before = with_one_retired(lab, monkeypatch)
    path = catalog_path(lab.store.resolve())
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    code, out, err = lab.cli("sessions")
    assert (
        code == 0
        and "no landing catalog yet" in err
        and out.splitlines()[-1] == "0 active, 0 unconfigured, 0 retired partition(s)"
    )
    assert not path.exists()  # listing made none
    code, _, err = lab.cli("register")
    assert code == 0 and "did not exist: started a new catalog; 2 retired partition(s) restored" in err, err
    after = lab.listing()
    assert {k: r for k, r in after.items() if r["state"] == RETIRED} == {
        k: r for k, r in before.items() if r["state"] == RETIRED
    }


def test_retired_records_are_in_the_store_whether_or_not_the_key_has_outputs(lab, monkeypatch):
    before = with_one_retired(lab, monkeypatch)
    for name in ("sorted_g0", "unsorted_g0"):
        marker = catalog.SessionStore(lab.store.resolve(), key_of(name)).dir / RETIRED_MARKER
        record = catalog.retired_record_from_marker(marker)
        assert (record.key, record.cause, record.reason) == (key_of(name), DELETED, before[key_of(name)]["reason"])
        assert record.path == str(lab.landing / name) and record.fingerprint == before[key_of(name)]["fingerprint"]


# ------------------------------------------------------------------------------------------ full, read-only, locked
def test_a_full_store_loses_nothing_and_every_entry_point_says_so_in_one_line(tmp_path, template, monkeypatch):
    with mounted(tmp_path / "store", "1m") as store:
        lab = Lab(tmp_path, template, monkeypatch, store=store)
        before = with_one_retired(lab, monkeypatch)
        with dg.instance_for_test() as instance:
            first, _ = lab.tick(instance)
            lab.add("new_g0", distinct=7)  # work that needs a write
            path = catalog_path(store)
            fill(store)
            kept = digest(path)

            assert lab.listing() == before  # read only: works on a full store
            code, _, err = lab.cli("register")
            one_error_line(code, err, "the store is full", "free space")
            code, _, err = lab.cli("backfill", "--start", "2026-03-01", "--end", "2026-03-09", "--dry-run")
            one_error_line(code, err, "the store is full")
            result, logs = lab.tick(instance, first.cursor)
            assert result.run_requests == [] and result.cursor == first.cursor
            assert skipped(result).startswith("landing catalog unusable") and "the store is full" in skipped(result)
            assert any("Fix: free space" in line for line in logs), logs
            assert path.is_file() and digest(path) == kept and lab.listing() == before

            (store / "filler").unlink()  # space again: everything is still there, and the new session comes in
            code, out, err = lab.cli("register")
            assert code == 0, err
            assert out.split() == [key_of("keep_g0"), key_of("new_g0")]
            after = lab.listing()
            assert {k: after[k] for k in before} == before


def test_a_read_only_store_is_listed_and_every_writer_says_so_in_one_line(tmp_path, template, monkeypatch):
    with mounted(tmp_path / "store") as store:
        lab = Lab(tmp_path, template, monkeypatch, store=store)
        before = with_one_retired(lab, monkeypatch)
        lab.add("new_g0", distinct=7)
        remount(store, "ro")
        try:
            files = sorted(p.name for p in (store / CATALOG_DIR).iterdir())
            assert lab.listing() == before
            code, _, err = lab.cli("register")
            one_error_line(code, err, "the store is read-only", "remount the store read-write")
            code, _, err = lab.cli("backfill", "--start", "2026-03-01", "--end", "2026-03-09", "--dry-run")
            one_error_line(code, err, "the store is read-only")
            with dg.instance_for_test() as instance:
                result, logs = lab.tick(instance)
            assert result.run_requests == [] and "the store is read-only" in skipped(result)
            assert sorted(p.name for p in (store / CATALOG_DIR).iterdir()) == files
        finally:
            remount(store, "rw")
        assert lab.cli("register")[0] == 0 and key_of("new_g0") in lab.listing()


HOLDERS = {
    "sqlite write lock": "import sqlite3, sys, time\n"
    "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "db.execute('BEGIN IMMEDIATE')\n"
    "print('held', flush=True)\n"
    "time.sleep(60)\n",
    "refresh lock": "import fcntl, os, sys, time\n"
    "handle = open(os.path.join(os.path.dirname(sys.argv[1]), '.lock'), 'a+')\n"
    "fcntl.flock(handle.fileno(), fcntl.LOCK_EX)\n"
    "handle.seek(0); handle.truncate(); handle.write(f'pid {os.getpid()} (a stuck register)'); handle.flush()\n"
    "print('held', flush=True)\n"
    "time.sleep(60)\n",
}


@pytest.mark.parametrize("holder", sorted(HOLDERS))
def test_a_locked_catalog_is_one_error_line_after_the_wait_and_reads_go_on(lab, monkeypatch, holder):
    lab.add("first_g0")
    assert lab.cli("register")[0] == 0
    lab.add("second_g0", distinct=3)
    monkeypatch.setenv(CATALOG_WAIT_ENV, "1")
    path = catalog_path(lab.store.resolve())
    process = subprocess.Popen([sys.executable, "-c", HOLDERS[holder], str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        started = time.monotonic()
        code, _, err = lab.cli("register")
        line = one_error_line(code, err, "stayed locked for 1 s", "fuser")
        assert time.monotonic() - started < 20
        if holder == "refresh lock":
            assert f"pid {process.pid} (a stuck register)" in line
        code, _, err = lab.cli("backfill", "--start", "2026-03-01", "--end", "2026-03-09", "--dry-run")
        one_error_line(code, err, "stayed locked")
        with dg.instance_for_test() as instance:
            result, _ = lab.tick(instance)
        assert result.run_requests == [] and "stayed locked" in skipped(result)
        assert list(lab.listing()) == [key_of("first_g0")]  # readers do not wait for the writer
    finally:
        process.kill()
        process.wait()
    code, out, err = lab.cli("register")
    assert code == 0 and out.split() == [key_of("first_g0"), key_of("second_g0")], err


def test_two_registers_at_once_on_a_fresh_instance_both_succeed(template, tmp_path, monkeypatch):
    """Dagster creates a fresh SQLite instance's tables without a guard, and adds partitions read-then-insert: before
    the fix 3 of 10 pairs of real ``ks-platform register`` processes failed (``table runs already exists``,
    ``UNIQUE constraint failed``). Here the pairs are threads running what ``register`` runs (the instance start and
    the partition sync), released together; each thread has its own SQLite connections and file locks."""
    landing = tmp_path / "landing"
    shutil.copytree(template, landing / "s_g0")
    platform = PlatformResource(store_root=str(tmp_path / "store"), landing_roots=f"{ROOT}={landing}", backend="cpu")
    for attempt in range(3):
        home = tmp_path / f"home{attempt}"
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        outcomes: list[object] = []

        def register(start: threading.Barrier = threading.Barrier(2), outcomes: list[object] = outcomes) -> None:
            start.wait()
            try:
                with pipeline_commands._instance() as instance:
                    outcomes.append(pipeline_commands.register_sessions(instance, platform))
            except Exception as exc:  # the failure this test is about: kept to be reported below
                outcomes.append(exc)

        pair = [threading.Thread(target=register) for _ in range(2)]
        for thread in pair:
            thread.start()
        for thread in pair:
            thread.join(timeout=120)
        assert outcomes == [[key_of("s_g0")], [key_of("s_g0")]], (attempt, outcomes)


# ------------------------------------------------------------------------------------------ retire only on evidence
def test_an_empty_landing_root_retires_nothing_and_says_why(harness, tmp_path):
    for name in ("a_g0", "b_g0", "c_g0"):
        harness.add(name)
    keys = harness.sync()
    assert len(keys) == 3
    unplugged = tmp_path / "unplugged"
    shutil.move(harness.landing, unplugged)
    harness.landing.mkdir()  # the mount point of a share that is not mounted, or of a disk not plugged in
    assert harness.sync_after(3 * DAY) == keys
    [message] = [m for m in harness.messages if "is unavailable" in m]
    assert f"landing root {ROOT} ({harness.landing}) is unavailable: it is empty, and held 3 folder(s)" in message
    assert "Nothing in it was retired" in message and f"ks-platform register --accept-root {ROOT}" in message
    assert all(harness.record(k).state == ACTIVE for k in keys)

    harness.landing.rmdir()
    shutil.move(unplugged, harness.landing)  # plugged in again: nothing to do, nothing sorted again
    assert harness.sync_after(DAY) == keys and harness.run_keys == []
    assert not [m for m in harness.messages if "unavailable" in m or "absent" in m]


def test_a_missing_landing_root_retires_nothing_for_days(harness):
    harness.add("safe_g0")
    assert harness.sync() == {key_of("safe_g0")}
    harness.landing.rename(harness.landing.with_name("unmounted"))
    assert harness.sync_after(10 * DAY) == {key_of("safe_g0")}
    assert any("is unavailable: it cannot be listed" in m for m in harness.messages), harness.messages
    assert harness.record(key_of("safe_g0")).state == ACTIVE


def test_a_root_that_lost_most_of_its_folders_retires_nothing_until_accepted(harness):
    names = [f"s{i}_g0" for i in range(6)]
    for name in names:
        harness.add(name)
    keys = harness.sync()
    for name in names[:4]:
        shutil.rmtree(harness.landing / name)
    assert harness.sync_after(2 * DAY) == keys
    assert any("it lists 2 of the 6 session folders it had" in m for m in harness.messages), harness.messages

    # The operator says the folders went on purpose: their absence starts counting, a day later they are retired.
    register_sessions(harness.instance, harness.platform.roots(), harness.store, now=harness.now, accept_roots=[ROOT])
    assert harness.sync_after(DAY / 2) == keys
    assert harness.sync_after(DAY / 2) == {key_of(n) for n in names[4:]}
    for name in names[:4]:
        retired = harness.record(key_of(name))
        assert retired.cause == DELETED and f"absent from every listing of the available landing root {ROOT}" in (
            retired.reason
        )


def test_cleaning_up_junk_folders_is_no_alarm(harness):
    keys = {key_of("s_g0")}
    harness.add("s_g0")
    for index in range(8):
        (harness.landing / f"junk{index}").mkdir()
        (harness.landing / f"junk{index}" / "notes.txt").write_text("not a recording")
    assert harness.sync() == keys
    for index in range(8):
        shutil.rmtree(harness.landing / f"junk{index}")  # 8 of 9 folders gone, but no session folder
    assert harness.sync_after(DAY) == keys and not [m for m in harness.messages if "unavailable" in m]


def test_a_folder_back_before_the_retire_time_is_untouched(harness, tmp_path):
    harness.add("stay_g0")
    moved = harness.add("away_g0")
    keys = harness.sync()
    shutil.move(moved, tmp_path / "away_g0")
    assert harness.sync_after(DAY / 2) == keys
    shutil.move(tmp_path / "away_g0", moved)
    assert harness.sync_after(DAY / 4) == keys and harness.run_keys == []
    shutil.move(moved, tmp_path / "away_g0")  # away again: its absence counts from now, not from the first time
    assert harness.sync_after(DAY / 4) == keys
    assert harness.sync_after(DAY / 2) == keys  # a day after it first went, half a day after it went again
    assert harness.sync_after(DAY / 2 + 1) == {key_of("stay_g0")}


def test_the_retire_time_is_configurable_and_checked(monkeypatch):
    monkeypatch.setenv(RETIRE_AFTER_ENV, "3600")
    assert "absent for 3600 s" in sensors.build_new_session_sensor().description
    for bad in ("soon", "-5", "nan"):
        monkeypatch.setenv(RETIRE_AFTER_ENV, bad)
        with pytest.raises(Exception, match=RETIRE_AFTER_ENV):
            sensors.build_new_session_sensor()


# ------------------------------------------------------------------------------------------ keys and names
def test_a_literal_name_equal_to_a_derived_key_name_gets_its_own_key(lab):
    source, literal = "mouse7 day3", "mouse7-day3-hcf373c60"
    assert key_name(source) == literal  # the key name derived from the unsafe name is a safe name itself
    lab.add(source, distinct=1)
    lab.add(literal, distinct=2)
    derived_key, literal_key = key_of(literal), key_of(key_name(literal))
    assert literal_key != derived_key and key_name(literal).startswith(f"{literal}-h")
    code, out, err = lab.cli("register")
    assert code == 0 and out.split() == sorted([derived_key, literal_key]), err
    code, out, _ = lab.cli("backfill", "--start", "2026-03-01", "--end", "2026-03-09", "--dry-run")
    assert sorted(line.strip() for line in out.splitlines() if line.startswith("  ")) == sorted(
        [derived_key, literal_key]
    )
    with dg.instance_for_test() as instance:
        result, _ = lab.tick(instance)
    folders = {r.partition_key: r.tags["ks_platform/session_folder"] for r in result.run_requests}
    assert folders == {derived_key: str(lab.landing / source), literal_key: str(lab.landing / literal)}
    roots = lab.platform.roots()
    for key, name in ((derived_key, source), (literal_key, literal)):
        assert session_dir(SessionRef.parse(key), roots) == (lab.landing / name).resolve()
        assert current_session_folder(key, roots, lab.store.resolve()) == (lab.landing / name).resolve()


CONTROL_NAMES = ["trailing_newline\n", "tab\tname", "bell\x07", "escape\x1b[31mred"]


def test_names_with_control_characters_get_derived_keys_and_their_runs_work(lab):
    for index, name in enumerate(CONTROL_NAMES):
        lab.add(name, distinct=index + 1)
    expected = sorted(key_of(key_name(name)) for name in CONTROL_NAMES)
    assert all(key.isprintable() and SessionRef.parse(key) for key in expected)
    code, out, err = lab.cli("register")
    assert code == 0 and out.split("\n")[:-1] == expected, (out, err)
    with dg.instance_for_test() as instance:
        result, _ = lab.tick(instance)
        assert sorted(r.partition_key for r in result.run_requests) == expected
        ws = Workspace(lab.landing, lab.store, instance)
        run = ws.run_assets(key_of(key_name("trailing_newline\n")), ["raw_recording"])
    assert run.success, failure_messages(run)


def test_two_names_whose_derived_keys_collide_are_both_refused_never_merged(lab):
    """Derived key names keep 8 hex digits of a hash: two unsafe names can share one (found by search)."""
    first, second = "rec) '^g0", "rec)~)[g0"
    assert key_name(first) == key_name(second)
    lab.add(first, distinct=1)
    code, out, _ = lab.cli("register")
    assert out.split() == [key_of(key_name(first))]
    lab.add(second, distinct=2)
    code, out, err = lab.cli("register")
    assert code == 0 and out.split() == [], err  # neither: no recording is sorted under the other's key
    for name, other in ((first, second), (second, first)):
        [line] = [line for line in err.splitlines() if line.startswith(f"skipped {lab.landing / name}:")]
        assert repr(other) in line and "Fix: rename one of the folders" in line
    assert lab.listing()[key_of(key_name(first))]["state"] == RETIRED
    with pytest.raises(SessionInputError, match="share the key name"):
        session_dir(SessionRef.parse(key_of(key_name(first))), lab.platform.roots())
    with dg.instance_for_test() as instance:
        result, logs = lab.tick(instance)
    assert result.run_requests == []

    shutil.move(lab.landing / second, lab.landing / "renamed_g0")  # the fix: both come in under their own keys
    code, out, err = lab.cli("register")
    assert out.split() == sorted([key_of(key_name(first)), key_of("renamed_g0")]), err


def test_a_session_folder_linked_inside_its_root_is_refused_with_the_fix(lab):
    real = lab.add("real_g0")
    os.symlink(real, lab.landing / "alias_g0")
    hidden = Path(shutil.copytree(lab.template, lab.landing / ".archive" / "deep_g0"))
    os.symlink(hidden, lab.landing / "deep_link_g0")
    code, out, err = lab.cli("register")
    assert code == 0 and out.split() == [key_of("real_g0")], err
    [alias] = [line for line in err.splitlines() if line.startswith(f"skipped {lab.landing / 'alias_g0'}:")]
    assert "symbolic link to real_g0" in alias and "Fix: remove the link: real_g0 is registered" in alias
    [deep] = [line for line in err.splitlines() if line.startswith(f"skipped {lab.landing / 'deep_link_g0'}:")]
    assert "Fix: move the folder .archive/deep_g0 itself" in deep
    code, out, _ = lab.cli("backfill", "--start", "2026-03-01", "--end", "2026-03-09", "--dry-run")
    assert [line.strip() for line in out.splitlines() if line.startswith("  ")] == [key_of("real_g0")]
    with dg.instance_for_test() as instance:
        result, logs = lab.tick(instance)
        assert [r.partition_key for r in result.run_requests] == [key_of("real_g0")]
        assert sum("skipped landing folder rig1/alias_g0: " in m and "symbolic link" in m for m in logs) == 1
        # A key made by hand for the link is one clear failure, not "re-dated" on every run.
        run = Workspace(lab.landing, lab.store, instance).run_assets(key_of("alias_g0"), ["raw_recording"])
    [message] = failure_messages(run)
    assert "symbolic link" in message and "Fix: remove the link" in message and "re-dated" not in message


def test_a_file_dated_in_the_future_is_reported_and_scheduled_after_the_settle_time(lab):
    folder = lab.add("future_g0")
    year_2100 = 4102444800
    os.utime(next(folder.rglob("*.ap.meta")), (year_2100, year_2100))
    clock = [time.time()]
    options = {"settle_seconds": 120, "clock": lambda: clock[0]}
    with dg.instance_for_test() as instance:
        first, logs = lab.tick(instance, **options)
        assert first.run_requests == []
        [warning] = [m for m in logs if m.startswith(f"landing folder {ROOT}/future_g0: ")]
        assert ".ap.meta is dated 7" in warning and "years ahead of this host's clock" in warning
        assert "(0 s so far)" in skipped(first)
        clock[0] += 60
        second, _ = lab.tick(instance, first.cursor, **options)
        assert second.run_requests == [] and "(60 s so far)" in skipped(second)
        clock[0] += 61
        third, _ = lab.tick(instance, second.cursor, **options)
    assert [r.partition_key for r in third.run_requests] == [key_of("future_g0")]
    code, out, _ = lab.cli("register")  # register (no settle time) takes it as it is
    assert code == 0 and out.split() == [key_of("future_g0")]


# ------------------------------------------------------------------------------------------ junk does not starve work
def test_five_thousand_junk_folders_do_not_delay_a_good_session_and_the_log_stays_small(lab):
    for index in range(2500):
        (lab.landing / f"a{index:05d}").mkdir()
        (lab.landing / f"a{index:05d}" / "notes.txt").write_text("not a recording")
        (lab.landing / f"b{index:05d}").mkdir()  # empty: a copy that has not started
    lab.add("zz_good_g0")
    with dg.instance_for_test() as instance:
        result, logs = lab.tick(instance)  # the default budget: 100 folders opened per tick
        assert [r.partition_key for r in result.run_requests] == [key_of("zz_good_g0")]
        size = sum(len(m.encode()) for m in logs)
        assert size < 8_000, size  # before: 24 kB of warnings per tick for 51 ticks, + 200 kB "not complete" lines
        assert any("skipped 89 more landing folder(s) that are not sessions: 89 × …: no recording" in m for m in logs)
        assert any(m.startswith("not complete yet: ") and "+2495 more: 2495 × the folder is empty" in m for m in logs)
        second, logs = lab.tick(instance, result.cursor)
        assert second.run_requests == [] and sum(len(m.encode()) for m in logs) < 8_000


def test_the_missing_probe_map_is_one_failure_naming_the_step_to_run(lab):
    lab.add("noprobe_g0")
    key = key_of("noprobe_g0")
    with dg.instance_for_test() as instance:
        ws = Workspace(lab.landing, lab.store, instance)
        assert ws.run_assets(key, ["raw_recording", "recording_binary"]).success
        run = ws.run_assets(key, ["sorted_units"])
    [message] = failure_messages(run)
    assert "has no probe map" in message and "Fix: materialize probe_map" in message and TRACEBACK not in message

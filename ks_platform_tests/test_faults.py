"""Faults with real processes (issue #8): ``kill -9`` of the run worker mid-step, a full disk, a session that
changes mid-run, two runs of one session at once. After each, the store holds no partial output under a final
name and a re-materialization gives byte-identical outputs to an undisturbed run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ks_platform.core import conversion, pipeline
from ks_platform.core.errors import SessionInputError
from ks_platform.core.names import RUN_ID_ENV
from ks_platform.core.sessions import SessionRef
from ks_platform.core.store import SessionStore, session_lock
from ks_platform_tests.conftest import ROOT_NAME, TEST_SPEC, leftovers, small_tmpfs
from ks_platform_tests.faults_support import FinalNameWatcher, same_bytes, same_phy_folder, write_raw_int16_session

REPO = Path(__file__).resolve().parent.parent


def start_worker(
    home: Path, store: Path, landing: Path, key: str, assets: list[str] | None = None, zero_copy: bool = True
) -> subprocess.Popen:
    config = {"store": str(store), "landing": str(landing), "key": key, "assets": assets, "zero_copy": zero_copy}
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO)}
    log = open(home / f"worker-{time.time_ns()}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "ks_platform_tests.run_worker", json.dumps(config)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for(predicate, timeout: float, what: str, poll: float = 0.001) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def kill_when(worker: subprocess.Popen, predicate, timeout: float, what: str) -> None:
    """``kill -9`` the worker's whole process group as soon as ``predicate()`` holds."""
    try:
        wait_for(lambda: predicate() or worker.poll() is not None, timeout, what)
        assert worker.poll() is None, f"the worker ended (rc {worker.returncode}) before {what}"
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    assert worker.returncode == -signal.SIGKILL


def staged(session_dir: Path, step: str) -> list[Path]:
    """The staging folders of ``step`` (``core/store.py: atomic_directory`` writes into ``.<step>.tmp-<hex>``)."""
    return list(session_dir.glob(f".{step}.tmp-*"))


def files_in(folder: Path) -> list[str]:
    """Names of the files in ``folder``; none when it is gone (a staging folder is renamed or removed at its end)."""
    try:
        return sorted(p.name for p in folder.iterdir() if p.is_file())
    except FileNotFoundError:
        return []


def run_to_success(
    home: Path, store: Path, landing: Path, key: str, assets: list[str] | None = None, zero_copy: bool = True
) -> None:
    worker = start_worker(home, store, landing, key, assets, zero_copy)
    assert worker.wait(timeout=1500) == 0, sorted(home.glob("worker-*.log"))[-1].read_text()[-3000:]


@pytest.fixture
def fault_env(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    landing = tmp_path / "landing"
    landing.mkdir()
    return home, tmp_path / "store", landing


def test_kill_during_conversion_then_rematerialize_is_byte_identical(fault_env):
    home, store, landing = fault_env
    folder = write_raw_int16_session(landing / "long_raw", seconds=60)
    key = SessionRef(
        ROOT_NAME, folder.name, __import__("datetime").date(2026, 3, 4), "recording"
    ).key  # the .bin's stem
    session = SessionStore(store.resolve(), key).dir
    run_to_success(home, store, landing, key, ["raw_recording"])

    watcher = FinalNameWatcher(session)
    watcher.start()
    worker = start_worker(home, store, landing, key, ["recording_binary"], zero_copy=False)

    def mid_write() -> bool:
        files = [p / conversion.BINARY_NAME for p in staged(session, "binary")]
        return any(f.exists() and f.stat().st_size > 20_000_000 for f in files)

    kill_when(worker, mid_write, 300, "the conversion to be mid-way")
    watcher.stop()
    assert watcher.partial_seen == [] and watcher.samples > 10
    assert not (session / "binary").exists(), "a killed conversion must not leave binary/ under its final name"
    [partial] = staged(session, "binary")
    assert (partial / conversion.BINARY_NAME).stat().st_size < 60 * 30000 * 64 * 2

    run_to_success(home, store, landing, key, ["recording_binary"], zero_copy=False)
    assert leftovers(session) == [], "the next write of the step cleans up what the killed one left"
    undisturbed = conversion.write_recording_binary(
        pipeline.as_scan(folder).open(), store.parent / "undisturbed" / "binary", allow_zero_copy=False
    )
    assert (session / "binary" / conversion.BINARY_NAME).read_bytes() == undisturbed.path.read_bytes()
    assert conversion.load_recording_binary(session / "binary").checksum == undisturbed.checksum


@pytest.mark.slow
def test_kill_during_sorting_and_phy_export_then_rematerialize_is_byte_identical(
    fault_env, generated_session, sorted_workspace
):
    home, store, landing = fault_env
    shutil.copytree(generated_session, landing / generated_session.name)
    key = SessionRef(ROOT_NAME, generated_session.name, TEST_SPEC.recording_date, "imec0").key
    session = SessionStore(store.resolve(), key).dir
    run_to_success(home, store, landing, key, ["raw_recording", "probe_map", "recording_binary"])

    # kill -9 while Kilosort runs, once it has started writing into its staging folder (its kilosort4.log)
    watcher = FinalNameWatcher(session)
    watcher.start()
    worker = start_worker(home, store, landing, key, ["sorted_units"])
    started: list[float] = []

    def sorting_for_a_while() -> bool:
        if not started and any(files_in(p) for p in staged(session, "sorting")):
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] > 10

    kill_when(worker, sorting_for_a_while, 600, "Kilosort to write into its staging folder for 10 s")
    killed = staged(session, "sorting")
    assert len(killed) == 1, "the kill landed while the sort was being written, before it was put in place"
    written = files_in(killed[0])
    assert "kilosort4.log" in written and "sorting_summary.json" not in written, written
    assert not (session / "sorting").exists(), "a killed sort leaves no sorting/ under its final name"

    run_to_success(home, store, landing, key, ["sorted_units", "phy_bundle"])
    assert leftovers(session) == [], "the next sort removed the killed one's staging folder"
    reference_ws, reference_key, _ = sorted_workspace
    reference = reference_ws.store(reference_key)
    # Kilosort's own params.py holds the absolute binary path and ops.npy/logs/lineage hold timings; the rest is equal.
    varies = (
        "ops.npy",
        "kilosort4.log",
        "params.py",
        "lineage.json",
        "sorting_summary.json",
        "effective_settings.json",
    )
    assert same_bytes(session / "sorting", reference.sorting_dir, skip=varies) == []

    # kill -9 during the Phy export, once it has written a first file into its staging folder: the previous Phy
    # folder (the one unit_metrics reads) stays whole under its name, byte for byte and the very same folder
    before = {p.name: p.read_bytes() for p in (session / "phy").iterdir() if p.is_file()}
    previous = (session / "phy").stat().st_ino
    worker = start_worker(home, store, landing, key, ["phy_bundle"])
    kill_when(worker, lambda: any(files_in(p) for p in staged(session, "phy")), 300, "the Phy export to write a file")
    watcher.stop()
    killed = staged(session, "phy")
    assert len(killed) == 1, "the kill landed while the export was being written, before it was put in place"
    written = files_in(killed[0])
    assert written, "the killed export had written into its staging folder"
    print(f"killed the Phy export after it had written {written}")
    assert watcher.partial_seen == [] and watcher.samples > 10
    assert (session / "phy").stat().st_ino == previous, "phy/ is still the previous export's folder"
    assert {p.name: p.read_bytes() for p in (session / "phy").iterdir() if p.is_file()} == before

    run_to_success(home, store, landing, key, ["phy_bundle"])
    assert leftovers(session) == [], "the next export removed the killed one's staging folder"
    assert same_phy_folder(session / "phy", reference.phy_dir) == []


def test_full_disk_during_conversion_names_the_store_and_removes_the_partial_file(tmp_path, generated_session):
    binary_bytes = round(TEST_SPEC.duration_s * TEST_SPEC.sampling_frequency) * TEST_SPEC.n_channels * 2
    with small_tmpfs(tmp_path / "small_store", f"{binary_bytes // 3 // 1024}k") as mount:  # a third of the binary fits
        store = SessionStore(mount, "2026-03-02__rig1__demo_seed42__imec0")
        pipeline.observe_raw_recording(generated_session, store)
        with pytest.raises(SessionInputError) as caught:
            pipeline.build_recording_binary(generated_session, store, allow_zero_copy=False)
        message = str(caught.value)
        assert "disk is full" in message and "Fix:" in message and str(store.dir) in message
        assert not store.binary_dir.exists() and leftovers(store.dir) == []
        assert shutil.disk_usage(mount).used < 1_000_000, "the partial binary was removed"


def test_session_changing_mid_run_is_detected_by_its_fingerprint(tmp_path, generated_session):
    folder = shutil.copytree(generated_session, tmp_path / "landing" / generated_session.name)
    store = SessionStore(tmp_path / "store", "2026-03-02__rig1__demo_seed42__imec0")
    pipeline.observe_raw_recording(folder, store)
    [data] = folder.glob("*.ap.bin")
    with open(data, "r+b") as handle:  # the file is replaced by another copy of the same size
        handle.write(b"\1" * 66 * 100)
    with pytest.raises(SessionInputError, match="changed since it was observed") as caught:
        pipeline.build_recording_binary(folder, store)
    assert "Fix:" in str(caught.value)
    assert not store.binary_dir.exists() and leftovers(store.dir) == []
    shutil.rmtree(folder)  # … or the session disappears
    with pytest.raises(SessionInputError):
        pipeline.build_recording_binary(folder, store)


def test_two_runs_of_one_session_take_turns(tmp_path):
    """The per-session lock: a second writer waits (saying so) until the first one's step ends."""
    store = SessionStore(tmp_path / "store", "2026-03-02__rig1__s__imec0")
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from ks_platform.core.store import SessionStore, session_lock\n"
        f"store = SessionStore(Path({str(store.root)!r}), {store.key!r})\n"
        "with session_lock(store):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(3)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert holder.stdout.readline().strip() == "locked"
    said: list[str] = []
    started = time.monotonic()
    with session_lock(store, log=said.append, poll_seconds=0.2):
        waited = time.monotonic() - started
    assert holder.wait() == 0
    assert waited > 1.0, "the second writer waited for the first"
    assert said and "is being written by pid" in said[0] and "waiting" in said[0]


@pytest.mark.parametrize(("waiter_run", "named"), [("run-a", False), ("run-b", True)])
def test_steps_of_one_run_take_turns_without_a_warning_and_another_run_is_named(tmp_path, waiter_run, named):
    """Two processes of one Dagster run (``KS_PLATFORM_RUN_ID``, as a run's probe_map and recording_binary are) take
    turns at the session's lock, and the waiting one says nothing: that wait is part of every normal run. Two processes
    with one parent but of different runs (two in-process run workers started by one daemon) are named."""
    store = SessionStore(tmp_path / "store", "2026-03-02__rig1__s__imec0")
    head = (
        "import sys, time\nfrom pathlib import Path\nfrom ks_platform.core.store import SessionStore, session_lock\n"
        f"store = SessionStore(Path({str(store.root)!r}), {store.key!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), RUN_ID_ENV: "run-a"}
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            head + "with session_lock(store, step='build_probe_map'):\n"
            "    print('locked', flush=True)\n    time.sleep(3)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert holder.stdout.readline().strip() == "locked"
    assert "(build_probe_map, run run-a)" in (store.dir / ".lock").read_text()
    waiter = subprocess.run(
        [
            sys.executable,
            "-c",
            head + "said = []\nstarted = time.monotonic()\n"
            "with session_lock(store, log=said.append, poll_seconds=0.2):\n    waited = time.monotonic() - started\n"
            "print(round(waited, 1), said)\n",
        ],
        capture_output=True,
        text=True,
        env={**env, RUN_ID_ENV: waiter_run},
        timeout=120,
    )
    assert holder.wait() == 0 and waiter.returncode == 0, waiter.stderr
    waited, said = waiter.stdout.split(" ", 1)
    assert float(waited) > 0.5, waiter.stdout
    assert ("is being written by pid" in said) is named, waiter.stdout


def test_a_killed_lock_holder_never_blocks_the_session(tmp_path):
    store = SessionStore(tmp_path / "store", "2026-03-02__rig1__s__imec0")
    script = (
        "import time\nfrom pathlib import Path\nfrom ks_platform.core.store import SessionStore, session_lock\n"
        f"with session_lock(SessionStore(Path({str(store.root)!r}), {store.key!r})):\n    print('locked', "
        "flush=True)\n    time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    with session_lock(store, poll_seconds=0.1):
        assert time.monotonic() - started < 1.0

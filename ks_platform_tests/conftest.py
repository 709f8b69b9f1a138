"""Shared fixtures: generated sessions and one Dagster materialization reused across tests (Kilosort is slow on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from ks_platform.core.names import SESSION_SETTINGS_FILE
from ks_platform.core.sessions import SessionRef, key_name
from ks_platform.core.store import SessionStore
from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session
from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME
from ks_platform.defs.resources import PlatformResource

#: Seconds per test and per file, and the slowest calls held to their budget (durations_plugin.py).
pytest_plugins = ["ks_platform_tests.durations_plugin"]

#: The canonical test recording: the demo's 32 channels, 10 units and seed, in 6 s at 30 Hz instead of 15 s at 12 Hz
#: (the same ~180 spikes per unit, so the same clustering and ground-truth bar). Kilosort's cost on CPU is its
#: universal-template detection, 85 % of a sort and linear in the number of 2 s batches: 3 batches instead of 8.
TEST_SPEC = DemoSessionSpec(duration_s=6.0, firing_rate_hz=30.0)
ROOT_NAME = "rig1"


def missing_dependency(what: str) -> None:
    """A test that needs something this machine lacks: a failure in CI (``CI=true``, which installs everything),
    a skip with the reason elsewhere."""
    message = f"{what} (scripts/install_system_deps.sh and the test extras install it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"missing in CI: {message}")
    pytest.skip(message)


def require_module(name: str):
    """``import name``, or ``missing_dependency``."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        missing_dependency(f"the Python package {name!r} is not installed")


def only_probe(folder: Path) -> str:
    """The key name of the single probe a folder holds; ``imec0`` when the folder cannot be listed (a bad input)."""
    from ks_platform.core.errors import SessionInputError
    from ks_platform.core.formats import list_probes

    try:
        names = list(list_probes(folder).probes)
    except (SessionInputError, OSError):
        return "imec0"
    assert len(names) == 1, f"{folder} holds {names}: name the probe"
    return key_name(names[0])


@dataclass
class Workspace:
    """A landing root + store + Dagster instance for one test scope."""

    landing: Path
    store_root: Path
    instance: dg.DagsterInstance

    @property
    def platform(self) -> PlatformResource:
        return PlatformResource(
            store_root=str(self.store_root), landing_roots=f"{ROOT_NAME}={self.landing}", backend="cpu"
        )

    def key(self, folder: Path, date=TEST_SPEC.recording_date, probe: str | None = None) -> str:
        """The partition key of ``folder``'s probe (``None``: its only probe, as the reader lists it)."""
        return SessionRef(ROOT_NAME, key_name(folder.name), date, probe or only_probe(folder)).key

    def store(self, key: str) -> SessionStore:
        return SessionStore(self.store_root.resolve(), key)

    def run(self, key: str):
        """Materialize a session through the real job, without raising on failure."""
        from ks_platform.definitions import build_definitions

        if key not in self.instance.get_dynamic_partitions(SESSIONS_PARTITIONS_NAME):
            self.instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, [key])
        defs = build_definitions(self.platform)
        job = defs.resolve_job_def("sort_session")
        return job.execute_in_process(partition_key=key, instance=self.instance, raise_on_error=False)

    def run_assets(self, key: str, assets: list[str]):
        """Materialize only ``assets`` of a session (e.g. the ingest steps, without Kilosort)."""
        from ks_platform.definitions import build_definitions

        if key not in self.instance.get_dynamic_partitions(SESSIONS_PARTITIONS_NAME):
            self.instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, [key])
        job = build_definitions(self.platform, sensors=[]).resolve_job_def("sort_session")
        return job.execute_in_process(
            partition_key=key,
            instance=self.instance,
            raise_on_error=False,
            asset_selection=[dg.AssetKey(a) for a in assets],
        )


#: The canonical session's ``kilosort4-settings.json``: synthetic recordings do not drift, and Kilosort's drift pass is
#: half of a CPU sort (31 of 69 s), so it is off here and in the two-probe SpikeGLX and Open Ephys runs. The suite's
#: other sorts keep it on: the acceptance script, the SLURM steps, the shanks test and every test that writes its own
#: settings.
CANONICAL_SETTINGS = {"nblocks": 0}
#: bombcell's spike-count bars are made for recordings of tens of minutes: in 6 s at 30 Hz no unit reaches its 300
#: spikes (minNumSpikes), and its refractory-period test cannot confirm a contamination below 10 % with ~180 spikes, so
#: every unit would be MUA. The canonical session sets what a lab sets for short recordings (ks_session.json).
SHORT_RECORDING_BOMBCELL = {"minNumSpikes": 100, "keepUncertainRPVUnits": True}


@pytest.fixture(scope="session")
def generated_session(tmp_path_factory) -> Path:
    """The canonical test recording (written once; copy it before modifying)."""
    folder = make_spikeglx_session(tmp_path_factory.mktemp("generated") / "demo_seed42", TEST_SPEC)
    (folder / SESSION_SETTINGS_FILE).write_text(json.dumps(CANONICAL_SETTINGS) + "\n")
    (folder / "ks_session.json").write_text(json.dumps({"bombcell": SHORT_RECORDING_BOMBCELL}) + "\n")
    return folder


@pytest.fixture(scope="session")
def dagster_instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture(scope="session")
def sorted_workspace(tmp_path_factory, generated_session, dagster_instance):
    """One full materialization of the canonical session through Dagster (shared by e2e/equivalence/determinism)."""
    base = tmp_path_factory.mktemp("sorted")
    landing = base / "landing"
    landing.mkdir()
    shutil.copytree(generated_session, landing / generated_session.name)
    ws = Workspace(landing, base / "store", dagster_instance)
    key = ws.key(landing / generated_session.name)
    result = ws.run(key)
    return ws, key, result


#: A folder name the lab chose that is not a safe partition key (space): it must not need renaming.
SESSION_FOLDER = "mouse7 day3"


def sort_every_probe(base, folder: str, write, dagster_instance):
    """Write one session with ``write(session, scratch)``, discover it in the landing root and sort each probe
    through Dagster: ``(workspace, found, what write returned, {probe: (key, run result)})``."""
    from ks_platform.core.discovery import discover

    landing = base / "landing"
    session = landing / folder
    session.mkdir(parents=True)
    written = write(session, base / "scratch")
    if not (session / SESSION_SETTINGS_FILE).exists():  # synthetic probes do not drift (as the canonical session)
        (session / SESSION_SETTINGS_FILE).write_text(json.dumps(CANONICAL_SETTINGS) + "\n")
    ws = Workspace(landing, base / "store", dagster_instance)
    found, rejected = discover(ws.platform.roots())
    assert rejected == []
    results = {item.probe_name: (item.ref.key, ws.run(item.ref.key)) for item in found}
    return ws, found, written, results


@pytest.fixture(scope="session")
def two_probe_run(tmp_path_factory, dagster_instance):
    """A two-probe, two-gate SpikeGLX run registered from the landing root and sorted probe by probe (shared by
    test_multi_probe_e2e and test_phy_gui)."""
    from ks_platform_tests.multi_probe_support import write_two_probe_two_gate_run

    base = tmp_path_factory.mktemp("two_probe")
    return sort_every_probe(base, SESSION_FOLDER, write_two_probe_two_gate_run, dagster_instance)


@pytest.fixture
def workspace(tmp_path, dagster_instance) -> Workspace:
    landing = tmp_path / "landing"
    landing.mkdir()
    return Workspace(landing, tmp_path / "store", dagster_instance)


def failure_messages(result) -> list[str]:
    """Step failure messages of a run (what the UI shows)."""
    messages = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = event.event_specific_data.error
            messages.append(error.message)
    return messages


def leftovers(store_dir: Path) -> list[Path]:
    """Temporary or swapped-out paths still in the store (must be none)."""
    return [p for p in store_dir.rglob("*") if ".tmp-" in p.name or ".old-" in p.name] if store_dir.exists() else []


@contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real filesystem of ``size`` (e.g. "16m") mounted at ``path`` for disk-full tests; needs root (CI is)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.fail(f"this test mounts a {size} tmpfs: run it as root (CI does)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def wait_until(predicate, timeout: float, what: str, poll: float = 0.2):
    """Call ``predicate`` every ``poll`` seconds until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def stop_process_group(process, timeout: float = 60) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and its children; SIGKILL them after ``timeout``."""
    import os
    import signal
    import subprocess

    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

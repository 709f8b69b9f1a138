"""A landing root, a store and an instance kept in step by the sensor or by ``register`` (the ``Harness``; the
``harness`` fixture gives one of each driver), with the small generated SpikeGLX session (``template``) its folders
are copied from.

Shared by the tests of the landing catalog: test_catalog.py, test_catalog_safety.py and test_landing_window.py.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import dagster as dg
import pytest

from ks_platform.core.catalog import Catalog, PartitionRecord
from ks_platform.core.names import SESSIONS_PARTITIONS_NAME
from ks_platform.core.store import SessionStore
from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session
from ks_platform.defs import sensors
from ks_platform.defs.resources import PlatformResource
from ks_platform.operations.sessions import register_sessions
from ks_platform_tests.sensor_support import tick

ROOT = "rig1"
DAY = 86400.0
SPEC = DemoSessionSpec(duration_s=0.5, n_units=2, seed=11)
DATE = SPEC.recording_date.isoformat()


def key_of(name: str, date: str = DATE) -> str:
    return f"{date}__{ROOT}__{name}__imec0"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return make_spikeglx_session(tmp_path_factory.mktemp("tpl") / "template", SPEC)


class Harness:
    """A landing root, a store and an instance, synced by the sensor (requests applied as the daemon does) or register."""

    def __init__(self, driver: str, template: Path, tmp_path: Path, instance: dg.DagsterInstance) -> None:
        self.driver, self.template, self.instance = driver, template, instance
        self.landing = tmp_path / "landing"
        self.landing.mkdir()
        self.store = tmp_path / "store"
        self.platform = PlatformResource(
            store_root=str(self.store), landing_roots=f"{ROOT}={self.landing}", backend="cpu"
        )
        #: The clock of both drivers (a deleted folder is retired once absent for a day: tests move it on).
        self.now = time.time()
        self.sensor = sensors.build_new_session_sensor(settle_seconds=0, marker_name="", clock=lambda: self.now)
        self.cursor: str | None = None
        self.run_keys: list[str] = []
        self.messages: list[str] = []

    def add(self, name: str) -> Path:
        return Path(shutil.copytree(self.template, self.landing / name))

    def sync(self, accept_roots: tuple[str, ...] = ()) -> set[str]:
        """One sensor tick or one ``register``; returns the instance's partitions after it. What it reported is kept
        in ``messages`` (the tick's log lines, or register's unavailable roots and absent folders)."""
        if self.driver == "sensor":
            assert not accept_roots, "the sensor takes no root as it is: that is a register decision"
            logs: list = []
            result = tick(self.sensor, self.instance, self.platform, self.cursor, logs=logs)
            self.messages = [r.getMessage() for r in logs]
            self.cursor = result.cursor
            for request in result.dynamic_partitions_requests:
                if isinstance(request, dg.AddDynamicPartitionsRequest):
                    self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
                else:
                    for key in request.partition_keys:
                        self.instance.delete_dynamic_partition(request.partitions_def_name, key)
            self.run_keys = [r.run_key for r in result.run_requests]
        else:
            outcome = register_sessions(
                self.instance, self.platform.roots(), self.store, now=self.now, accept_roots=accept_roots
            )
            self.messages = [root.message for root in outcome.unavailable] + [
                f"absent: {label}" for label, _ in outcome.absent
            ]
        return set(self.instance.get_dynamic_partitions(SESSIONS_PARTITIONS_NAME))

    def sync_after(self, seconds: float, accept_roots: tuple[str, ...] = ()) -> set[str]:
        """Move the clock on by ``seconds``, then sync."""
        self.now += seconds
        return self.sync(accept_roots)

    def record(self, key: str) -> PartitionRecord:
        with Catalog(self.store) as cat:
            found = cat.partition(key)
        assert found is not None, key
        return found

    def give_outputs(self, key: str) -> Path:
        """Pretend ``key`` was sorted: one output file in its store folder."""
        folder = SessionStore(self.store.resolve(), key).dir
        folder.mkdir(parents=True)
        (folder / "raw_recording.json").write_text("{}")
        return folder


@pytest.fixture(params=["sensor", "register"])
def harness(request, template, tmp_path):
    with dg.instance_for_test() as instance:
        yield Harness(request.param, template, tmp_path, instance)


def rewrite_meta(folder: Path, old: str, new: str) -> None:
    meta = next(folder.rglob("*.ap.meta"))
    text = meta.read_text()
    assert old in text
    meta.write_text(text.replace(old, new))

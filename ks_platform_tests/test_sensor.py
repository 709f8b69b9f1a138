"""The landing-root sensor (issue #6): readiness, idempotent run keys, fingerprint changes, bad folders, cursor.

Real generated sessions in temporary landing roots and a real Dagster instance; no Kilosort run. The
sensor function is called directly (``build_sensor_context``), so partition requests and run-key
deduplication are not applied by Dagster here; ``test_daemon_applies_requests_and_dedups_run_keys``
runs the real sensor daemon iteration for that.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import dagster as dg
import pytest

from ks_platform.core import catalog, discovery
from ks_platform.core.catalog import Catalog
from ks_platform.core.names import FINGERPRINT_TAG, MARKER_ENV, NEW_SESSION_SENSOR_NAME, SETTLE_ENV
from ks_platform.core.readiness import fast_folder_signature, is_partial_copy, scan_folder, session_ready
from ks_platform.core.sessions import key_name
from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session
from ks_platform.defs import sensors
from ks_platform.defs.ingest import raw_recording
from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME
from ks_platform.defs.resources import PlatformResource
from ks_platform_tests.sensor_support import ROOT, platform_for, tick

SMALL = DemoSessionSpec(duration_s=1.0, n_units=3, seed=7)


@pytest.fixture(scope="module")
def small_session(tmp_path_factory) -> Path:
    return make_spikeglx_session(tmp_path_factory.mktemp("small") / "template", SMALL)


@pytest.fixture
def landing(tmp_path) -> Path:
    path = tmp_path / "landing"
    path.mkdir()
    return path


def copy_session(template: Path, landing: Path, name: str) -> Path:
    return Path(shutil.copytree(template, landing / name))


def key_of(name: str) -> str:
    return f"{SMALL.recording_date.isoformat()}__{ROOT}__{name}__imec0"


def recordings(result: dg.SensorResult) -> list[dg.AssetObservation]:
    """The ``raw_recording`` observations of a tick (not the ``landing_folders`` report)."""
    return [event for event in result.asset_events if event.asset_key == raw_recording.key]


def folder_states(tmp_path: Path) -> dict[str, str]:
    """``{folder name: state}`` the catalog of the test's store holds for the landing root."""
    with Catalog(tmp_path / "store") as cat:
        return {f.name: f.state for f in cat.folders() if f.root == ROOT}


@pytest.fixture
def identify_calls(monkeypatch) -> list[Path]:
    """Folders the sensor opened (``identify_session`` calls), in order."""
    calls: list[Path] = []
    real = discovery.identify_session

    def counting(root_name, root, folder):
        calls.append(Path(folder))
        return real(root_name, root, folder)

    monkeypatch.setattr(catalog, "identify_session", counting)
    return calls


# --- core/readiness.py ---------------------------------------------------------------------------


def test_readiness_settle_marker_and_partial_copies(tmp_path):
    folder = tmp_path / "sess"
    folder.mkdir()
    assert session_ready(folder, 120, None, time.time()) == (False, "the folder is empty")
    assert session_ready(tmp_path / "gone", 120, None, time.time())[0] is False

    (folder / "run_g0").mkdir()
    (folder / "run_g0" / "a.ap.bin").write_bytes(b"\0" * 100)
    changed = scan_folder(folder).latest_change()
    ready, why = session_ready(folder, 120, None, changed + 10)
    assert not ready and "waiting until it has been unchanged for 120 s" in why
    assert session_ready(folder, 120, None, changed + 121)[0]
    assert session_ready(folder, 0, None, changed)[0]  # settle disabled

    # Marker mode: the settle time no longer matters, only the marker does.
    assert session_ready(folder, 120, ".ready", changed + 10_000) == (False, "waiting for the marker file '.ready'")
    (folder / ".ready").touch()
    assert session_ready(folder, 120, ".ready", changed + 1) == (True, "marker '.ready' present")

    # A copy still in progress is never ready, with a marker or however long it has been quiet.
    (folder / "run_g0" / "a.ap.meta.part").write_text("x")
    for marker in (".ready", None):
        ready, why = session_ready(folder, 120, marker, time.time() + 10_000)
        assert not ready and "run_g0/a.ap.meta.part" in why


def test_readiness_uses_ctime_so_preserved_mtimes_do_not_fool_it(tmp_path):
    folder = tmp_path / "sess"
    folder.mkdir()
    data = folder / "x.bin"
    data.write_bytes(b"\0" * 10)
    os.utime(data, (1_000_000_000, 1_000_000_000))  # what `cp -p` / `rsync -a` leave: a 2001 mtime
    os.utime(folder, (1_000_000_000, 1_000_000_000))
    assert not session_ready(folder, 120, None, time.time())[0]  # ctime says: just written
    assert session_ready(folder, 120, None, time.time() + 121)[0]


def test_partial_copy_names():
    for name in (
        "rec.ap.bin.part",
        "x.partial",
        "y.TMP",
        "z.crdownload",
        "w.filepart",
        ".rec.ap.bin.Xy3kQ9",
        ".rec.bin.123456",
    ):
        assert is_partial_copy(name), name
    for name in ("rec.ap.bin", "rec.ap.meta", ".ready", "COPY_DONE", ".notes.backup", "kilosort4-settings.json"):
        assert not is_partial_copy(name), name


def test_fast_signature_changes_with_any_file_change(tmp_path):
    folder = tmp_path / "sess"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.bin").write_bytes(b"\0" * 10)
    (folder / "b.json").write_text("{}")
    last = [fast_folder_signature(folder)]
    assert fast_folder_signature(folder) == last[0]  # stable when nothing changes

    def changed() -> bool:
        sig = fast_folder_signature(folder)
        new = sig != last[0]
        last[0] = sig
        return new

    with open(folder / "sub" / "a.bin", "ab") as handle:
        handle.write(b"\1")
    assert changed()  # appended
    os.utime(folder / "b.json", ns=(1, 123))
    assert changed()  # touched (mtime)
    (folder / "b.json").rename(folder / "c.json")
    assert changed()  # renamed
    (folder / "sub" / "new.txt").write_text("x")
    assert changed()  # added, in a sub-folder
    (folder / "sub" / "new.txt").unlink()
    assert changed()  # deleted


# --- the sensor ------------------------------------------------------------------------------------


def test_sensor_requests_one_run_per_complete_session(
    small_session, landing, tmp_path, dagster_instance, identify_calls
):
    folder = copy_session(small_session, landing, "mouse1_g0")
    (landing / ".hidden").mkdir()
    sensor = sensors.build_new_session_sensor(settle_seconds=0, marker_name="")
    result = tick(sensor, dagster_instance, platform_for(landing, tmp_path))

    [found] = discovery.identify_session(ROOT, landing.resolve(), folder.resolve())
    key = key_of("mouse1_g0")
    assert found.ref.key == key
    [request] = result.run_requests
    assert request.run_key == f"{key}:{found.fingerprint}"
    assert request.partition_key == key
    assert request.tags["dagster/partition"] == key
    assert request.tags[FINGERPRINT_TAG] == found.fingerprint
    [add] = result.dynamic_partitions_requests
    assert add.partitions_def_name == SESSIONS_PARTITIONS_NAME and list(add.partition_keys) == [key]

    [observation] = recordings(result)
    assert isinstance(observation, dg.AssetObservation)
    assert observation.asset_key == dg.AssetKey("raw_recording") and observation.partition == key
    meta = {
        name: getattr(value, "value", getattr(value, "text", value)) for name, value in observation.metadata.items()
    }
    assert (
        meta["format"] == "spikeglx"
        and meta["recording_date"] == "2026-03-02"
        and meta["fingerprint"] == found.fingerprint
    )
    assert meta["n_channels"] == SMALL.n_channels + 1 and meta["duration_s"] == pytest.approx(1.0)
    assert meta["size_bytes"] > 0

    assert len(result.cursor) < 100  # the catalog holds the per-folder state, the cursor only a position in it
    assert folder_states(tmp_path) == {"mouse1_g0": "session"}  # hidden folders are not candidates
    assert [p.name for p in identify_calls] == ["mouse1_g0"]


def test_sensor_waits_for_the_settle_time(small_session, landing, tmp_path, dagster_instance, identify_calls):
    copy_session(small_session, landing, "fresh")
    now = [time.time()]
    sensor = sensors.build_new_session_sensor(settle_seconds=120, marker_name="", clock=lambda: now[0])
    platform = platform_for(landing, tmp_path)

    first = tick(sensor, dagster_instance, platform)
    assert first.run_requests == [] and first.dynamic_partitions_requests == [] and recordings(first) == []
    assert "fresh (changed 0 s ago; waiting" in first.skip_reason.skip_message
    assert folder_states(tmp_path) == {}  # not handled: looked at again next tick
    assert identify_calls == []

    now[0] += 121
    second = tick(sensor, dagster_instance, platform, first.cursor)
    assert [r.partition_key for r in second.run_requests] == [key_of("fresh")]


def test_sensor_waits_for_the_marker(small_session, landing, tmp_path, dagster_instance, monkeypatch):
    folder = copy_session(small_session, landing, "copying")
    monkeypatch.setenv(MARKER_ENV, "COPY_DONE")
    sensor = sensors.build_new_session_sensor(settle_seconds=0)  # marker from the environment
    platform = platform_for(landing, tmp_path)

    first = tick(sensor, dagster_instance, platform)
    assert first.run_requests == [] and "waiting for the marker file 'COPY_DONE'" in first.skip_reason.skip_message
    (folder / "COPY_DONE").touch()
    second = tick(sensor, dagster_instance, platform, first.cursor)
    assert [r.partition_key for r in second.run_requests] == [key_of("copying")]


def test_half_copied_session_is_never_picked_up(small_session, landing, tmp_path, dagster_instance, identify_calls):
    folder = copy_session(small_session, landing, "half")
    bin_path = next(folder.glob("*.ap.bin"))
    bin_path.rename(bin_path.with_name(bin_path.name + ".part"))  # the transfer has not renamed it yet
    sensor = sensors.build_new_session_sensor(settle_seconds=0, marker_name="")
    result = tick(sensor, dagster_instance, platform_for(landing, tmp_path))
    assert result.run_requests == [] and identify_calls == []
    assert "a copy is still in progress" in result.skip_reason.skip_message


def test_idempotent_across_ticks_and_cursor_loss(small_session, landing, tmp_path, dagster_instance, identify_calls):
    copy_session(small_session, landing, "a_g0")
    copy_session(small_session, landing, "b_g0")
    sensor = sensors.build_new_session_sensor(settle_seconds=0, marker_name="")
    platform = platform_for(landing, tmp_path)

    first = tick(sensor, dagster_instance, platform)
    assert sorted(r.partition_key for r in first.run_requests) == [key_of("a_g0"), key_of("b_g0")]
    assert len(identify_calls) == 2

    # Nothing changed: the next tick opens nothing and requests nothing; the cursor is unchanged.
    second = tick(sensor, dagster_instance, platform, first.cursor)
    assert second.run_requests == [] and recordings(second) == [] and second.dynamic_partitions_requests == []
    assert len(identify_calls) == 2
    assert second.cursor == first.cursor
    assert second.skip_reason.skip_message == "no new complete session"

    # Cursor lost (sensor reset, other deployment, restart): same data → same run keys, so Dagster launches nothing new.
    fresh = tick(sensor, dagster_instance, platform, cursor=None)
    assert {r.run_key for r in fresh.run_requests} == {r.run_key for r in first.run_requests}
    garbage = tick(sensor, dagster_instance, platform, cursor="not json")
    assert {r.run_key for r in garbage.run_requests} == {r.run_key for r in first.run_requests}


def test_changed_data_gets_a_new_run_key(small_session, landing, tmp_path, dagster_instance, identify_calls):
    folder = copy_session(small_session, landing, "edited")
    sensor = sensors.build_new_session_sensor(settle_seconds=0, marker_name="")
    platform = platform_for(landing, tmp_path)
    first = tick(sensor, dagster_instance, platform)
    [before] = first.run_requests

    bin_path = next(folder.glob("*.ap.bin"))
    with open(bin_path, "r+b") as handle:  # same size, first samples rewritten (a re-export)
        handle.write(b"\x01\x02" * 64)
    second = tick(sensor, dagster_instance, platform, first.cursor)
    [after] = second.run_requests
    assert after.partition_key == before.partition_key == key_of("edited")
    assert after.run_key != before.run_key
    assert (
        after.run_key
        == f"{key_of('edited')}:{discovery.identify_session(ROOT, landing.resolve(), folder.resolve())[0].fingerprint}"
    )
    assert [a.partition for a in recordings(second)] == [key_of("edited")]

    # A change that does not touch the recording (here: only the times) re-examines the folder; nothing to sort.
    os.utime(landing / "edited" / "ground_truth.json")
    third = tick(sensor, dagster_instance, platform, second.cursor)
    assert third.run_requests == [] and third.dynamic_partitions_requests == []
    assert len(identify_calls) == 3


def test_malformed_session_is_skipped_with_reason_once(
    small_session, landing, tmp_path, dagster_instance, identify_calls
):
    copy_session(small_session, landing, "good_g0")
    bad = copy_session(small_session, landing, "bad_g0")
    next(bad.glob("*.ap.meta")).unlink()
    garbled = copy_session(small_session, landing, "garbled_g0")  # a value no reader check foresaw
    meta = next(garbled.glob("*.ap.meta"))
    meta.write_text(meta.read_text().replace("nSavedChans=33", "nSavedChans=thirty-three"))
    sensor = sensors.build_new_session_sensor(settle_seconds=0, marker_name="")
    platform = platform_for(landing, tmp_path)

    logs: list[logging.LogRecord] = []
    first = tick(sensor, dagster_instance, platform, logs=logs)
    assert [r.partition_key for r in first.run_requests] == [key_of("good_g0")]
    assert [e.partition for e in recordings(first)] == [key_of("good_g0")]
    warnings = sorted(r.getMessage() for r in logs if r.levelno == logging.WARNING)
    assert len(warnings) == 2
    assert "rig1/bad_g0" in warnings[0] and "the SpikeGLX meta file is missing" in warnings[0] and "Fix:" in warnings[0]
    assert "rig1/garbled_g0" in warnings[1] and "thirty-three" in warnings[1]
    states = folder_states(tmp_path)  # recorded: not re-logged every tick
    assert states["bad_g0"] == states["garbled_g0"] == "rejected"

    logs.clear()
    second = tick(sensor, dagster_instance, platform, first.cursor, logs=logs)
    assert second.run_requests == [] and not [r for r in logs if r.levelno >= logging.WARNING]
    assert len(identify_calls) == 3

    # Fixed (the meta copied in): examined again and requested.
    shutil.copy2(next(small_session.glob("*.ap.meta")), bad)
    third = tick(sensor, dagster_instance, platform, second.cursor)
    assert [r.partition_key for r in third.run_requests] == [key_of("bad_g0")]


def test_unsafe_folder_names_get_derived_keys_and_vanished_roots_do_not_stop_the_tick(
    small_session, landing, tmp_path, dagster_instance
):
    copy_session(small_session, landing, "ok_g0")
    copy_session(small_session, landing, "bad name")
    (landing / "not_a_session").mkdir()
    (landing / "not_a_session" / "notes.txt").write_text("hello")
    sensor = sensors.build_new_session_sensor(settle_seconds=0, marker_name="")
    platform = PlatformResource(
        store_root=str(tmp_path / "store"), landing_roots=f"{ROOT}={landing},rig2={tmp_path / 'missing_root'}"
    )
    logs: list[logging.LogRecord] = []
    result = tick(sensor, dagster_instance, platform, logs=logs)
    assert any("landing root rig2=" in r.getMessage() and "does not exist" in r.getMessage() for r in logs), [
        r.getMessage() for r in logs
    ]
    derived = key_of(key_name("bad name"))
    assert sorted(r.partition_key for r in result.run_requests) == sorted([key_of("ok_g0"), derived])
    assert "bad-name-h" in derived
    [request] = [r for r in result.run_requests if r.partition_key == derived]
    assert request.tags["ks_platform/session_folder"].endswith("/bad name")
    assert folder_states(tmp_path) == {"ok_g0": "session", "bad name": "session", "not_a_session": "rejected"}


def test_cursor_work_is_proportional_to_what_is_new(small_session, landing, tmp_path, dagster_instance, identify_calls):
    for i in range(5):
        copy_session(small_session, landing, f"s{i}_g0")
    sensor = sensors.build_new_session_sensor(
        settle_seconds=0, marker_name="", max_sessions_per_tick=3, retire_after_seconds=0
    )
    platform = platform_for(landing, tmp_path)

    first = tick(sensor, dagster_instance, platform)  # at most 3 opened per tick; the rest wait
    assert len(first.run_requests) == 3 and len(identify_calls) == 3
    second = tick(sensor, dagster_instance, platform, first.cursor)
    assert len(second.run_requests) == 2 and len(identify_calls) == 5
    assert len({r.run_key for r in first.run_requests + second.run_requests}) == 5

    copy_session(small_session, landing, "s5_g0")
    third = tick(sensor, dagster_instance, platform, second.cursor)
    assert [r.partition_key for r in third.run_requests] == [key_of("s5_g0")]
    assert [p.name for p in identify_calls[5:]] == ["s5_g0"]

    shutil.rmtree(landing / "s0_g0")  # a removed folder retires its partition (retire_after_seconds=0: at once)
    fourth = tick(sensor, dagster_instance, platform, third.cursor)
    assert fourth.run_requests == [] and len(identify_calls) == 6
    [delete] = fourth.dynamic_partitions_requests
    assert isinstance(delete, dg.DeleteDynamicPartitionsRequest) and list(delete.partition_keys) == [key_of("s0_g0")]
    assert "s0_g0" not in folder_states(tmp_path)


def test_configuration_from_environment(monkeypatch):
    monkeypatch.setenv(SETTLE_ENV, "not-a-number")
    with pytest.raises(Exception, match="KS_PLATFORM_SETTLE_SECONDS"):
        sensors.build_new_session_sensor()
    monkeypatch.setenv(SETTLE_ENV, "30")
    monkeypatch.setenv(MARKER_ENV, ".ready")
    sensor = sensors.build_new_session_sensor()
    assert "marker file '.ready'" in sensor.description
    assert sensor.minimum_interval_seconds == 60 and sensor.default_status == dg.DefaultSensorStatus.STOPPED
    monkeypatch.delenv(MARKER_ENV)
    assert "30 s without changes" in sensors.build_new_session_sensor().description
    with pytest.raises(Exception, match="plain file name"):
        sensors.build_new_session_sensor(marker_name="../done")


def test_sensor_loads_in_the_code_location(landing, tmp_path):
    from ks_platform.definitions import build_definitions

    platform = platform_for(landing, tmp_path)
    defs = build_definitions(platform)  # the default sensors are part of the code location
    sensor = defs.resolve_sensor_def(NEW_SESSION_SENSOR_NAME)
    assert sensor.job_name == "sort_session"
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED and sensor.minimum_interval_seconds == 60
    assert defs.resolve_sensor_def("daily_rollup_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    import ks_platform.definitions as location

    assert {s.name for s in location.defs.sensors} == {
        NEW_SESSION_SENSOR_NAME,
        "daily_rollup_sensor",
        "unit_tracks_sensor",
    }  # what workspace.yaml loads
    # A caller's own sensor replaces the default one (no duplicate name).
    custom = build_definitions(platform, sensors=[sensors.build_new_session_sensor(settle_seconds=0, marker_name="")])
    assert [s.name for s in custom.sensors] == [NEW_SESSION_SENSOR_NAME]
    assert defs.resolve_job_def("sort_session").partitions_def.name == SESSIONS_PARTITIONS_NAME


def test_daemon_applies_requests_and_dedups_run_keys(small_session, landing, tmp_path):
    """The real sensor daemon iteration (in-process code location; runs are created, not launched):
    partitions are added, observations stored, and a lost cursor launches nothing twice."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import create_test_daemon_workspace_context, instance_for_test
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._daemon.sensor import execute_sensor_iteration

    folder = copy_session(small_session, landing, "daemon_g0")
    location = tmp_path / "location.py"
    location.write_text(
        "import dagster as dg\n"
        "from ks_platform.definitions import build_definitions\n"
        "from ks_platform.defs.resources import PlatformResource\n"
        "from ks_platform.defs.sensors import build_new_session_sensor\n"
        "defs = build_definitions(\n"
        f"    PlatformResource(store_root={str(tmp_path / 'store')!r}, landing_roots={f'{ROOT}={landing}'!r}, backend='cpu'),\n"
        "    sensors=[build_new_session_sensor(settle_seconds=0, marker_name='', default_status=dg.DefaultSensorStatus.RUNNING)],\n"
        ")\n"
    )
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(python_file=str(location), attribute="defs", working_directory=str(tmp_path)),
        location_name="ks_platform_test",
    )
    # Runs are created and handed to a coordinator that only records them: nothing is sorted.
    overrides = {"run_coordinator": {"module": "dagster._core.test_utils", "class": "MockedRunCoordinator"}}
    with (
        instance_for_test(overrides=overrides) as instance,
        create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget([origin]), instance) as workspace,
    ):
        [entry] = workspace.create_request_context().get_code_location_entries().values()
        remote_sensor = entry.code_location.get_repository("__repository__").get_sensor(NEW_SESSION_SENSOR_NAME)

        def daemon_tick(reset_cursor: bool = False) -> None:
            state = instance.get_instigator_state(remote_sensor.get_remote_origin_id(), remote_sensor.selector_id)
            if state is not None:  # pretend the minimum interval has passed (and optionally lose the cursor)
                data = state.instigator_data
                instance.update_instigator_state(
                    state.with_data(
                        data._replace(
                            last_tick_timestamp=None,
                            last_tick_start_timestamp=None,
                            cursor=None if reset_cursor else data.cursor,
                        )
                    )
                )
            list(execute_sensor_iteration(workspace, logging.getLogger("test_sensor"), None, None))

        key = key_of("daemon_g0")
        daemon_tick()
        [run] = instance.get_runs()
        assert run.tags["dagster/partition"] == key and run.tags["dagster/sensor_name"] == NEW_SESSION_SENSOR_NAME
        assert instance.get_dynamic_partitions(SESSIONS_PARTITIONS_NAME) == [key]
        [observed] = instance.fetch_observations(dg.AssetKey("raw_recording"), limit=5).records
        assert observed.asset_observation.partition == key

        daemon_tick()  # cursor kept: nothing examined
        daemon_tick(reset_cursor=True)  # cursor lost: requested again, deduplicated by run key
        assert [r.run_id for r in instance.get_runs()] == [run.run_id]
        ticks = instance.get_ticks(remote_sensor.get_remote_origin_id(), remote_sensor.selector_id)
        assert [t.run_keys for t in reversed(ticks)] == [
            [run.tags["dagster/run_key"]],
            [],
            [run.tags["dagster/run_key"]],
        ]

        with open(next(folder.glob("*.ap.bin")), "r+b") as handle:
            handle.write(b"\x05\x06" * 32)
        daemon_tick()  # changed data: sorted again
        runs = instance.get_runs()
        assert len(runs) == 2 and runs[0].tags["dagster/run_key"] != run.tags["dagster/run_key"]
        assert instance.get_dynamic_partitions(SESSIONS_PARTITIONS_NAME) == [key]

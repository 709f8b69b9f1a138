"""Bad sessions fail their own run with one message naming the file and the fix, and leave nothing partial."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import probeinterface as pi
import pytest

from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session
from ks_platform_tests.conftest import failure_messages, leftovers

SHORT = DemoSessionSpec(duration_s=2.0, n_units=3, seed=7)


@pytest.fixture(scope="module")
def short_session(tmp_path_factory) -> Path:
    return make_spikeglx_session(tmp_path_factory.mktemp("short") / "short_session", SHORT)


def _copy(short_session: Path, landing: Path, name: str) -> Path:
    target = landing / name
    shutil.copytree(short_session, target)
    return target


def _assert_clean_failure(ws, key: str, failed_step_output: str, must_name: str, fix_hint: str) -> str:
    result = ws.run(key)
    assert not result.success
    messages = failure_messages(result)
    assert len(messages) == 1, messages
    message = messages[0]
    assert must_name in message and "Fix:" in message and fix_hint in message, message
    store = ws.store(key)
    assert not (store.dir / failed_step_output).exists(), f"partial {failed_step_output} left in the store"
    assert leftovers(store.dir) == []
    return message


def test_truncated_bin(workspace, short_session):
    folder = _copy(short_session, workspace.landing, "truncated")
    bin_path = next(folder.glob("*.ap.bin"))
    with open(bin_path, "r+b") as handle:
        handle.truncate(bin_path.stat().st_size - 3)
    _assert_clean_failure(workspace, workspace.key(folder), "raw_recording.json", bin_path.name, "copy the .bin again")


def test_meta_channel_count_disagrees(workspace, short_session):
    folder = _copy(short_session, workspace.landing, "badmeta")
    meta = next(folder.glob("*.ap.meta"))
    meta.write_text(meta.read_text().replace("nSavedChans=33", "nSavedChans=34"))
    _assert_clean_failure(workspace, workspace.key(folder), "raw_recording.json", meta.name, "restore the .meta")


def test_unknown_kilosort_setting(workspace, short_session):
    folder = _copy(short_session, workspace.landing, "badsettings")
    (folder / "kilosort4-settings.json").write_text(json.dumps({"batch_sise": 30000}))
    message = _assert_clean_failure(
        workspace, workspace.key(folder), "sorting", "kilosort4-settings.json", "rename or remove 'batch_sise'"
    )
    assert "did you mean 'batch_size'" in message


def test_probe_with_duplicate_channels(workspace):
    folder = workspace.landing / "dupprobe"
    folder.mkdir()
    rng = np.random.default_rng(0)
    (rng.normal(0, 20, size=(30_000, 32))).astype(np.int16).tofile(folder / "recording.bin")
    probe = pi.generate_linear_probe(num_elec=32, ypitch=20)
    probe.set_device_channel_indices(np.arange(32))
    pi.write_probeinterface(folder / "probe.json", probe)
    payload = json.loads((folder / "probe.json").read_text())
    payload["probes"][0]["device_channel_indices"][5] = 4
    (folder / "probe.json").write_text(json.dumps(payload))
    (folder / "recording.json").write_text(
        json.dumps(
            {
                "sampling_frequency": 30000,
                "n_channels": 32,
                "dtype": "int16",
                "probe_file": "probe.json",
                "recording_date": "2026-03-02",
            }
        )
    )
    _assert_clean_failure(
        workspace, workspace.key(folder), "probe", "probe.json", "give every contact its own channel index"
    )


def test_bad_session_does_not_stop_others(workspace, short_session):
    """A broken session and a good one in the same landing root: the good one still gets its probe and binary."""
    bad = _copy(short_session, workspace.landing, "broken")
    (next(bad.glob("*.ap.meta"))).unlink()
    good = _copy(short_session, workspace.landing, "fine")
    from ks_platform.core.discovery import discover

    found, rejected = discover(workspace.platform.roots())
    assert [s.folder.name for s in found] == ["fine"]
    assert rejected[0].folder.name == "broken" and "meta file is missing" in rejected[0].reason
    result = workspace.run_assets(workspace.key(good), ["raw_recording", "probe_map", "recording_binary"])
    assert result.success
    store = workspace.store(workspace.key(good))
    assert (store.probe_dir / "probe_map.json").is_file() and (store.binary_dir / "binary.json").is_file()


def test_meta_with_non_numeric_value(workspace, short_session):
    folder = _copy(short_session, workspace.landing, "wordymeta")
    meta = next(folder.glob("*.ap.meta"))
    meta.write_text(meta.read_text().replace("nSavedChans=33", "nSavedChans=thirty-three"))
    message = _assert_clean_failure(
        workspace, workspace.key(folder), "raw_recording.json", meta.name, "restore the .meta"
    )
    assert "is not a number" in message

"""The bad-input matrix (issues #3 and #8): every kind of bad input, across formats, probes, parameters and
configuration, fails its own session with ONE message that names the file and says what to do ("Fix: …"),
leaves nothing partial in the store, and does not stop the other sessions of the same batch."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import probeinterface as pi
import pytest

from ks_platform.core.discovery import discover
from ks_platform.core.errors import PlatformConfigError, SessionInputError
from ks_platform.core.sessions import SessionRef, session_dir
from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session, np1_probe
from ks_platform_tests.conftest import failure_messages, leftovers
from ks_platform_tests.writers import write_plexon_session

SHORT = DemoSessionSpec(duration_s=2.0, n_units=3, seed=11)
DATE = dt.date(2026, 3, 2)


@dataclass(frozen=True)
class BadInput:
    """One kind of bad input: how to make it from a good session folder, and the file its error must name."""

    kind: str
    make: Callable[[Path], Path]  # (session folder) -> the file the message must name
    fix_hint: str


def _spikeglx(folder: Path) -> tuple[Path, Path]:
    [data] = folder.glob("*.ap.bin")
    return data, data.with_suffix(".meta")


def _edit_meta(folder: Path, key: str, value: str) -> Path:
    _, meta = _spikeglx(folder)
    lines = [f"{key}={value}" if line.startswith(f"{key}=") else line for line in meta.read_text().splitlines()]
    meta.write_text("\n".join(lines) + "\n")
    return meta


def _truncate(folder: Path, size: int | None = None) -> Path:
    data, _ = _spikeglx(folder)
    with open(data, "r+b") as handle:
        handle.truncate(data.stat().st_size - 3 if size is None else size)
    return data


def _settings(folder: Path, text: str) -> Path:
    path = folder / "kilosort4-settings.json"
    path.write_text(text)
    return path


def _raw_session(
    folder: Path, traces: np.ndarray, probe: pi.Probe, dtype: str = "int16", sidecar_extra: dict | None = None
) -> tuple[Path, Path, Path]:
    """Replace the folder's content by a raw binary + sidecar + probe file."""
    shutil.rmtree(folder)
    folder.mkdir()
    data = folder / "rec.bin"
    traces.astype(dtype).tofile(data)
    group = pi.ProbeGroup()
    group.add_probe(probe)
    pi.write_probeinterface(folder / "probe.json", group)
    sidecar = {
        "sampling_frequency": 30000.0,
        "n_channels": traces.shape[1],
        "dtype": dtype,
        "probe_file": "probe.json",
        "recording_date": DATE.isoformat(),
        **(sidecar_extra or {}),
    }
    (folder / "rec.json").write_text(json.dumps(sidecar))
    return data, folder / "rec.json", folder / "probe.json"


def _noise(n_channels: int = 32, dtype=np.int16) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 20, size=(30000, n_channels)).astype(dtype)


def _float_with(value: float) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        traces = _noise(dtype=np.float32)
        traces[1234, 5] = value
        data, _, _ = _raw_session(folder, traces, np1_probe(32), dtype="float32")
        return data

    return make


def _probe_file(mutate: Callable[[pi.Probe], pi.Probe], n_data_channels: int = 32) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        _, _, probe_path = _raw_session(folder, _noise(n_data_channels), mutate(np1_probe(32)))
        return probe_path

    return make


def _duplicate_channels(probe: pi.Probe) -> pi.Probe:
    channels = np.arange(probe.get_contact_count())
    channels[3] = channels[2]
    probe.set_device_channel_indices(channels)
    return probe


def _in_millimetres(probe: pi.Probe) -> pi.Probe:
    scaled = pi.Probe(ndim=2, si_units="um")
    scaled.set_contacts(positions=probe.contact_positions / 1000.0, shapes="square", shape_params={"width": 0.012})
    scaled.set_device_channel_indices(probe.device_channel_indices)
    return scaled


def _nwb_without_series(folder: Path) -> Path:
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    shutil.rmtree(folder)
    folder.mkdir()
    nwbfile = NWBFile(
        session_description="behaviour only",
        identifier="no-ephys",
        session_start_time=dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc),
    )
    nwbfile.add_acquisition(TimeSeries(name="running_speed", data=np.zeros(100), unit="m/s", rate=10.0))
    with NWBHDF5IO(str(folder / "behaviour.nwb"), mode="w") as io:
        io.write(nwbfile)
    return folder / "behaviour.nwb"


def _corrupt_plx(folder: Path) -> Path:
    shutil.rmtree(folder)
    write_plexon_session(folder, _noise(), 30000.0, np1_probe(32).contact_positions, DATE)
    [plx] = folder.glob("*.plx")
    with open(plx, "r+b") as handle:
        handle.write(b"XXXX")  # the magic number
    return plx


def _mixed_formats(folder: Path) -> Path:
    (folder / "extra.bin").write_bytes(b"\0" * 64)
    (folder / "extra.json").write_text(json.dumps({"sampling_frequency": 30000, "n_channels": 32, "dtype": "int16"}))
    return folder


def _data_linked_outside(folder: Path) -> Path:
    data, _ = _spikeglx(folder)
    outside = folder.parent.parent / "outside"
    outside.mkdir(exist_ok=True)
    shutil.move(data, outside / data.name)
    os.symlink(outside / data.name, data)
    return data


CASES = [
    BadInput("truncated .bin", lambda f: _truncate(f), "copy the .bin again"),
    BadInput("zero-length .bin", lambda f: _truncate(f, 0), "copy the recording again"),
    BadInput("meta channel count disagrees", lambda f: _edit_meta(f, "nSavedChans", "40"), "restore the .meta"),
    BadInput(
        "meta sampling rate disagrees with the data size",
        lambda f: _edit_meta(f, "imSampRate", "25000"),
        "restore the .meta",
    ),
    BadInput("missing .meta", lambda f: (_spikeglx(f)[1].unlink(), _spikeglx(f)[1])[1], "copy the .ap.meta"),
    BadInput("non-numeric meta value", lambda f: _edit_meta(f, "imSampRate", "thirty-thousand"), "restore the .meta"),
    BadInput("mixed formats in one folder", _mixed_formats, "one recording format per session folder"),
    BadInput("NaN in a float source", _float_with(float("nan")), "without NaN/inf"),
    BadInput("inf in a float source", _float_with(float("inf")), "without NaN/inf"),
    BadInput(
        "sidecar is not JSON",
        lambda f: (_raw_session(f, _noise(), np1_probe(32))[1].write_text("{n_channels: 32"), f / "rec.json")[1],
        "fix the JSON syntax",
    ),
    BadInput("probe with duplicate channels", _probe_file(_duplicate_channels), "its own channel index"),
    BadInput(
        "probe with more channels than the data",
        _probe_file(lambda p: p, n_data_channels=16),
        "use the probe file that matches",
    ),
    BadInput("probe in millimetres", _probe_file(_in_millimetres), "micrometres"),
    BadInput("NWB without an ElectricalSeries", _nwb_without_series, "ElectricalSeries"),
    BadInput("corrupt .plx header", _corrupt_plx, "copy the .plx again"),
    BadInput("data file linked from outside the session", _data_linked_outside, "inside the session folder"),
    BadInput("settings file is not JSON", lambda f: _settings(f, '{"batch_size": 60000,'), "fix the JSON syntax"),
    BadInput(
        "unknown Kilosort setting", lambda f: _settings(f, '{"batch_sise": 60000}'), "rename or remove 'batch_sise'"
    ),
    BadInput("zero batch size", lambda f: _settings(f, '{"batch_size": 0}'), "batch_size"),
    BadInput("negative batch size", lambda f: _settings(f, '{"batch_size": -5000}'), "batch_size"),
    BadInput(
        "setting of the wrong type", lambda f: _settings(f, '{"nblocks": "two"}'), "set 'nblocks' to a whole number"
    ),
    BadInput(
        "settings overriding what the recording defines", lambda f: _settings(f, '{"n_chan_bin": 64}'), "n_chan_bin"
    ),
]


@pytest.fixture(scope="module")
def good_template(tmp_path_factory) -> Path:
    return make_spikeglx_session(tmp_path_factory.mktemp("matrix_template") / "template", SHORT)


def test_the_matrix_covers_at_least_twenty_kinds():
    assert len(CASES) + len(NAME_CASES) + 1 >= 20  # + the inventory case below


@pytest.mark.parametrize("case", CASES, ids=[c.kind for c in CASES])
def test_bad_input_fails_its_session_clearly_and_cleanly(case, workspace, good_template):
    folder = shutil.copytree(good_template, workspace.landing / "bad_session")
    named = case.make(folder)
    good = shutil.copytree(good_template, workspace.landing / "good_session")
    bad_key, good_key = workspace.key(folder), workspace.key(good)

    result = workspace.run(bad_key)
    assert not result.success
    [message] = failure_messages(result)
    assert str(named) in message or named.name in message, message
    assert "Fix:" in message and case.fix_hint in message.split("Fix:", 1)[1], message
    store = workspace.store(bad_key)
    assert not any((store.dir / step).exists() for step in ("sorting", "phy", "metrics")), (
        "no output after a failed step"
    )
    assert leftovers(store.dir) == []

    # the next session of the same batch is unaffected: its ingest steps complete on the same store
    ok = workspace.instance, workspace.run_assets(good_key, ["raw_recording", "probe_map", "recording_binary"])
    assert ok[1].success


NAME_CASES = ["with space", "ünïcode", "shell;rm -rf", "$(id)", "a__b", "up..down", "back`tick`"]


def test_folder_names_that_are_not_safe_keys_get_derived_keys_and_keep_their_real_names(tmp_path, good_template):
    landing = tmp_path / "landing"
    shutil.copytree(good_template, landing / "good_one")
    for name in NAME_CASES:
        shutil.copytree(good_template, landing / name)
    found, rejected = discover({"rig1": landing})
    assert rejected == []
    by_folder = {f.folder.name: f for f in found}
    assert sorted(by_folder) == sorted(["good_one", *NAME_CASES])
    assert by_folder["good_one"].ref.name == "good_one"
    keys = [f.ref.key for f in found]
    assert len(set(keys)) == len(keys)
    for name in NAME_CASES:
        item = by_folder[name]
        assert item.ref.name != name and SessionRef.parse(item.ref.key) == item.ref
        assert item.metadata()["folder_name"] == name
        assert session_dir(item.ref, {"rig1": landing}) == (landing / name).resolve()


def test_an_inventory_with_an_unknown_backend_names_the_file_and_the_fix(tmp_path):
    from ks_platform.execution.inventory import load_inventory

    path = tmp_path / "inventory.yaml"
    path.write_text("hosts:\n  - name: laptop\n    docker_url: unix:///var/run/docker.sock\n    backend: opencl\n")
    with pytest.raises((PlatformConfigError, SessionInputError)) as caught:
        load_inventory(path)
    message = str(caught.value)
    assert str(path) in message and "opencl" in message and ("Fix" in message or "use one of" in message), message

"""The session config files (``ks_session.json``, ``kilosort4-settings.json``): found at any depth, applied per
probe, and never silently ignored."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import probeinterface as pi
import pytest

from ks_platform.core import pipeline, session_config
from ks_platform.core.discovery import discover
from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import list_probes, open_recording, probe_config
from ks_platform.core.names import SESSION_SETTINGS_FILE
from ks_platform.core.store import SessionStore
from ks_platform.core.synthetic import GlxProbe, np1_probe, write_spikeglx_run
from ks_platform_tests.writers import write_openephys_session


@pytest.fixture
def run(tmp_path) -> Path:
    """A two-probe SpikeGLX run nested as SpikeGLX writes it: ``run_g0/run_g0_imec{0,1}/…``."""
    folder = tmp_path / "landing" / "m1"
    write_spikeglx_run(folder, (GlxProbe("imec0"), GlxProbe("imec1")))
    return folder


def _write(path: Path, payload) -> Path:
    path.write_text(json.dumps(payload) if not isinstance(payload, (str, bytes)) else payload) if not isinstance(
        payload, bytes
    ) else path.write_bytes(payload)
    return path


def test_session_folder_settings_apply_to_every_probe_and_a_probe_section_to_its_probe(run):
    _write(
        run / session_config.CONFIG_FILE,
        {"kilosort": {"Th_universal": 10}, "probes": {"imec1": {"kilosort": {"Th_learned": 7}}}},
    )
    assert probe_config(run, "imec0").kilosort == {"Th_universal": 10}
    assert probe_config(run, "imec1").kilosort == {"Th_universal": 10, "Th_learned": 7}
    assert pipeline.session_settings_version(run, "imec0") != pipeline.session_settings_version(run, "imec1")


def test_a_settings_file_next_to_a_nested_recording_applies_to_that_probe_only_and_wins(run):
    """The first wave's bug: kilosort4-settings.json in ``<run>_imec0/`` was silently ignored."""
    _write(run / session_config.CONFIG_FILE, {"kilosort": {"Th_universal": 10}})
    nested = _write(run / "run_g0" / "run_g0_imec0" / SESSION_SETTINGS_FILE, {"Th_universal": 12, "batch_size": 30000})
    imec0, imec1 = probe_config(run, "imec0"), probe_config(run, "imec1")
    assert imec0.kilosort == {"Th_universal": 12, "batch_size": 30000} and imec0.files[-1] == nested
    assert imec1.kilosort == {"Th_universal": 10} and nested not in imec1.files
    source = open_recording(run, "imec0")
    assert str(nested) in source.details["config_files"]


def test_an_unknown_setting_next_to_the_nested_recording_is_an_error_naming_it(run):
    bad = _write(run / "run_g0" / "run_g0_imec0" / SESSION_SETTINGS_FILE, {"Th_universl": 12})
    with pytest.raises(SessionInputError, match="Th_universal") as caught:
        probe_config(run, "imec0")
    assert caught.value.path == bad
    assert pipeline.session_settings_version(run, "imec0").startswith("invalid-")
    # the session is still registered: the typo fails imec0's sort (with this message, in the UI), not discovery
    found, rejected = discover({"rig1": run.parent})
    assert [f.ref.probe for f in found] == ["imec0", "imec1"] and rejected == []


def test_recording_date_override_moves_the_partition_key(run):
    _write(run / session_config.CONFIG_FILE, {"recording_date": "2025-12-31"})
    assert open_recording(run, "imec1").recording_date == dt.date(2025, 12, 31)
    found, _ = discover({"rig1": run.parent})
    assert [f.ref.key for f in found] == ["2025-12-31__rig1__m1__imec0", "2025-12-31__rig1__m1__imec1"]


def test_a_probe_file_for_a_recording_without_geometry(tmp_path):
    """Open Ephys without Neuropixels geometry (settings.xml lost or an acquisition board): the lab names a probe file."""
    session = tmp_path / "oe"
    traces = np.random.default_rng(0).integers(-200, 200, (3000, 32), dtype=np.int16)
    positions = np1_probe(32).contact_positions
    write_openephys_session(session, traces, 30000.0, positions, dt.date(2026, 3, 2))
    for settings in session.rglob("settings.xml"):
        settings.unlink()
    [probe] = list_probes(session).probes
    store = SessionStore(tmp_path / "store", f"2026-03-02__rig1__oe__{probe}")
    pipeline.observe_raw_recording(session, store, probe)
    with pytest.raises(SessionInputError, match="ks_session.json"):
        pipeline.build_probe_map(session, store, probe=probe)
    group = pi.ProbeGroup()
    probe_object = np1_probe(32)
    group.add_probe(probe_object)
    pi.write_probeinterface(session / "my_probe.json", group)
    _write(session / session_config.CONFIG_FILE, {"probes": {probe: {"probe_file": "my_probe.json"}}})
    pipeline.observe_raw_recording(session, store, probe)
    made = pipeline.build_probe_map(session, store, probe=probe)
    assert made.metadata["n_sorted_channels"] == 32 and made.metadata["probe_source"].endswith("my_probe.json")


@pytest.mark.parametrize(
    ("name", "payload", "problem"),
    [
        ("unknown top-level key", {"kilosrt": {}}, "unknown key"),
        ("unknown probe", {"probes": {"imec7": {"kilosort": {}}}}, "imec7"),
        ("unknown probe-section key", {"probes": {"imec0": {"sort": 1}}}, "unknown key"),
        ("probes not an object", {"probes": ["imec0"]}, "'probes' must map"),
        ("bad date", {"recording_date": "yesterday"}, "YYYY-MM-DD"),
        ("date as a number", {"recording_date": 20260302}, "YYYY-MM-DD"),
        ("missing probe file", {"probe_file": "nope.json"}, "does not exist"),
        ("probe file outside the session", {"probe_file": "../../../etc/passwd"}, "outside"),
        ("Kilosort value out of range", {"kilosort": {"batch_size": -5}}, "batch_size"),
        ("a list, not an object", [1, 2], "JSON object"),
        ("not UTF-8", "\udcff".encode("utf-8", "surrogateescape") + b'{"kilosort": {}}', "UTF-8"),
        ("nested 100k deep", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("invalid JSON", '{"kilosort": ', "not valid JSON"),
    ],
)
def test_bad_config_files_are_one_clear_error_naming_the_file(run, name, payload, problem):
    path = _write(run / session_config.CONFIG_FILE, payload)
    with pytest.raises(SessionInputError, match=problem) as caught:
        open_recording(run, "imec0") if "Kilosort" not in name else probe_config(run, "imec0")
    assert caught.value.path == path and caught.value.fix, name


def test_a_config_that_applies_to_no_probe_or_is_a_folder_is_refused(run):
    notes = run / "notes"
    notes.mkdir()
    stray = _write(notes / session_config.CONFIG_FILE, {"kilosort": {"Th_universal": 10}})
    with pytest.raises(SessionInputError, match="applies to no probe") as caught:
        list_probes(run)
    assert caught.value.path == stray
    shutil.rmtree(notes)
    (run / session_config.CONFIG_FILE).mkdir()
    with pytest.raises(SessionInputError, match="not a regular file"):
        list_probes(run)


def test_one_bad_config_stops_only_its_own_session(run):
    good = run.parent / "m2"
    write_spikeglx_run(good, (GlxProbe("imec0"),))
    _write(run / session_config.CONFIG_FILE, {"probes": {"imec9": {}}})
    found, rejected = discover({"rig1": run.parent})
    assert [f.ref.key for f in found] == ["2026-03-02__rig1__m2__imec0"]
    assert [r.folder.name for r in rejected] == ["m1"] and "imec9" in rejected[0].reason


def test_split_segments_makes_one_partition_per_gate_with_the_probe_settings(tmp_path):
    """Gates are concatenated by default (CatGT's convention); the lab may ask for one sort per gate instead."""
    session = tmp_path / "landing" / "m3"
    written = write_spikeglx_run(session, (GlxProbe("imec0"), GlxProbe("imec1")), gates=(0, 1))
    found, _ = discover({"rig1": session.parent})
    assert [f.ref.probe for f in found] == ["imec0", "imec1"]
    _write(
        session / session_config.CONFIG_FILE,
        {"probes": {"imec0": {"split_segments": True, "kilosort": {"Th_universal": 11}}}},
    )
    found, rejected = discover({"rig1": session.parent})
    assert rejected == [] and [f.ref.probe for f in found] == ["imec0-g0", "imec0-g1", "imec1"]
    gate1 = open_recording(session, "imec0-g1")
    assert gate1.n_samples == 200 and [s.label for s in gate1.timeline] == ["g1_t0"]
    assert np.array_equal(
        gate1.read_chunk(0, 200), np.fromfile(written["imec0"][1], np.int16).reshape(200, -1)[:, :384]
    )
    assert (
        probe_config(session, "imec0-g1").kilosort == {"Th_universal": 11}
        and probe_config(session, "imec1").kilosort == {}
    )
    _write(session / session_config.CONFIG_FILE, {"probes": {"imec0": {"split_segments": "yes"}}})
    with pytest.raises(SessionInputError, match="split_segments must be true or false"):
        list_probes(session)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "must hold a JSON object"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"Th_universal": ', "not valid JSON"),
        (b" " * (1024 * 1024 + 1) + b"{}", "larger than 1024 KiB"),
    ],
)
def test_a_settings_file_given_to_a_command_is_read_as_carefully_as_a_session_config(tmp_path, content, problem):
    from ks_platform.core.settings import read_overrides_file

    path = tmp_path / "my-settings.json"
    path.write_bytes(content)
    with pytest.raises(SessionInputError) as caught:
        read_overrides_file(path)
    assert problem in str(caught.value) and str(path) in str(caught.value)

"""The sensor over a landing root that mixes every layout the rigs write registers exactly the expected partitions."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

from ks_platform.core.discovery import discover
from ks_platform.core.sessions import key_name
from ks_platform.core.synthetic import GlxProbe, np1_probe, write_spikeglx_run
from ks_platform.defs import sensors
from ks_platform_tests.nwb_support import START as NWB_START
from ks_platform_tests.nwb_support import _linear_positions, _noise, _series, _write_pynwb
from ks_platform_tests.sensor_support import ROOT, platform_for, tick
from ks_platform_tests.writers import (
    OpenEphysProbe,
    openephys_channels,
    openephys_stream_entry,
    write_openephys_node,
    write_plexon_session,
)

DAY = dt.date(2026, 3, 2)
NP2_SUBSET = (*range(36), *range(72, 96), *range(192, 228), *range(264, 288))
UNSAFE_FOLDER = "Mouse 9 (ünï) day 2"


def _landing(landing: Path) -> dict[str, list[str]]:
    """Write every layout under ``landing``; return ``<date>__<root>__<folder>`` → expected probe key names."""
    write_spikeglx_run(
        landing / "glx_two_probes",
        (GlxProbe("imec0"), GlxProbe("imec1", NP2_SUBSET, np2=True)),
        gates=(0, 1),
        triggers=(0, 1),
        other_streams=True,
    )
    write_spikeglx_run(landing / "glx_catgt", (GlxProbe("imec0"), GlxProbe("imec1")), catgt=True)
    write_spikeglx_run(landing / "glx_split", (GlxProbe("imec0"),), gates=(0, 1))
    (landing / "glx_split" / "ks_session.json").write_text(json.dumps({"probes": {"imec0": {"split_segments": True}}}))
    write_spikeglx_run(landing / UNSAFE_FOLDER, (GlxProbe("imec0"),))
    noise = np.random.default_rng(0).integers(-200, 200, (600, 32), dtype=np.int16)
    nidaq = openephys_stream_entry(
        "NI-DAQmx", 102, "PXIe-6341", 30000.0, openephys_channels([f"AI{i}" for i in range(8)], 0.000305, "V")
    )
    positions = np1_probe(32).contact_positions
    write_openephys_node(
        landing / "oe_node",
        [OpenEphysProbe("ProbeA", noise, positions), OpenEphysProbe("ProbeB", noise, positions + [0, 400])],
        30000.0,
        DAY,
        extra_streams=[nidaq],
    )
    ap = _noise(seed=1)
    rel = _linear_positions()
    nwb_series = [
        _series("ElectricalSeriesAPImec0", ap, conversion=2.34375e-6, rows=range(32)),
        _series("ElectricalSeriesAPImec1", ap, conversion=2.34375e-6, rows=range(32, 64)),
        _series("ElectricalSeriesLFImec0", ap[::12], rate=2500.0, conversion=4.6875e-6, rows=range(32)),
    ]
    both = np.vstack([rel, rel + [0, 1000]])
    _write_pynwb(landing / "nwb_two_series" / "rec.nwb", nwb_series, {"rel_x": both[:, 0], "rel_y": both[:, 1]})
    write_plexon_session(landing / "plexon", noise, 30000.0, positions, DAY)
    broken = landing / "glx_missing_meta"
    write_spikeglx_run(broken, (GlxProbe("imec0"),))
    next(broken.rglob("*.ap.meta")).unlink()
    on_day = {
        "glx_two_probes": ["imec0", "imec1"],
        "glx_catgt": ["imec0", "imec1"],
        "glx_split": ["imec0-g0", "imec0-g1"],
        key_name(UNSAFE_FOLDER): ["imec0"],
        "oe_node": ["ProbeA", "ProbeB"],
        "plexon": ["session"],
    }
    sessions = {f"{DAY}__{ROOT}__{folder}": probes for folder, probes in on_day.items()}
    sessions[f"{NWB_START.date()}__{ROOT}__nwb_two_series"] = ["ElectricalSeriesAPImec0", "ElectricalSeriesAPImec1"]
    return sessions


def test_the_sensor_registers_exactly_one_partition_per_probe_of_every_layout(tmp_path, dagster_instance):
    landing = tmp_path / "landing"
    expected = _landing(landing)
    keys = sorted(f"{session}__{probe}" for session, probes in expected.items() for probe in probes)
    result = tick(
        sensors.build_new_session_sensor(settle_seconds=0, marker_name="", max_sessions_per_tick=None),
        dagster_instance,
        platform_for(landing, tmp_path),
    )
    assert sorted(r.partition_key for r in result.run_requests) == keys
    [added] = result.dynamic_partitions_requests
    assert sorted(added.partition_keys) == keys
    by_key = {event.partition: event.metadata for event in result.asset_events if event.partition}
    two = by_key[f"{DAY}__{ROOT}__glx_two_probes__imec1"]
    assert two["session_probes"].value == ["imec0", "imec1"]
    assert any("nidq" in s for s in two["skipped_streams"].value) and any(
        ".lf.bin" in s for s in two["skipped_streams"].value
    )
    assert by_key[f"{DAY}__{ROOT}__{key_name(UNSAFE_FOLDER)}__imec0"]["folder_name"].value == UNSAFE_FOLDER
    assert any("NI-DAQ" in s for s in by_key[f"{DAY}__{ROOT}__oe_node__ProbeA"]["skipped_streams"].value)
    assert any(
        "2500 Hz" in s
        for s in by_key[f"{NWB_START.date()}__{ROOT}__nwb_two_series__ElectricalSeriesAPImec0"]["skipped_streams"].value
    )
    found, rejected = discover({ROOT: landing})
    assert sorted(f.ref.key for f in found) == keys
    assert [r.folder.name for r in rejected] == ["glx_missing_meta"] and ".ap.meta" in rejected[0].reason

"""Rig-shaped sessions end to end through Dagster: every probe of a run is its own partition that sorts, exports
to Phy and passes its ground truth; gates are concatenated in time; unsafe folder names get derived keys."""

from __future__ import annotations

import numpy as np
import pytest

from ks_platform.core.phy import SEGMENTS_TSV, validate_phy_folder
from ks_platform.core.store import read_json
from ks_platform_tests.conftest import ROOT_NAME, SESSION_FOLDER, failure_messages, sort_every_probe
from ks_platform_tests.multi_probe_support import OPENEPHYS_PROBES, SUBSET_CHANNELS, write_openephys_two_probe_node

#: The Open Ephys rig's session folder (one Record Node, ProbeA + ProbeB + an NI-DAQ board).
OPENEPHYS_FOLDER = "mouse8"


def test_each_probe_of_the_run_is_one_partition_with_a_derived_key(two_probe_run):
    _, found, _, _ = two_probe_run
    assert [item.probe_name for item in found] == ["imec0", "imec1"]
    keys = [item.ref.key for item in found]
    assert all(key.startswith(f"2026-03-02__{ROOT_NAME}__mouse7-day3-h") for key in keys), keys
    assert [key.rsplit("__", 1)[1] for key in keys] == ["imec0", "imec1"]
    meta = found[0].metadata()
    assert meta["folder_name"] == SESSION_FOLDER and meta["session_probes"] == ["imec0", "imec1"]
    assert len(meta["skipped_streams"]) == 2 and all("nidq" in s for s in meta["skipped_streams"])


@pytest.mark.parametrize("probe", ["imec0", "imec1"])
def test_each_probe_sorts_exports_to_phy_and_matches_its_ground_truth(two_probe_run, probe):
    ws, _, _, results = two_probe_run
    key, result = results[probe]
    assert result.success, failure_messages(result)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    truth = checks["sorted_units_match_ground_truth"]
    assert truth.passed and "has_ground_truth" not in truth.metadata, (
        truth.metadata
    )  # the key is set only without truth
    assert truth.metadata["well_detected_units"].value >= 4
    bundle = validate_phy_folder(ws.store(key).phy_dir)
    # converted (two files): the sync channel is not copied
    assert bundle.n_spikes > 0 and bundle.traces_shape == (450_000, 32)


def test_the_saved_subset_keeps_all_its_channels_at_their_acquired_positions(two_probe_run):
    ws, _, _, results = two_probe_run
    key, _ = results["imec1"]
    store = ws.store(key)
    raw = read_json(store.raw_manifest)
    assert raw["n_sorting_channels"] == len(SUBSET_CHANNELS) == 32
    probe = read_json(store.probe_dir / "kilosort_probe.json")
    assert len(probe["chanMap"]) == 32
    assert min(probe["yc"]) == 960  # acquired channel 96 sits 960 µm up: positions follow acquired ids, not file order


def test_gates_are_concatenated_in_time_with_the_boundaries_recorded(two_probe_run):
    ws, _, files, results = two_probe_run
    key, _ = results["imec0"]
    store = ws.store(key)
    segments = read_json(store.raw_manifest)["segments"]
    assert [(s["gate"], s["start_sample"], s["n_samples"]) for s in segments] == [
        (0, 0, 225_000),
        (1, 225_000, 225_000),
    ]
    binary = np.fromfile(store.binary_dir / "recording.bin", dtype=np.int16).reshape(-1, 32)
    appended = np.concatenate([np.fromfile(path, dtype=np.int16).reshape(-1, 33) for path in files["imec0"]])
    assert np.array_equal(binary, appended[:, :32])
    rows = (store.phy_dir / SEGMENTS_TSV).read_text().splitlines()
    assert rows[0].split("\t") == ["file", "gate", "trigger", "start_sample", "n_samples", "start_s"]
    assert [row.split("\t")[3] for row in rows[1:]] == ["0", "225000"]


@pytest.fixture(scope="session")
def openephys_two_probe_node(tmp_path_factory, dagster_instance):
    """An Open Ephys Record Node with ProbeA, ProbeB and an NI-DAQ board, registered and sorted probe by probe."""
    return sort_every_probe(
        tmp_path_factory.mktemp("openephys_two_probe"),
        OPENEPHYS_FOLDER,
        write_openephys_two_probe_node,
        dagster_instance,
    )


def test_openephys_each_probe_stream_is_one_partition_and_the_nidaq_is_skipped(openephys_two_probe_node):
    _, found, _, _ = openephys_two_probe_node
    assert [item.ref.key for item in found] == [
        f"2026-03-02__{ROOT_NAME}__{OPENEPHYS_FOLDER}__{p}" for p in ("ProbeA", "ProbeB")
    ]
    meta = found[0].metadata()
    assert meta["session_probes"] == ["ProbeA", "ProbeB"]
    assert len(meta["skipped_streams"]) == 1 and "NI-DAQ" in meta["skipped_streams"][0]


@pytest.mark.parametrize("probe", list(OPENEPHYS_PROBES))
def test_openephys_each_probe_sorts_exports_to_phy_and_matches_its_ground_truth(openephys_two_probe_node, probe):
    ws, _, traces, results = openephys_two_probe_node
    key, result = results[probe]
    assert result.success, failure_messages(result)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    truth = checks["sorted_units_match_ground_truth"]
    assert truth.passed and "has_ground_truth" not in truth.metadata, truth.metadata  # scored, not "no ground truth"
    assert truth.metadata["well_detected_units"].value >= 4
    store = ws.store(key)
    binary = np.fromfile(store.binary_dir / "recording.bin", dtype=np.int16).reshape(-1, 32)
    assert np.array_equal(binary, traces[probe])  # the stream's own continuous.dat, used in place
    bundle = validate_phy_folder(store.phy_dir)
    assert bundle.n_spikes > 0 and bundle.traces_shape == (450_000, 32)
    channels = OPENEPHYS_PROBES[probe].channels  # each stream's own NP_PROBE geometry from settings.xml
    yc = read_json(store.probe_dir / "kilosort_probe.json")["yc"]
    assert (min(yc), max(yc)) == (20 * (channels[0] // 2), 20 * (channels[-1] // 2))

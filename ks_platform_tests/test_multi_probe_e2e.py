"""Rig-shaped sessions end to end through Dagster: every probe of a run is its own partition that sorts, exports
to Phy and passes its ground truth; gates are concatenated in time; unsafe folder names get derived keys."""

from __future__ import annotations

import numpy as np
import pytest

from ks_platform.core.ground_truth import score_sorting
from ks_platform.core.phy import SEGMENTS_TSV, validate_phy_folder
from ks_platform.core.store import read_json
from ks_platform.core.timeline import segments_from_manifest, to_acquisition_samples
from ks_platform_tests.conftest import ROOT_NAME, SESSION_FOLDER, failure_messages, sort_every_probe
from ks_platform_tests.multi_probe_support import (
    IMEC0_FIRST_SAMPLE,
    IMEC0_GAP,
    OPENEPHYS_PROBES,
    PROBE_SPEC,
    SUBSET_CHANNELS,
    write_openephys_two_probe_node,
)

#: The Open Ephys rig's session folder (one Record Node, ProbeA + ProbeB + an NI-DAQ board).
OPENEPHYS_FOLDER = "mouse8"
#: Samples of each probe's recording, and of each of the two files it is split into.
PROBE_ROWS = round(PROBE_SPEC.duration_s * PROBE_SPEC.sampling_frequency)
HALF = PROBE_ROWS // 2


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
    # converted (two files): the sync channel is not copied; imec0's 1 s gap between its triggers is zero-filled
    rows = PROBE_ROWS + (IMEC0_GAP if probe == "imec0" else 0)
    assert bundle.n_spikes > 0 and bundle.traces_shape == (rows, 32)


def test_the_saved_subset_keeps_all_its_channels_at_their_acquired_positions(two_probe_run):
    ws, _, _, results = two_probe_run
    key, _ = results["imec1"]
    store = ws.store(key)
    raw = read_json(store.raw_manifest)
    assert raw["n_sorting_channels"] == len(SUBSET_CHANNELS) == 32
    probe = read_json(store.probe_dir / "kilosort_probe.json")
    assert len(probe["chanMap"]) == 32
    assert min(probe["yc"]) == 960  # acquired channel 96 sits 960 µm up: positions follow acquired ids, not file order


def test_files_are_laid_out_on_the_acquisition_clock_with_the_boundaries_recorded(two_probe_run):
    """imec1: gates g0 and g1 back to back. imec0: triggers t0 and t1 with a 1 s gap, the first at sample 1000: the gap
    is zero-filled in the binary, the segment table says where each file lies, and the sorted spike times mapped
    back by ``to_acquisition_samples`` land on the ground truth's acquisition clock (its check passed above)."""
    ws, _, files, results = two_probe_run
    store = ws.store(results["imec1"][0])
    timeline = segments_from_manifest(read_json(store.raw_manifest))
    assert [(s.label, s.first_sample, s.binary_start, s.n_samples) for s in timeline] == [
        ("g0_t0", 0, 0, HALF),
        ("g1_t0", HALF, HALF, HALF),
    ]
    rows = (store.phy_dir / SEGMENTS_TSV).read_text().splitlines()
    assert rows[0].split("\t")[:5] == ["segment", "file", "first_sample", "first_s", "binary_start"]
    assert [row.split("\t")[4] for row in rows[1:]] == ["0", str(HALF)]

    store = ws.store(results["imec0"][0])
    timeline = segments_from_manifest(read_json(store.raw_manifest))
    assert [(s.label, s.first_sample, s.binary_start, s.n_samples, s.zeros_before) for s in timeline] == [
        ("g0_t0", IMEC0_FIRST_SAMPLE, 0, HALF, 0),
        ("g0_t1", IMEC0_FIRST_SAMPLE + HALF + IMEC0_GAP, HALF + IMEC0_GAP, HALF, IMEC0_GAP),
    ]
    binary = np.fromfile(store.binary_dir / "recording.bin", dtype=np.int16).reshape(-1, 32)
    parts = [np.fromfile(path, dtype=np.int16).reshape(-1, 33)[:, :32] for path in files["imec0"]]
    assert np.array_equal(binary, np.concatenate([parts[0], np.zeros((IMEC0_GAP, 32), np.int16), parts[1]]))
    spikes = np.load(store.sorting_dir / "spike_times.npy").ravel()
    acquired = to_acquisition_samples(spikes, timeline)
    assert np.array_equal(acquired, spikes + IMEC0_FIRST_SAMPLE)  # one linear clock: gaps filled, nothing squeezed
    spec = ws.landing / SESSION_FOLDER / "ground_truth.imec0.json"
    clusters = np.load(store.sorting_dir / "spike_clusters.npy").ravel()
    on_the_clock = score_sorting(spec, acquired, clusters, 30_000.0)
    as_sorted = score_sorting(spec, spikes, clusters, 30_000.0)  # binary rows taken for acquisition samples
    assert on_the_clock.well_detected >= 4 and as_sorted.well_detected == 0, (on_the_clock, as_sorted)


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
    assert bundle.n_spikes > 0 and bundle.traces_shape == (PROBE_ROWS, 32)
    channels = OPENEPHYS_PROBES[probe].channels  # each stream's own NP_PROBE geometry from settings.xml
    yc = read_json(store.probe_dir / "kilosort_probe.json")["yc"]
    assert (min(yc), max(yc)) == (20 * (channels[0] // 2), 20 * (channels[-1] // 2))

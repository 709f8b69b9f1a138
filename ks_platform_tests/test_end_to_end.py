"""The spine through Dagster: the session assets, a Phy folder phylib opens, ground truth, equivalence, determinism."""

from __future__ import annotations

import re
import shutil

import numpy as np
import torch
from kilosort import run_kilosort

from ks_platform.core.phy import validate_phy_folder
from ks_platform.core.probes import kilosort_probe_from_json
from ks_platform.core.store import read_json
from ks_platform_tests.conftest import TEST_SPEC

SESSION_ASSETS = {
    "raw_recording",
    "probe_map",
    "recording_binary",
    "sorted_units",
    "phy_bundle",
    "unit_labels",
    "unit_metrics",
}
#: The sort_session job's sorter comparison: with one sorter (the default) both say "nothing to compare".
COMPARISON_ASSETS = {"compared_sortings", "sorter_agreement"}


def test_all_session_assets_materialize_and_phy_opens(sorted_workspace):
    ws, key, result = sorted_workspace
    assert result.success, result.all_events
    materialized = {event.asset_key.path[-1] for event in result.get_asset_materialization_events()}
    assert materialized == SESSION_ASSETS | COMPARISON_ASSETS
    versions = {
        e.asset_key.path[-1]: e.materialization.tags.get("dagster/data_version")
        for e in result.get_asset_materialization_events()
    }
    assert versions["compared_sortings"] == versions["sorter_agreement"] == "none"
    store = ws.store(key)
    bundle = validate_phy_folder(store.phy_dir)
    assert bundle.n_spikes > 0
    assert bundle.traces_shape == (round(TEST_SPEC.duration_s * TEST_SPEC.sampling_frequency), 33)
    assert bundle.dat_path == "../binary/recording.bin"  # relative: survives moving the store


def test_ground_truth_check_passes(sorted_workspace):
    """Bar: 5 of 10 units at accuracy ≥ 0.8. Measured here: 7 (CPU, deterministic); 5 leaves room for
    float differences on other CPUs while a broken channel map or misaligned binary scores 0-2."""
    _, _, result = sorted_workspace
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    gt = checks["sorted_units_match_ground_truth"]
    assert gt.passed, gt.metadata
    assert gt.metadata["well_detected_units"].value >= 5
    assert checks["sorted_units_not_empty"].passed
    assert checks["phy_bundle_opens"].passed


def test_lineage_metadata_recorded(sorted_workspace):
    ws, key, result = sorted_workspace
    events = {e.asset_key.path[-1]: e for e in result.get_asset_materialization_events()}
    meta = events["sorted_units"].materialization.metadata
    for field in (
        "n_units",
        "n_good_units",
        "n_spikes",
        "sort_seconds",
        "device",
        "kilosort_version",
        "torch_version",
        "spikeinterface_version",
        "params_hash",
        "seeds",
    ):
        assert field in meta, field
    lineage = read_json(ws.store(key).sorting_dir / "lineage.json")
    assert lineage["input_checksum"] == read_json(ws.store(key).binary_dir / "binary.json")["checksum"]
    assert lineage["versions"]["kilosort"].startswith("4.")
    assert events["recording_binary"].materialization.metadata["zero_copy"].value is True


def test_platform_equals_direct_run_kilosort(sorted_workspace, tmp_path):
    """Spike for spike: the platform's sorted_units vs a plain run_kilosort on the same binary/probe/settings."""
    ws, key, _ = sorted_workspace
    store = ws.store(key)
    settings = read_json(store.sorting_dir / "effective_settings.json")["as_run"]
    probe = kilosort_probe_from_json(read_json(store.probe_dir / "kilosort_probe.json"))
    run_kilosort(
        settings=settings,
        probe=probe,
        filename=store.binary_dir / "recording.bin",
        results_dir=tmp_path / "direct",
        data_dtype="int16",
        device=torch.device("cpu"),
    )
    for name in ("spike_times.npy", "spike_clusters.npy", "templates.npy"):
        assert np.array_equal(np.load(store.sorting_dir / name), np.load(tmp_path / "direct" / name)), name


def test_two_materializations_are_identical(sorted_workspace, tmp_path):
    ws, key, _ = sorted_workspace
    store = ws.store(key)
    first = tmp_path / "first"
    shutil.copytree(store.sorting_dir, first)
    again = ws.run(key)
    assert again.success
    for name in ("spike_times.npy", "spike_clusters.npy", "amplitudes.npy"):
        assert np.array_equal(np.load(first / name), np.load(store.sorting_dir / name)), name


def test_long_stages_report_progress_in_the_runs_log_at_a_bounded_rate(sorted_workspace):
    """Each Kilosort loop, the conversion, the Phy export and the metrics end with a progress line in the run's own
    log (the Events tab), not only in the step's stderr; no stage logs more than 11 progress lines."""
    ws, _, result = sorted_workspace
    messages = [entry.user_message for entry in ws.instance.all_logs(result.run_id) if entry.user_message]
    progress = [m for m in messages if re.match(r"^[\w ]+ \d+%", m)]
    for stage in (
        "recording_binary",
        "kilosort spike detection",
        "kilosort first clustering",
        "kilosort spike extraction",
        "kilosort final clustering",
        "phy_bundle",
        "unit_metrics",
    ):
        lines = [m for m in progress if m.startswith(f"{stage} ")]
        assert any(m.startswith(f"{stage} 100%") and "done in" in m for m in lines), (stage, progress)
        assert len(lines) <= 11, lines
    assert not any(m.strip(" -") == "kilosort:" for m in messages)  # Kilosort's separator lines are not forwarded

"""Unit quality (issue #4): SpikeInterface metrics, figures and tunable checks on the shared sorted session."""

from __future__ import annotations

import dagster as dg
import numpy as np

from ks_platform.core.quality import QualityThresholds, load_unit_metrics
from ks_platform.defs.quality import QualityResource

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics_event(result):
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "unit_metrics"]
    return event.materialization


def test_unit_metrics_table_and_figures(sorted_workspace):
    ws, key, result = sorted_workspace
    metrics = load_unit_metrics(ws.store(key))
    spikes = np.load(ws.store(key).sorting_dir / "spike_clusters.npy")
    assert sorted(metrics.table["unit_id"]) == sorted(np.unique(spikes).tolist()), "one row per sorted unit"
    assert (metrics.table["snr"] > 0).all() and (metrics.table["presence_ratio"] > 0.5).all()
    materialization = _metrics_event(result)
    rows = materialization.metadata["units"].value.records
    assert len(rows) == len(metrics.table)
    for name in ("drift_map", "unit_locations", "waveforms"):
        assert metrics.figures[name].read_bytes().startswith(PNG_MAGIC)
        assert "data:image/png;base64," in materialization.metadata[f"figure_{name}"].value


def test_firing_rates_match_the_ground_truth(sorted_workspace, generated_session):
    """Each well-detected ground-truth unit's matched unit has a measured rate within 10 % of the true rate."""
    import json

    from spikeinterface.comparison import compare_sorter_to_ground_truth
    from spikeinterface.core import NumpySorting

    ws, key, _ = sorted_workspace
    store = ws.store(key)
    metrics = load_unit_metrics(store)
    table = metrics.table.set_index("unit_id")
    spec = json.loads((generated_session / "ground_truth.json").read_text())
    truth = np.load(generated_session / spec["spike_file"])
    fs = 30000.0
    gt = NumpySorting.from_samples_and_labels([truth["samples"]], [truth["labels"]], fs)
    tested = NumpySorting.from_samples_and_labels(
        [np.load(store.sorting_dir / "spike_times.npy").ravel()],
        [np.load(store.sorting_dir / "spike_clusters.npy").ravel()],
        fs,
    )
    comparison = compare_sorter_to_ground_truth(gt, tested, exhaustive_gt=True)
    checked = 0
    accuracy = comparison.get_performance(method="by_unit")["accuracy"]
    for gt_unit in [u for u, value in accuracy.items() if float(value) >= 0.8]:
        matched = int(comparison.hungarian_match_12[gt_unit])
        true_rate = np.count_nonzero(truth["labels"] == gt_unit) / metrics.summary["duration_s"]
        assert abs(table.loc[matched, "firing_rate"] - true_rate) / true_rate < 0.10, (gt_unit, matched)
        checked += 1
    assert checked >= 5


def test_isi_check_passes_by_default_and_a_strict_threshold_fails_it(sorted_workspace):
    ws, key, result = sorted_workspace
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["unit_metrics_isi_violations"].passed and checks["unit_metrics_has_units"].passed
    metrics = load_unit_metrics(ws.store(key))
    assert metrics.table["isi_violations_ratio"].max() > 0, "the test session has at least one unit with violations"
    strict = QualityThresholds(isi_violations_ratio=0.0, max_violating_fraction=0.0)
    assert metrics.violating_fraction(strict) > 0

    from ks_platform.definitions import build_definitions

    defs = build_definitions(ws.platform, sensors=[])
    strict_resources = {
        **defs.resources,
        "quality": QualityResource(isi_violations_ratio=0.0, max_violating_fraction=0.0),
    }
    defs = dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs, resources=strict_resources
    )
    job = defs.resolve_job_def("sort_session")
    check_key = dg.AssetCheckKey(dg.AssetKey("unit_metrics"), "unit_metrics_isi_violations")
    rerun = job.get_subset(asset_check_selection={check_key}).execute_in_process(
        partition_key=key, instance=ws.instance, raise_on_error=False
    )
    [evaluation] = rerun.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.metadata["violating_fraction"].value > 0

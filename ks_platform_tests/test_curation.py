"""Curation (issue #15): a Phy curation (label, merge, split) observed, recorded and diffed against the sorting; a
re-sort makes it STALE and it is never applied to the new sorting; bad curation files are refused with a fix.

Works on a private copy of the shared sorted session; the stale test runs Kilosort once more (changed setting)."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import numpy as np
import pytest
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

from ks_platform.core import curation
from ks_platform.core.errors import SessionInputError
from ks_platform.core.store import SessionStore
from ks_platform.definitions import build_definitions
from ks_platform_tests.conftest import failure_messages
from ks_platform_tests.curation_support import copy_sorted_workspace, run_job, save_in_phy


@pytest.fixture(scope="module")
def curation_ws(sorted_workspace, tmp_path_factory):
    ws, key, result = sorted_workspace
    assert result.success
    with dg.instance_for_test() as instance:
        yield copy_sorted_workspace(ws, key, tmp_path_factory.mktemp("curation"), instance), key


def _materialization(result, name: str):
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == name]
    return event.materialization.metadata


def _is_stale(ws, key: str, name: str) -> bool:
    graph = build_definitions(ws.platform, sensors=[]).resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=ws.instance,
        asset_graph=graph,
    )
    return (
        CachingStaleStatusResolver(instance=ws.instance, asset_graph=graph, loading_context=view).get_status(
            dg.AssetKey(name), key
        )
        != StaleStatus.FRESH
    )


def test_curation_round_trip_then_a_resort_makes_it_stale(curation_ws):
    ws, key = curation_ws
    store = ws.store(key)
    kilosort_clusters = np.load(store.sorting_dir / "spike_clusters.npy")

    assert run_job(ws, key, "observe_phy_curation").success  # this copy's instance has no phy_bundle run to record it
    before = run_job(ws, key, "curate_session")
    assert before.success, failure_messages(before)
    assert _materialization(before, "curated_units")["status"].value == "uncurated", (
        "Kilosort's own cluster_group.tsv is no curation"
    )

    ids = save_in_phy(store.phy_dir, merge=(0, 1), split=2, labels={3: "noise", 4: "mua"})
    assert run_job(ws, key, "observe_phy_curation").success
    assert _is_stale(ws, key, "curated_units"), "a save in Phy, once observed, makes curated_units stale"

    curated = run_job(ws, key, "curate_session")
    assert curated.success, failure_messages(curated)
    meta = _materialization(curated, "curated_units")
    assert meta["status"].value == "curated" and meta["stale"].value is False
    assert meta["merges"].value == {str(ids["merged"]): [0, 1]}
    assert meta["splits"].value == {"2": [ids["split_a"], ids["split_b"]]}
    assert meta["counts"].value["noise"] == 1 and meta["counts"].value["mua"] == 1
    assert meta["sorting_version"].value == curation.basis_version(store.sorting_dir)
    record = curation.load_record(store)
    assert record.n_spikes[ids["merged"]] == int(np.isin(kilosort_clusters, [0, 1]).sum())
    assert record.labels[3] == "noise" and record.kilosort_labels[3] in ("good", "mua")
    assert (curation.curation_dir(store) / "curated_units.tsv").read_text().count("\n") == len(record.n_spikes) + 1
    checks = {c.check_name: c for c in curated.get_asset_check_evaluations()}
    assert checks["curated_units_not_stale"].passed
    assert not _is_stale(ws, key, "curated_units")

    # A re-sort with another parameter: Kilosort runs again, the Phy folder is rebuilt from the new sorting.
    (next(ws.landing.iterdir()) / "kilosort4-settings.json").write_text(json.dumps({"Th_learned": 10, "nblocks": 0}))
    resort = ws.run_assets(key, ["sorted_units", "phy_bundle"])
    assert resort.success, failure_messages(resort)
    assert curation.basis_version(store.sorting_dir) != record.sorting_version, "the re-sort made a different sorting"
    after = run_job(ws, key, "curate_session")
    assert after.success, failure_messages(after)
    meta = _materialization(after, "curated_units")
    assert meta["status"].value == "stale" and meta["stale"].value is True
    assert meta["curation_basis"].value == record.sorting_version
    assert meta["merges"].value == {} and meta["counts"].value == {}, (
        "the old curation is not applied to the new sorting"
    )
    new_clusters = np.load(store.sorting_dir / "spike_clusters.npy")
    assert np.array_equal(curation.curated_spike_clusters(store, curation.load_record(store)), new_clusters)
    assert {int(c) for c in np.unique(new_clusters)} == set(curation.load_record(store).n_spikes)
    checks = {c.check_name: c for c in after.get_asset_check_evaluations()}
    assert (
        not checks["curated_units_not_stale"].passed
        and checks["curated_units_not_stale"].severity == dg.AssetCheckSeverity.WARN
    )
    [kept] = (curation.curation_dir(store) / "history").iterdir()
    assert kept.name.startswith(record.sorting_version) and (kept / "cluster_group.tsv").is_file(), (
        "the old curation is kept"
    )


@pytest.fixture
def phy_copy(sorted_workspace, tmp_path):
    """A store holding only a copy of the shared sorting and Phy folder (for bad-file tests; no Dagster)."""
    ws, key, _ = sorted_workspace
    store = SessionStore(tmp_path / "store", key)
    for part in ("sorting", "phy"):
        shutil.copytree(ws.store(key).dir / part, store.dir / part)
    return store


def _write(path, text: str) -> None:
    path.write_text(text)


BAD_FILES = [
    ("cluster_group.tsv", "cluster_id\tgroup\n0\tgood\n9999\tnoise\n", "cluster 9999 is not a cluster"),
    ("cluster_group.tsv", "cluster_id\tgroup\n0\tgreat\n", "label 'great' is not one of good, mua, noise, unsorted"),
    ("cluster_group.tsv", "cluster_id\tgroup\n0\tgood\textra\n", "line 2 has 3 fields, the header 2"),
    ("cluster_group.tsv", "id,group\n0,good\n", "not a tab-separated table with a cluster_id column"),
    ("cluster_info.tsv", "cluster_id\tgroup\nzero\tgood\n", "cluster_id 'zero' is not an integer"),
]


@pytest.mark.parametrize(("name", "text", "problem"), BAD_FILES, ids=[p for _, _, p in BAD_FILES])
def test_bad_curation_files_name_the_file_and_the_fix(phy_copy, name, text, problem):
    _write(phy_copy.phy_dir / name, text)
    with pytest.raises(SessionInputError) as error:
        curation.record_curation(phy_copy)
    assert error.value.path == phy_copy.phy_dir / name and problem in error.value.problem
    assert "Phy" in error.value.fix and "Fix:" in str(error.value)
    assert not (curation.curation_dir(phy_copy) / "history").exists(), "a bad curation is not kept as one"


def test_spike_clusters_of_another_length_is_refused(phy_copy):
    clusters = np.load(phy_copy.phy_dir / "spike_clusters.npy")
    np.save(phy_copy.phy_dir / "spike_clusters.npy", clusters[:-5])
    with pytest.raises(SessionInputError, match=r"spike_clusters.npy: \d+ spikes, the sorting has \d+"):
        curation.record_curation(phy_copy)


def test_bad_curation_fails_the_asset_with_the_file_and_fix(curation_ws, tmp_path):
    ws, key = curation_ws
    group = ws.store(key).phy_dir / "cluster_group.tsv"
    original = group.read_bytes()
    try:
        group.write_text("cluster_id\tgroup\n0\tmaybe\n")
        result = run_job(ws, key, "curate_session")
    finally:
        group.write_bytes(original)
    assert not result.success
    [message] = [m for m in failure_messages(result) if "cluster_group.tsv" in m]
    assert "label 'maybe'" in message and "Fix:" in message


def test_diff_clusters_finds_merges_and_splits():
    before = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    after = np.array([5, 5, 5, 5, 6, 7, 6, 3])
    assert curation.diff_clusters(before, after) == ({5: [0, 1]}, {2: [6, 7]})

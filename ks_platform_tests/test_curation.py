"""Curation (issues #15, #26): a curation saved the way Phy saves it (phylib's writers) observed, recorded and diffed
against the sorting; bad curation files refused with a fix; what the store keeps and how a restore is refused.

Works on private copies of the shared sorted session, without Kilosort. The same path driven through Phy's own GUI,
with re-sorts, restores and NWB versions: test_curation_phy.py."""

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


def test_curation_round_trip(curation_ws):
    ws, key = curation_ws
    store = ws.store(key)
    kilosort_clusters = np.load(store.sorting_dir / "spike_clusters.npy")

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
    assert meta["n_curations_kept"].value == 1 and len(meta["curations"].value.records) == 1
    record = curation.load_record(store)
    assert record.n_spikes[ids["merged"]] == int(np.isin(kilosort_clusters, [0, 1]).sum())
    assert record.labels[3] == "noise" and record.kilosort_labels[3] in ("good", "mua")
    assert record.split_from == {ids["split_a"]: [2], ids["split_b"]: [2]}
    assert (curation.curation_dir(store) / "curated_units.tsv").read_text().count("\n") == len(record.n_spikes) + 1
    checks = {c.check_name: c for c in curated.get_asset_check_evaluations()}
    assert checks["curated_units_not_stale"].passed and checks["curated_units_phy_folder_opens"].passed
    assert not _is_stale(ws, key, "curated_units")
    [kept] = (curation.curation_dir(store) / "history").iterdir()
    assert (kept / "snapshot.json").is_file() and (kept / "curated_units.tsv").is_file()
    [archived] = (curation.curation_dir(store) / "sortings").iterdir()
    assert archived.name == record.sorting_version and (archived / "lineage.json").is_file()
    assert (archived / "spike_times.npy").stat().st_ino == (store.sorting_dir / "spike_times.npy").stat().st_ino, (
        "the sorting is kept as a hard link: no copy until a re-sort replaces sorting/"
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


def test_a_store_from_before_the_journal_applies_its_latest_snapshot(phy_copy):
    """History written before journal.jsonl existed: its snapshots count in the order Phy saved them."""
    save_in_phy(phy_copy.phy_dir, merge=(0, 1), split=2, labels={3: "noise"})
    first = curation.record_curation(phy_copy)
    save_in_phy(phy_copy.phy_dir, merge=(4, 5), split=6, labels={7: "mua"})
    second = curation.record_curation(phy_copy)
    (curation.curation_dir(phy_copy) / "journal.jsonl").unlink()
    for name in ("cluster_group.tsv", "cluster_info.tsv", "spike_clusters.npy"):
        (phy_copy.phy_dir / name).unlink()  # a Phy folder rebuilt from Kilosort's files by the old code
    shutil.copy2(phy_copy.sorting_dir / "spike_clusters.npy", phy_copy.phy_dir / "spike_clusters.npy")
    again = curation.record_curation(phy_copy)
    assert again.status == "curated" and again.fingerprint == second.fingerprint != first.fingerprint
    assert "ks-platform curation restore" in again.source, "the Phy folder lacks it: the record says how to put it back"
    restored = curation.restore_curation(phy_copy)
    assert restored.fingerprint == second.fingerprint
    assert curation.curation_fingerprint(phy_copy.phy_dir) == second.fingerprint


def test_restore_refuses_what_does_not_fit_with_the_fix(phy_copy):
    with pytest.raises(SessionInputError, match="no curation of this sorting was ever saved") as error:
        curation.restore_curation(phy_copy)
    assert "--from-sorting" in error.value.fix
    with pytest.raises(SessionInputError, match="no such curation in history"):
        curation.restore_curation(phy_copy, snapshot="0123__4567")
    save_in_phy(phy_copy.phy_dir, merge=(0, 1), split=2, labels={3: "noise"})
    record = curation.record_curation(phy_copy)
    snapshot = curation.snapshot_path(phy_copy, record.sorting_version, record.fingerprint)
    other = snapshot.with_name(f"{'f' * 32}__{record.fingerprint}")
    shutil.copytree(snapshot, other)
    meta = json.loads((other / "snapshot.json").read_text())
    (other / "snapshot.json").write_text(json.dumps({**meta, "basis": "f" * 32}))
    with pytest.raises(SessionInputError, match="it was made on sorting f{32}, the Phy folder holds sorting") as error:
        curation.restore_curation(phy_copy, snapshot=other.name)
    assert "export" in error.value.fix

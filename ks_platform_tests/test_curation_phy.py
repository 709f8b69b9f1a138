"""A lab's curation is never lost, never mixed up, and shared with its metadata (issue #26), curated in Phy itself.

One lab's history on a private copy of the shared sorted session. Every curation is made in Phy 2.1's template GUI
under Xvfb through Phy's own supervisor (``phy_gui_probe.py --actions``: labels, merges, splits, save), and every
record by the ``curate_session`` job, which observes the Phy folder itself:

1. curate (labels, a merge, a split), save → curate_session;
2. relabel, save, **not observed**;
3. an identical re-sort: a settings edit that changes nothing Kilosort computes (``Th_universal`` at its default)
   re-runs Kilosort, and ``phy_bundle`` rebuilds the Phy folder;
4. Phy opens the rebuilt folder;
5. one more label, save → curate_session;
6. the first curation copied back from ``history/`` by hand (as the README says) → curate_session;
7. the third restored by ``ks-platform curation restore`` → curate_session; then a label saved in Phy, not observed;
8. a different re-sort (``Th_learned`` 10) → curate_session;
9. the new sorting curated in Phy → curate_session.

Two Kilosort runs in all. The tests below each check one scenario of the issue on what the history recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import numpy as np
import pytest
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

from ks_platform.core import curation, nwb_export
from ks_platform.definitions import build_definitions
from ks_platform_tests.conftest import failure_messages
from ks_platform_tests.curation_support import copy_sorted_workspace, curate_in_phy, dandi_validate, run_job, xvfb

REPO = Path(__file__).resolve().parent.parent
ASSETS = ("sorted_units", "phy_bundle", "unit_metrics", "curated_units", "units_nwb")
FIRST = [
    {"label": [3, "noise"]},
    {"label": [4, "mua"]},
    {"merge": [0, 1]},
    {"split": 2},
    {"label": ["merged", "good"]},
    {"label": ["split_a", "mua"]},
    {"label": ["split_b", "noise"]},
    {"save": True},
]


def stale(ws, key: str) -> set[str]:
    """The assets Dagster shows as stale (materialized before, an input changed since)."""
    graph = build_definitions(ws.platform, sensors=[]).resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=ws.instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance=ws.instance, asset_graph=graph, loading_context=view)
    return {name for name in ASSETS if resolver.get_status(dg.AssetKey(name), key) == StaleStatus.STALE}


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "ks_platform.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def materialization(result, name: str):
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == name]
    return event.materialization


def nwb_files(store) -> set[str]:
    folder = nwb_export.nwb_dir(store) / nwb_export.VERSIONS_DIR
    return {p.name for p in folder.glob("*.nwb")} if folder.is_dir() else set()


def read_units(path: Path) -> dict[int, dict]:
    """Each unit of an NWB file: spike times and labels, read back with pynwb."""
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), "r") as io:
        table = io.read().units.to_dataframe()
    return {int(u): row.to_dict() for u, row in table.iterrows()}


def groups_of(state: dict) -> dict[int, str]:
    return {int(c): g for c, g in state["groups"].items()}


@pytest.fixture(scope="module")
def display():
    with xvfb() as name:
        yield name


@pytest.fixture(scope="module")
def lab(sorted_workspace, tmp_path_factory, display):
    """The history above, with what each step showed (Phy's reports, records, NWB versions, staleness)."""
    source, key, result = sorted_workspace
    assert result.success
    with dg.instance_for_test() as instance:
        base = tmp_path_factory.mktemp("lab")
        yield live_history(copy_sorted_workspace(source, key, base, instance), key, display, base)


def live_history(ws, key: str, display: str, base: Path) -> SimpleNamespace:
    """Steps 1-9 on ``ws`` (a private copy): what each one showed."""
    store, landing = ws.store(key), next(ws.landing.iterdir())
    h = SimpleNamespace(ws=ws, key=key, store=store, files=[])

    def phy(actions: list[dict]) -> dict:
        return curate_in_phy(store.phy_dir, actions, display, base / "phy-scratch")

    def curate() -> curation.CurationRecord:
        run = run_job(ws, key, "curate_session")
        assert run.success, failure_messages(run)
        h.files.append(nwb_files(store))
        h.last_run = run
        assert not stale(ws, key) & {"curated_units", "units_nwb"}, "one curate_session run leaves them fresh"
        return curation.load_record(store)

    # 1. Labels, a merge and a split in Phy, saved; recorded by curate_session (no separate observation).
    h.first = phy(FIRST)
    h.record1 = curate()
    h.nwb1 = nwb_export.list_versions(store)["current"]
    h.basis = curation.basis_version(store.sorting_dir)
    # 2. More labels saved in Phy; nothing observes them.
    h.second = phy([{"label": [5, "good"]}, {"label": [6, "noise"]}, {"save": True}])
    h.fp2 = curation.curation_fingerprint(store.phy_dir)
    # 3. A settings edit whose re-sort comes out identical: Kilosort runs again, phy_bundle rebuilds the folder.
    (landing / "kilosort4-settings.json").write_text(json.dumps({"nblocks": 0, "Th_universal": 9}))
    assert run_job(ws, key, "observe_session_settings").success
    resort = ws.run_assets(key, ["sorted_units", "phy_bundle", "unit_metrics"])
    assert resort.success, failure_messages(resort)
    h.phy_meta = materialization(resort, "phy_bundle").metadata
    h.basis_after_identical = curation.basis_version(store.sorting_dir)
    # 4. Phy opens the rebuilt folder.
    h.reopened = phy([])
    # 5. One more label, saved and recorded.
    h.third = phy([{"label": [7, "good"]}, {"save": True}])
    h.record3 = curate()
    h.nwb3 = nwb_export.list_versions(store)["current"]
    h.tsv3 = (curation.curation_dir(store) / "curated_units.tsv").read_text().splitlines()
    # 6. The first curation copied back from history by hand (the README's way: its files, and Phy's cache gone).
    snapshot = curation.snapshot_path(store, h.basis, h.record1.fingerprint)
    for name in curation.curation_files(store.phy_dir):
        (store.phy_dir / name).unlink()
    for name in curation.curation_files(snapshot):
        shutil.copy2(snapshot / name, store.phy_dir / name)
    shutil.rmtree(store.phy_dir / ".phy")
    h.record6 = curate()
    h.nwb6 = nwb_export.list_versions(store)["current"]
    h.restored_by_hand = phy([])
    # 7. The third restored by the command; recorded; then a label saved in Phy that nothing observes.
    h.restore = cli("curation", "restore", str(store.dir), "--snapshot", f"{h.basis}__{h.record3.fingerprint}")
    assert h.restore.returncode == 0, h.restore.stderr
    h.record7 = curate()
    h.nwb7 = nwb_export.list_versions(store)["current"]
    h.fourth = phy([{"label": [4, "good"]}, {"save": True}])
    h.fp4 = curation.curation_fingerprint(store.phy_dir)
    h.old_spike_times = np.load(store.phy_dir / "spike_times.npy").ravel()
    h.old_clusters = np.load(store.phy_dir / "spike_clusters.npy").ravel()
    # 8. A re-sort with another parameter: a different sorting.
    (landing / "kilosort4-settings.json").write_text(json.dumps({"nblocks": 0, "Th_learned": 10}))
    assert run_job(ws, key, "observe_session_settings").success
    h.stale_after_edit = stale(ws, key)  # as "Materialize stale" proceeds: wave by wave
    resort = ws.run_assets(key, ["sorted_units", "phy_bundle"])
    assert resort.success, failure_messages(resort)
    h.stale_after_resort = stale(ws, key)
    metrics = ws.run_assets(key, ["unit_metrics"])
    assert metrics.success, failure_messages(metrics)
    h.new_basis = curation.basis_version(store.sorting_dir)
    h.fresh_folder = phy([])
    h.record8 = curate()
    h.export8 = materialization(h.last_run, "units_nwb")
    h.versions8 = nwb_export.list_versions(store)
    # 9. The new sorting curated in Phy.
    ids = h.fresh_folder["opened"]["cluster_ids"]
    h.ninth = phy([{"label": [ids[0], "good"]}, {"merge": ids[1:3]}, {"save": True}])
    h.record9 = curate()
    h.versions9 = nwb_export.list_versions(store)
    h.listing = cli("curation", "list", str(store.dir))
    return h


def test_a_rebuilt_phy_folder_over_the_same_sorting_keeps_every_label_merge_and_split(lab):
    """Issue: a re-sort that came out identical rebuilt the Phy folder from Kilosort's clusters, and the next save
    replaced the curation; a save not yet observed was destroyed by rebuilding the folder."""
    assert lab.basis_after_identical == lab.basis, "the re-sort came out identical"
    assert lab.phy_meta["carried_curation"].value == lab.fp2, "the rebuild carried the unobserved save forward"
    assert curation.snapshot_path(lab.store, lab.basis, lab.fp2).is_dir(), "and kept it in history"
    assert lab.reopened["opened"] == lab.second["after"], "Phy opens the rebuilt folder as the lab left it"
    merged, split_a, split_b = (lab.first["names"][n] for n in ("merged", "split_a", "split_b"))
    record = lab.record3
    assert record.status == "curated" and record.merges == {merged: [0, 1]} and record.splits == {2: [split_a, split_b]}
    assert record.labels == {**{c: "unsorted" for c in record.labels}, **groups_of(lab.third["after"])}
    assert {3: "noise", 4: "mua", merged: "good", split_a: "mua", 5: "good", 6: "noise", 7: "good"}.items() <= (
        record.labels.items()
    ), "nothing of steps 1 and 2 was lost by the rebuild and the save after it"
    tsv = lab.tsv3
    assert tsv[0].split("\t")[-2:] == ["merged_from", "split_from"]
    rows = {int(line.split("\t")[0]): line.split("\t") for line in tsv[1:]}
    assert rows[split_a][-1] == rows[split_b][-1] == "2" and rows[merged][-2] == "0,1" and rows[3][-2:] == ["", ""]
    units = read_units(nwb_export.nwb_dir(lab.store) / nwb_export.VERSIONS_DIR / f"{lab.nwb3}.nwb")
    assert units[merged]["merged_from"] == "0,1" and units[split_b]["split_from"] == "2"


def test_settings_edit_staleness_and_one_run_curation(lab):
    """The README's staleness (step 8): a settings edit makes the sorting stale; once it is re-sorted, the Phy folder's
    follower and the curation follow. One curate_session run (observe, then record) leaves curated_units and units_nwb
    fresh (checked after every run of the history)."""
    assert lab.stale_after_edit == {"sorted_units"}
    assert lab.stale_after_resort == {"unit_metrics", "curated_units"}


def test_a_curation_restored_from_history_is_that_curation(lab):
    """Issue: files copied back from history left the record on a newer snapshot, so the NWB carried the wrong one."""
    assert lab.record6.fingerprint == lab.record1.fingerprint and lab.record6.source == "phy folder"
    assert lab.record6.labels == lab.record1.labels and lab.record6.merges == lab.record1.merges
    units = read_units(nwb_export.nwb_dir(lab.store) / nwb_export.VERSIONS_DIR / f"{lab.nwb6}.nwb")
    assert {u: r["curated_label"] for u, r in units.items()} == lab.record1.labels, "the NWB carries the restored one"
    assert groups_of(lab.restored_by_hand["opened"]) == groups_of(lab.first["after"]), "and Phy shows it"
    assert lab.record7.fingerprint == lab.record3.fingerprint, "ks-platform curation restore: the same"
    assert lab.nwb7 == lab.nwb3, "the restored curation's NWB is the very version written when it was current"
    events = [e["event"] for e in curation.journal(lab.store)]
    assert events.count(curation.RESTORED) == 1 and "Phy's cache cleared" in lab.restore.stdout


def test_a_different_sorting_starts_from_kilosort_and_the_old_curation_stays_exported(lab):
    """The earlier curation (saved in Phy, never observed before the re-sort) is listed, readable, and exported under
    its own sorting version, spike for spike as the curated Phy folder held it; nothing the new folder's saves do
    removes it."""
    from spikeinterface.extractors import read_nwb_sorting

    assert lab.new_basis != lab.basis
    assert lab.fresh_folder["opened"]["groups"] == {}, "the new Phy folder starts from Kilosort's clusters"
    assert set(lab.fresh_folder["opened"]["cluster_ids"]) == set(
        np.unique(np.load(lab.store.sorting_dir / "spike_clusters.npy")).tolist()
    )
    record = lab.record8
    assert record.status == "stale" and (record.curation_basis, record.fingerprint) == (lab.basis, lab.fp4)
    assert record.labels == {} and record.merges == {}, "never applied to the new sorting"
    [old] = [v for v in lab.versions8["versions"] if v["curation_fingerprint"] == lab.fp4]
    assert old["sorting_version"] == lab.basis and old["identifier"] in lab.export8.metadata["written"].value
    assert lab.versions8["current"] != old["identifier"], "the current file is the new sorting's"
    path = nwb_export.nwb_dir(lab.store) / old["file"]
    sorting = read_nwb_sorting(path, sampling_frequency=30000.0, t_start=0.0)
    assert sorted(int(u) for u in sorting.unit_ids) == sorted(np.unique(lab.old_clusters).tolist())
    for unit in sorting.unit_ids:
        expected = np.sort(lab.old_spike_times[lab.old_clusters == int(unit)])
        assert np.array_equal(sorting.get_unit_spike_train(unit), expected), unit
    units = read_units(path)
    assert {u: r["curated_label"] for u, r in units.items() if r["curated_label"] != "unsorted"} == groups_of(
        lab.fourth["after"]
    )
    assert lab.record9.status == "curated" and lab.record9.sorting_version == lab.new_basis
    kept = {(c["sorting_version"], c["fingerprint"]) for c in lab.record9.curations}
    assert {(lab.basis, lab.record1.fingerprint), (lab.basis, lab.fp4)} <= kept, "the old curations stay listed"
    assert (nwb_export.nwb_dir(lab.store) / old["file"]).is_file()
    assert "earlier sorting" in lab.listing.stdout and "current sorting" in lab.listing.stdout, lab.listing.stdout


def test_every_nwb_version_is_kept_and_passes_inspector_and_dandi(lab, tmp_path):
    """Curation, re-sort and re-curation: every file ever written is still there and listed; each has its own
    identifier, no best-practice violation, and passes ``dandi validate``."""
    for before, after in zip(lab.files, lab.files[1:]):
        assert before <= after, "no NWB file is ever removed or replaced"
    versions = lab.versions9["versions"]
    files = {v["file"].split("/")[-1] for v in versions}
    assert files == lab.files[-1] and len({v["identifier"] for v in versions}) == len(versions) >= 6
    assert {v["curation_status"] for v in versions} == {"curated", "stale"}, "stale: the new sorting before curation"
    assert {lab.basis, lab.new_basis} == {v["sorting_version"] for v in versions}
    paths = [nwb_export.nwb_dir(lab.store) / v["file"] for v in versions]
    for path in paths:
        importances = {m["importance"] for m in nwb_export.inspect_nwb(path)}
        assert not importances & set(nwb_export.BLOCKING), (path.name, importances)
    dandi_validate(paths, tmp_path)

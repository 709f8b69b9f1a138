"""Curated units shared as NWB with what DANDI asks for, for one or several probes and shanks; Phy folders that
cannot be opened are named with a fix that works (issue #26). Reuses the shared sorted sessions (no extra sort)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import dagster as dg
import h5py
import numpy as np
import pytest

from ks_platform.core import curation, nwb_export
from ks_platform.core.errors import SessionInputError
from ks_platform.definitions import build_definitions
from ks_platform_tests.conftest import failure_messages
from ks_platform_tests.curation_support import (
    SESSION_METADATA,
    copy_sorted_workspace,
    curate_in_phy,
    dandi_validate,
    run_job,
    xvfb,
)

REPO = Path(__file__).resolve().parent.parent


def _materialization(result, name: str):
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == name]
    return event.materialization


def _strings(path: Path) -> list[str]:
    """Every text value and attribute in an HDF5 file."""
    found: list[str] = []

    def add(value) -> None:
        values = value.ravel().tolist() if isinstance(value, np.ndarray) else [value]
        found.extend(
            v.decode(errors="replace") if isinstance(v, bytes) else v for v in values if isinstance(v, (str, bytes))
        )

    def visit(_, obj) -> None:
        for value in obj.attrs.values():
            add(value)
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in ("O", "S", "U"):
            add(obj[()])

    with h5py.File(path, "r") as handle:
        handle.visititems(visit)
    return found


@pytest.fixture(scope="module")
def shared(sorted_workspace, tmp_path_factory):
    """A copy of the shared sorted session with subject.json and session_metadata.json, curated and exported."""
    ws, key, result = sorted_workspace
    assert result.success
    with dg.instance_for_test() as instance:
        copy = copy_sorted_workspace(ws, key, tmp_path_factory.mktemp("shared"), instance)
        run = run_job(copy, key, "curate_session")
        assert run.success, failure_messages(run)
        yield copy, key, run


def test_the_nwb_carries_the_session_metadata_dandi_asks_for(shared):
    from pynwb import NWBHDF5IO

    ws, key, _ = shared
    with NWBHDF5IO(str(ws.store(key).dir / "nwb" / "units.nwb"), "r") as io:
        nwbfile = io.read()
        assert list(nwbfile.experimenter) == SESSION_METADATA["experimenter"]
        assert list(nwbfile.keywords[:]) == SESSION_METADATA["keywords"]
        assert list(nwbfile.related_publications) == SESSION_METADATA["related_publications"]
        for name in ("institution", "lab", "session_description", "protocol"):
            assert getattr(nwbfile, name) == SESSION_METADATA[name], name
        assert nwbfile.subject.subject_id == "demo42" and nwbfile.subject.age == "P90D"
        assert ["ks_platform", "0.1.0"] in [list(row) for row in nwbfile.was_generated_by]


def test_no_local_path_or_host_name_in_the_shared_file(shared):
    """Lineage keeps host and paths in the store; the NWB gets them relative or left out."""
    ws, key, _ = shared
    store = ws.store(key)
    path = (store.dir / "nwb" / "units.nwb").resolve()
    texts = _strings(path)
    lineage = json.loads(next(t for t in texts if t.startswith("{") and '"versions"' in t))
    assert "host" not in lineage and json.loads((store.sorting_dir / "lineage.json").read_text())["host"]
    private = [str(ws.store_root), str(ws.landing), str(Path(ws.landing).resolve()), str(Path.home()), "/tmp/"]
    host = socket.gethostname()
    leaks = [t for t in texts if any(p in t for p in private) or (len(host) > 2 and host in t)]
    assert leaks == [], leaks[:3]
    raw = path.read_bytes()
    assert not any(p.encode() in raw for p in private[:3]), "no local path anywhere in the file's bytes"


def test_subject_or_session_metadata_edits_give_a_new_version(shared):
    """Issue: adding subject.json changed neither the identifier nor the data version. Each input that changes the
    file now changes both, and the earlier file is kept."""
    ws, key, first = shared
    before = _materialization(first, "units_nwb")
    landing = next(ws.landing.iterdir())
    (landing / "subject.json").write_text(
        json.dumps({"subject_id": "demo42", "species": "Mus musculus", "sex": "F", "age": "P91D", "strain": "C57BL/6J"})
    )
    again = run_job(ws, key, "curate_session")
    assert again.success, failure_messages(again)
    after = _materialization(again, "units_nwb")
    assert after.metadata["identifier"].value != before.metadata["identifier"].value
    assert after.tags["dagster/data_version"] != before.tags["dagster/data_version"]
    assert after.tags["dagster/data_version"] == after.metadata["identifier"].value
    same = run_job(ws, key, "curate_session")
    assert _materialization(same, "units_nwb").metadata["identifier"].value == after.metadata["identifier"].value
    assert _materialization(same, "units_nwb").metadata["written"].value == [], "same content, same file"
    index = nwb_export.list_versions(ws.store(key))
    assert [v["identifier"] for v in index["versions"]] == [
        before.metadata["identifier"].value,
        after.metadata["identifier"].value,
    ]
    assert all((ws.store(key).dir / "nwb" / v["file"]).is_file() for v in index["versions"])


BAD_SUBJECTS = [
    ({"subject_id": "m1", "species": "mouse", "sex": "F", "age": "P90D"}, "species 'mouse'"),
    ({"subject_id": "m1", "species": "Mus musculus", "sex": "female", "age": "P90D"}, "sex 'female'"),
    ({"subject_id": "m1", "species": "Mus musculus", "sex": "F", "age": "90 days"}, "age '90 days'"),
    ({"subject_id": "m1", "species": "Mus musculus", "sex": "F"}, "neither age nor date_of_birth"),
    ({"subject_id": "m/1", "species": "Mus musculus", "sex": "F", "age": "P9W"}, "contains '/'"),
    ({"subject_id": "m1", "species": "Mus musculus", "sex": "F", "age": "P9W", "weight": "heavy"}, "weight 'heavy'"),
    ({"subject_id": "m1", "species": "Mus musculus", "sex": "F", "age": "P9W", "colour": "b"}, "unknown keys"),
]
BAD_SESSIONS = [
    ({"experimenter": ["Jane Doe"]}, "not written 'Last, First'"),
    ({"keywords": "ephys"}, None),  # one keyword as text is accepted
    ({"keywords": [1, 2]}, "keywords must be a non-empty list of text"),
    ({"related_publications": ["10.1234/x"]}, "neither 'doi:"),
    ({"lab": ""}, "lab must be non-empty text"),
    ({"data_collection": "x"}, "unknown keys ['data_collection']"),
]


@pytest.mark.parametrize(("subject", "problem"), BAD_SUBJECTS, ids=[p for _, p in BAD_SUBJECTS])
def test_bad_subject_json_names_the_file_and_the_fix(tmp_path, subject, problem):
    (tmp_path / "subject.json").write_text(json.dumps(subject))
    with pytest.raises(SessionInputError) as error:
        nwb_export.read_subject(tmp_path)
    assert error.value.path == tmp_path / "subject.json" and problem in error.value.problem
    assert '"subject_id"' in error.value.fix


@pytest.mark.parametrize(("session", "problem"), BAD_SESSIONS, ids=[str(s) for s, _ in BAD_SESSIONS])
def test_session_metadata_json_is_validated(tmp_path, session, problem):
    (tmp_path / "session_metadata.json").write_text(json.dumps(session))
    if problem is None:
        assert nwb_export.read_session_metadata(tmp_path) == {"keywords": ["ephys"]}
        return
    with pytest.raises(SessionInputError) as error:
        nwb_export.read_session_metadata(tmp_path)
    assert error.value.path == tmp_path / "session_metadata.json" and problem in error.value.problem
    assert '"experimenter"' in error.value.fix


def test_each_probe_of_a_two_probe_run_is_its_own_nwb(two_probe_run, tmp_path):
    """Two partitions of one session: two files with their own device, identifier and spike times, each free of
    inspector violations and valid for DANDI."""
    ws, _, _, results = two_probe_run
    paths, identifiers = [], set()
    with dg.instance_for_test() as instance:
        for probe, (key, result) in sorted(results.items()):
            assert result.success, failure_messages(result)
            copy = copy_sorted_workspace(ws, key, tmp_path / probe, instance)
            run = run_job(copy, key, "curate_session")
            assert run.success, failure_messages(run)
            [check] = [c for c in run.get_asset_check_evaluations() if c.check_name == "units_nwb_passes_inspector"]
            assert check.passed, check.description
            store = copy.store(key)
            path = (store.dir / "nwb" / "units.nwb").resolve()
            units = read_nwb_units(path)
            times = np.load(store.sorting_dir / "spike_times.npy").ravel()
            assert sum(len(u) for u in units.values()) == times.size
            identifiers.add(_materialization(run, "units_nwb").metadata["identifier"].value)
            paths.append(path)
    assert len(identifiers) == 2
    dandi_validate(paths, tmp_path / "dandi")


def read_nwb_units(path: Path) -> dict[int, np.ndarray]:
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), "r") as io:
        nwbfile = io.read()
        assert len(nwbfile.devices) == 1
        return {int(u): np.asarray(t) for u, t in zip(nwbfile.units.id[:], nwbfile.units["spike_times"][:])}


def test_a_multi_shank_probe_gives_one_electrode_group_per_shank(sorted_workspace, tmp_path):
    """The shared sorting with its probe map relabelled as two shanks (left and right contact columns: geometry
    injected, spikes real): electrode groups per shank, each unit on the shank of its largest waveform."""
    from pynwb import NWBHDF5IO

    ws, key, _ = sorted_workspace
    with dg.instance_for_test() as instance:
        copy = copy_sorted_workspace(ws, key, tmp_path / "two_shanks", instance)
        store = copy.store(key)
        ks_json = store.probe_dir / "kilosort_probe.json"
        probe = json.loads(ks_json.read_text())
        xc = np.asarray(probe["xc"], dtype=float)
        probe["kcoords"] = (xc > np.median(xc)).astype(float).tolist()
        ks_json.write_text(json.dumps(probe))
        run = run_job(copy, key, "curate_session")
        assert run.success, failure_messages(run)
        path = (store.dir / "nwb" / "units.nwb").resolve()
        with NWBHDF5IO(str(path), "r") as io:
            nwbfile = io.read()
            assert set(nwbfile.electrode_groups) == {"shank0", "shank1"}
            electrodes = nwbfile.electrodes.to_dataframe()
            assert (electrodes["group_name"] == np.where(xc > np.median(xc), "shank1", "shank0")).all()
            waveforms = np.asarray(nwbfile.units["waveform_mean"].data[:])
            groups = [g.name for g in nwbfile.units["electrode_group"][:]]
        peaks = np.ptp(waveforms, axis=1).argmax(axis=1)
        assert groups == [f"shank{int(xc[p] > np.median(xc))}" for p in peaks] and len(set(groups)) == 2
        importances = {m["importance"] for m in nwb_export.inspect_nwb(path)}
        assert not importances & set(nwb_export.BLOCKING), importances
        dandi_validate([path], tmp_path / "dandi")


def _check_phy_bundle_opens(ws, key):
    """Run only the check ``phy_bundle_opens`` (as the UI's "Execute checks" does)."""
    job = build_definitions(ws.platform, sensors=[]).resolve_job_def("sort_session")
    check = dg.AssetCheckKey(dg.AssetKey("phy_bundle"), "phy_bundle_opens")
    subset = job.get_subset(asset_selection=set(), asset_check_selection={check})
    result = subset.execute_in_process(partition_key=key, instance=ws.instance, raise_on_error=False)
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation


def test_params_problems_are_caught_by_the_checks_naming_params_py(shared):
    """A moved binary and a broken dat_path: phy_bundle_opens (and curate_session's check) name params.py and the
    fix, instead of a traceback or nothing until Phy is opened."""
    ws, key, _ = shared
    store = ws.store(key)
    params = store.phy_dir / "params.py"
    text = params.read_text()
    link = store.binary_dir / "recording.bin"
    os.rename(link, store.binary_dir / "moved.bin")
    try:
        evaluation = _check_phy_bundle_opens(ws, key)
        assert not evaluation.passed and "params.py" in evaluation.description
        assert "../binary/recording.bin" in evaluation.description and "Fix: re-materialize phy_bundle" in (
            evaluation.description
        )
    finally:
        os.rename(store.binary_dir / "moved.bin", link)
    params.write_text(text.replace("../binary/recording.bin", "../binary/recordng.bin"))
    try:
        run = run_job(ws, key, "curate_session")
        assert run.success, "the curation is still recorded"
        checks = {c.check_name: c for c in run.get_asset_check_evaluations()}
        assert not checks["curated_units_phy_folder_opens"].passed
        assert "params.py" in checks["curated_units_phy_folder_opens"].description
        assert "recordng.bin" in _check_phy_bundle_opens(ws, key).description
        params.write_text(text.replace("n_channels_dat = 33", "n_channels_dat = 31"))
        assert "not a whole number of samples" in _check_phy_bundle_opens(ws, key).description
    finally:
        params.write_text(text)
    assert _check_phy_bundle_opens(ws, key).passed


def test_a_truncated_spike_clusters_is_restored_by_the_command_and_phy_opens_it(sorted_workspace, tmp_path):
    """Issue: the fix offered for a truncated spike_clusters.npy ("open it in Phy and save again") was impossible.
    Now the fix is a command: the last curation saved for the sorting comes back (the broken file is kept aside),
    Phy opens the folder, curate_session records it."""
    ws, key, _ = sorted_workspace
    with dg.instance_for_test() as instance, xvfb() as display:
        copy = copy_sorted_workspace(ws, key, tmp_path / "truncated", instance)
        store = copy.store(key)
        saved = curate_in_phy(
            store.phy_dir, [{"merge": [0, 1]}, {"label": [3, "noise"]}, {"save": True}], display, tmp_path
        )
        assert run_job(copy, key, "curate_session").success
        clusters = np.load(store.phy_dir / "spike_clusters.npy")
        np.save(store.phy_dir / "spike_clusters.npy", clusters[: clusters.size // 2])
        broken = run_job(copy, key, "curate_session")
        assert not broken.success
        [message] = [m for m in failure_messages(broken) if "spike_clusters.npy" in m]
        assert f"ks-platform curation restore {store.dir}" in message
        assert not _check_phy_bundle_opens(copy, key).passed
        command = message.split("`")[1].split()
        done = subprocess.run(
            [sys.executable, "-m", "ks_platform.cli", *command[1:]],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        [aside] = (curation.curation_dir(store) / "unreadable").iterdir()
        assert np.load(aside / "spike_clusters.npy").size == clusters.size // 2, "the broken file is kept"
        opened = curate_in_phy(store.phy_dir, [], display, tmp_path)
        assert opened["opened"] == saved["after"], "Phy opens the folder with the last saved curation"
        again = run_job(copy, key, "curate_session")
        assert again.success, failure_messages(again)
        assert curation.load_record(store).counts["noise"] == 1
        from_sorting = subprocess.run(
            [sys.executable, "-m", "ks_platform.cli", "curation", "restore", str(store.dir), "--from-sorting"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert from_sorting.returncode == 0, from_sorting.stderr
        assert curate_in_phy(store.phy_dir, [], display, tmp_path)["opened"]["cluster_ids"] == sorted(
            np.unique(np.load(store.sorting_dir / "spike_clusters.npy")).tolist()
        )
        assert run_job(copy, key, "curate_session").success
        record = curation.load_record(store)
        assert record.status == "uncurated" and len(record.curations) == 1, "reset, the saved curation still kept"

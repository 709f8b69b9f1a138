"""units_nwb (issue #15): the curated units as NWB, checked by nwbinspector and read back spike for spike with pynwb
and with SpikeInterface's NWB sorting reader (a Phy merge and split applied). No extra Kilosort run."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from ks_platform.core import curation, nwb_export
from ks_platform.core.probes import load_probe_map
from ks_platform_tests.conftest import failure_messages
from ks_platform_tests.curation_support import copy_sorted_workspace, dandi_validate, run_job, save_in_phy


@pytest.fixture(scope="module")
def exported(sorted_workspace, tmp_path_factory):
    ws, key, result = sorted_workspace
    assert result.success
    with dg.instance_for_test() as instance:
        copy = copy_sorted_workspace(ws, key, tmp_path_factory.mktemp("nwb"), instance)
        ids = save_in_phy(copy.store(key).phy_dir, merge=(0, 1), split=2, labels={"merged": "good", 3: "noise"})
        run = run_job(copy, key, "curate_session")
        assert run.success, failure_messages(run)
        yield copy, key, run, ids


def _curated(store):
    record = curation.load_record(store)
    return (
        np.load(store.sorting_dir / "spike_times.npy").ravel(),
        curation.curated_spike_clusters(store, record),
        record,
    )


def test_nwbinspector_finds_nothing_critical(exported):
    ws, key, run, _ = exported
    [check] = [c for c in run.get_asset_check_evaluations() if c.check_name == "units_nwb_passes_inspector"]
    assert check.passed, check.description
    importances = {m["importance"] for m in nwb_export.inspect_nwb(ws.store(key).dir / "nwb" / "units.nwb")}
    assert not importances & {"CRITICAL", "BEST_PRACTICE_VIOLATION"}, importances


def test_spikeinterface_reads_back_the_curated_sorting_spike_for_spike(exported):
    from spikeinterface.extractors import read_nwb_sorting

    ws, key, _, ids = exported
    store = ws.store(key)
    times, clusters, record = _curated(store)
    assert record.status == "curated" and ids["merged"] in np.unique(clusters) and 0 not in np.unique(clusters)
    sorting = read_nwb_sorting(store.dir / "nwb" / "units.nwb", sampling_frequency=30000.0, t_start=0.0)
    assert sorted(int(u) for u in sorting.unit_ids) == sorted(int(u) for u in np.unique(clusters))
    for unit in sorting.unit_ids:
        assert np.array_equal(sorting.get_unit_spike_train(unit), np.sort(times[clusters == int(unit)])), unit
    assert sum(len(sorting.get_unit_spike_train(u)) for u in sorting.unit_ids) == times.size


def test_pynwb_reads_labels_metrics_waveforms_electrodes_and_lineage(exported):
    from pynwb import NWBHDF5IO

    ws, key, _, ids = exported
    store = ws.store(key)
    times, clusters, record = _curated(store)
    ks_probe, manifest = load_probe_map(store)
    with NWBHDF5IO(str(store.dir / "nwb" / "units.nwb"), "r") as io:
        nwbfile = io.read()
        units = nwbfile.units.to_dataframe()
        electrodes = nwbfile.electrodes.to_dataframe()
        lineage = json.loads(nwbfile.data_collection)
        assert nwbfile.session_start_time == dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.timezone.utc)
        assert nwbfile.subject.species == "Mus musculus"
        assert len(nwbfile.devices) == 1 and set(nwbfile.electrode_groups) == {
            f"shank{k}" for k in np.unique(ks_probe["kcoords"]).astype(int)
        }
        waveforms = np.asarray(nwbfile.units["waveform_mean"].data[:])
    merged = units.loc[ids["merged"]]
    assert merged["curated_label"] == "good" and merged["kilosort_label"] == "", (
        "a cluster made in Phy has no Kilosort label"
    )
    for unit, row in units.iterrows():
        assert np.allclose(row["spike_times"], np.sort(times[clusters == unit]) / 30000.0, rtol=0, atol=0), unit
        assert row["curated_label"] == record.labels[unit]
    assert np.allclose(electrodes["rel_x"], ks_probe["xc"]) and np.allclose(electrodes["rel_y"], ks_probe["yc"])
    assert waveforms.shape[0] == len(units) and waveforms.shape[2] == len(electrodes)
    peak = np.abs(waveforms).max(axis=(1, 2))
    assert (peak > 5e-6).all() and (peak < 5e-3).all(), "mean waveforms in volts, tens to hundreds of µV"
    metrics = pd.read_csv(store.metrics_dir / "unit_metrics.csv").set_index("unit_id")
    unchanged = [u for u in units.index if u in metrics.index]
    assert unchanged and np.allclose(units.loc[unchanged, "snr"], metrics.loc[unchanged, "snr"])
    assert lineage["input_checksum"] == json.loads((store.binary_dir / "binary.json").read_text())["checksum"]
    assert (
        lineage["kilosort_settings"]["n_chan_bin"]
        and "image_digest" in lineage
        and lineage["curation"]["status"] == "curated"
    )
    assert lineage["versions"]["kilosort"].startswith("4.")


def test_streamed_writer_round_trips_a_synthetic_sorting(tmp_path):
    """Core writer on its own: 40 units, unsorted input times, chunk size smaller than the data."""
    from pynwb import NWBHDF5IO

    rng = np.random.default_rng(3)
    samples = np.sort(rng.integers(0, 30000 * 60, 20000))
    clusters = rng.integers(0, 40, samples.size)
    electrodes = pd.DataFrame({"x_um": [0.0, 32.0], "y_um": [0.0, 0.0], "shank": [0, 1], "channel": [0, 1]})
    source = nwb_export.UnitsSource(
        spike_samples=samples,
        spike_clusters=clusters,
        sampling_frequency=30000.0,
        session_start_time=dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc),
        identifier="synthetic",
        session_id="synthetic",
        electrodes=electrodes,
        device={"name": "probe", "description": "two shanks", "manufacturer": "none"},
    )
    path = nwb_export.write_units_nwb(source, tmp_path / "synthetic.nwb")
    with NWBHDF5IO(str(path), "r") as io:
        units = io.read().units
        for index, unit in enumerate(units.id[:]):
            assert np.array_equal(units["spike_times"][index], samples[clusters == unit] / 30000.0)
    iterator = nwb_export.SpikeTimesIterator(samples, np.lexsort((samples, clusters)), 30000.0, chunk_spikes=999)
    assert iterator.chunk_shape == (999,)


def test_dandi_organizes_and_validates_the_file_offline(exported, tmp_path):
    """What a lab runs before uploading: ``dandi organize`` into a Dandiset, then ``dandi validate`` (offline)."""
    ws, key, _, _ = exported
    dandi_validate([ws.store(key).dir / "nwb" / "units.nwb"], tmp_path)


def test_a_units_nwb_from_before_versions_is_kept_as_a_version(exported):
    """A store whose ``nwb/units.nwb`` is a plain file (written before versions existed): the next export moves it
    into ``nwb/versions/`` under its own identifier and lists it; nothing is deleted."""
    import h5py

    ws, key, _, _ = exported
    store = ws.store(key)
    nwb = store.dir / "nwb"
    current = (nwb / "units.nwb").resolve()
    legacy = nwb / "units.nwb"
    legacy.unlink()
    shutil.copy2(current, legacy)
    with h5py.File(legacy, "r+") as handle:
        handle.attrs["identifier"] = "legacy-0001"  # an identifier of the old scheme
    bytes_before = legacy.read_bytes()
    export = nwb_export.export_units_nwb(store, next(ws.landing.iterdir()))
    assert (nwb / "versions" / "legacy-0001.nwb").read_bytes() == bytes_before
    index = nwb_export.list_versions(store)
    assert {"legacy-0001", export.identifier} <= {v["identifier"] for v in index["versions"]}
    assert index["current"] == export.identifier and (nwb / "units.nwb").is_symlink()
    assert (nwb / "units.nwb").resolve() == (nwb / "versions" / f"{export.identifier}.nwb").resolve()

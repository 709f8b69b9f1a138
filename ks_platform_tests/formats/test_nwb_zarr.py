"""Zarr NWB (``.nwb.zarr`` folders written by hdmf-zarr's NWBZarrIO) end to end through Dagster: the sensor registers
the folder, ``raw_recording`` fingerprints every file inside it, ``probe_map`` and ``recording_binary`` run (no
sort), and the binary equals SpikeInterface's reading of the Zarr file sample by sample. A chunk edited inside the
folder changes the fingerprint (new run key; the steps refuse the changed recording); a missing chunk file, which
Zarr would read as zeros, is refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import zarr

from ks_platform.core import formats
from ks_platform.core.conversion import load_recording_binary
from ks_platform.core.errors import SessionInputError
from ks_platform.core.sessions import fingerprint
from ks_platform.defs import sensors
from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME
from ks_platform_tests.conftest import Workspace, failure_messages, require_module
from ks_platform_tests.nwb_support import (
    N_SAMPLES,
    START,
    _linear_positions,
    _noise,
    _series,
    _spikeinterface,
    _write_pynwb,
)

INGEST = ["raw_recording", "probe_map", "recording_binary"]


def _zarr_session(folder: Path, data: np.ndarray, name: str = "rec.nwb.zarr") -> Path:
    require_module("hdmf_zarr")
    positions = _linear_positions()
    return _write_pynwb(
        folder / name,
        [_series("ElectricalSeries", data, conversion=0.195e-6)],
        {"rel_x": positions[:, 0], "rel_y": positions[:, 1]},
        zarr=True,
    )


def _tick(sensor, instance, ws: Workspace, cursor: str | None = None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"platform": ws.platform})
    return sensor(context)


def test_zarr_nwb_through_the_sensor_and_the_ingest_steps(workspace, dagster_instance):
    data = _noise()
    zarr_folder = _zarr_session(workspace.landing / "mouse3_zarr", data)
    sensor = sensors.build_new_session_sensor(settle_seconds=0, marker_name="")
    first = _tick(sensor, dagster_instance, workspace)
    [request] = first.run_requests
    key = request.partition_key
    assert key == workspace.key(zarr_folder.parent, START.date(), "ElectricalSeries")
    assert [r.partition_keys for r in first.dynamic_partitions_requests] == [[key]]
    dagster_instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, [key])

    result = workspace.run_assets(key, INGEST)
    assert result.success, failure_messages(result)
    store = workspace.store(key)
    manifest = json.loads(store.raw_manifest.read_text())
    assert manifest["format"] == "nwb" and manifest["data_files"] == [str(zarr_folder)]
    assert request.run_key == f"{key}:{manifest['fingerprint']}"  # the sensor's fingerprint of the folder
    assert manifest["timeline"] == [
        {
            "label": "ElectricalSeries",
            "file": "rec.nwb.zarr",
            "first_sample": 0,
            "n_samples": N_SAMPLES,
            "binary_start": 0,
            "file_offset": 0,
            "zeros_before": 0,
        }
    ]
    binary = load_recording_binary(store.binary_dir)
    bits = np.fromfile(binary.path, dtype=np.int16).reshape(-1, binary.n_chan_bin)
    recording = _spikeinterface(zarr_folder, "ElectricalSeries")  # SpikeInterface reads the Zarr folder itself
    np.testing.assert_array_equal(bits, recording.get_traces())
    np.testing.assert_allclose(bits * binary.uv_per_bit, recording.get_traces(return_in_uV=True), rtol=2.0**-22, atol=0)
    assert binary.uv_per_bit == pytest.approx(0.195) and not binary.zero_copy

    # A chunk rewritten inside the folder (times put back as a sync tool may leave them): a changed recording.
    chunk = zarr_folder / "acquisition" / "ElectricalSeries" / "data" / "1.0"
    stat = chunk.stat()
    zarr.open_group(str(zarr_folder), mode="r+")["acquisition/ElectricalSeries/data"][7500, 0] = 1234
    os.utime(chunk, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    source = formats.open_recording(zarr_folder.parent)
    assert fingerprint(source, include_settings=False) != manifest["fingerprint"]
    again = workspace.run_assets(key, ["probe_map"])
    assert not again.success
    assert any("the recording changed since it was observed" in m for m in failure_messages(again))
    second = _tick(sensor, dagster_instance, workspace, first.cursor)
    [rerun] = second.run_requests
    assert rerun.partition_key == key and rerun.run_key != request.run_key


def test_a_missing_chunk_file_is_refused_not_read_as_zeros(tmp_path):
    zarr_folder = _zarr_session(tmp_path / "s", _noise())
    (zarr_folder / "acquisition" / "ElectricalSeries" / "data" / "1.1").unlink()
    with pytest.raises(
        SessionInputError,
        match=r"rec\.nwb\.zarr/acquisition/ElectricalSeries/data: ElectricalSeries 'ElectricalSeries': 1 of the 4 "
        r"chunk files of its data are missing.*Fix: copy the whole rec\.nwb\.zarr folder again",
    ):
        formats.open_recording(zarr_folder.parent)


def test_a_zarr_folder_named_nwb_is_read_the_same(tmp_path):
    data = _noise(seed=9)
    zarr_folder = _zarr_session(tmp_path / "s", data, name="rec.nwb")  # Zarr metadata inside a *.nwb folder
    source = formats.open_recording(zarr_folder.parent)
    np.testing.assert_array_equal(source.read_chunk(0, N_SAMPLES), data)
    np.testing.assert_array_equal(
        source.read_chunk(0, N_SAMPLES), _spikeinterface(zarr_folder, "ElectricalSeries").get_traces()
    )

"""Open Ephys binary: the writer makes real GUI-layout folders; the reader describes and streams them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import openephys
from ks_platform_tests.formats import synthetic as syn
from ks_platform_tests.writers import write_openephys_session


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, np.ndarray]:
    traces = syn.traces()
    folder = write_openephys_session(
        tmp_path_factory.mktemp("oe") / "session", traces, syn.FS, syn.positions(), syn.DATE, syn.shank_ids()
    )
    return folder, traces


@pytest.fixture
def session(written, tmp_path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(written[0], tmp_path / "session"))


def _stream_dir(folder: Path) -> Path:
    return next(folder.rglob("continuous.dat")).parent


def test_neo_reads_the_written_folder(written):
    from neo.rawio import OpenEphysBinaryRawIO

    folder, traces = written
    raw = OpenEphysBinaryRawIO(dirname=str(folder))
    raw.parse_header()
    names = list(raw.header["signal_streams"]["name"])
    ephys = names.index("Record Node 101#Neuropix-PXI-100.ProbeA")
    chunk = raw.get_analogsignal_chunk(block_index=0, seg_index=0, stream_index=ephys)
    assert chunk.shape[0] == traces.shape[0]
    np.testing.assert_array_equal(chunk[:, : syn.N_CHANNELS], traces)
    channels = raw.header["signal_channels"]
    assert list(channels["name"][: syn.N_CHANNELS]) == [f"CH{i + 1}" for i in range(syn.N_CHANNELS)]
    assert np.allclose(channels["gain"][: syn.N_CHANNELS], 0.195)
    assert any(name.endswith("_ADC") for name in names)


def test_open_recording_describes_and_streams(written):
    folder, traces = written
    assert openephys.find_files(folder) == [next(folder.rglob("structure.oebin"))]
    source = openephys.open_recording(folder)
    n = traces.shape[0]
    assert (source.format, source.n_channels, source.n_samples, source.sampling_frequency) == (
        "openephys",
        34,
        n,
        syn.FS,
    )
    assert source.sorting_channels == tuple(range(syn.N_CHANNELS))  # AUX1 and ADC1 are not sorted
    assert source.recording_date == syn.DATE
    assert source.uv_per_bit == pytest.approx(0.195)
    assert source.zero_copy_path == _stream_dir(folder) / "continuous.dat"
    raw = np.memmap(source.zero_copy_path, dtype=np.int16, mode="r").reshape(n, 34)
    np.testing.assert_array_equal(raw[:, : syn.N_CHANNELS], traces)
    for start, stop in syn.windows(n):
        block = source.read_chunk(start, stop)
        assert block.dtype == np.int16 and block.shape == (stop - start, syn.N_CHANNELS)
        np.testing.assert_array_equal(block, traces[start:stop])
    probe = source.probe
    assert probe is not None and probe.si_units == "um"
    np.testing.assert_allclose(probe.contact_positions, syn.positions())
    np.testing.assert_array_equal(probe.device_channel_indices, np.arange(syn.N_CHANNELS))
    assert list(probe.shank_ids) == [str(s) for s in syn.shank_ids()]
    assert "bit_volts" in source.scaling_note and "settings.xml" in source.scaling_note


def test_without_settings_no_probe_and_date_from_folder(session):
    next(session.rglob("settings.xml")).unlink()
    source = openephys.open_recording(session)
    assert source.probe is None
    assert source.recording_date == syn.DATE  # from the GUI's YYYY-MM-DD_HH-MM-SS folder


def test_settings_without_positions_gives_no_probe(session):
    settings = next(session.rglob("settings.xml"))
    text = settings.read_text()
    settings.write_text(text.replace("<ELECTRODE_XPOS", "<IGNORED_XPOS"))
    assert openephys.open_recording(session).probe is None


def test_truncated_data_file_is_refused(session):
    data = _stream_dir(session) / "continuous.dat"
    with open(data, "r+b") as handle:
        handle.truncate(data.stat().st_size - 1)
    with pytest.raises(SessionInputError, match="continuous.dat") as info:
        openephys.open_recording(session)
    assert "not a multiple" in str(info.value)


def test_truncated_at_a_frame_boundary_is_caught_by_sample_numbers(session):
    data = _stream_dir(session) / "continuous.dat"
    with open(data, "r+b") as handle:
        handle.truncate(data.stat().st_size - 34 * 2 * 100)
    with pytest.raises(SessionInputError, match="continuous.dat.*sample_numbers.npy"):
        openephys.open_recording(session)


def test_oebin_channel_count_disagreeing_with_data_is_refused(session):
    oebin_path = next(session.rglob("structure.oebin"))
    oebin = json.loads(oebin_path.read_text())
    stream = oebin["continuous"][0]
    stream["channels"].append(dict(stream["channels"][0], channel_name="CH33"))  # 35 listed, 34 stored
    stream["num_channels"] = 35
    oebin_path.write_text(json.dumps(oebin))
    with pytest.raises(SessionInputError, match="continuous.dat"):
        openephys.open_recording(session)
    stream["num_channels"] = 36
    oebin_path.write_text(json.dumps(oebin))
    with pytest.raises(SessionInputError, match="structure.oebin.*num_channels=36"):
        openephys.open_recording(session)


def test_corrupt_oebin_and_missing_data_are_refused(session):
    oebin_path = next(session.rglob("structure.oebin"))
    text = oebin_path.read_text()
    oebin_path.write_text(text[: len(text) // 2])
    with pytest.raises(SessionInputError, match="structure.oebin.*not valid JSON"):
        openephys.open_recording(session)
    oebin_path.write_text(text)
    (_stream_dir(session) / "continuous.dat").unlink()
    with pytest.raises(SessionInputError, match="continuous.dat.*missing"):
        openephys.open_recording(session)


def test_two_recordings_of_one_experiment_are_concatenated(session, written):
    traces = written[1]
    recording = next(session.rglob("structure.oebin")).parent
    shutil.copytree(recording, recording.parent / "recording2")
    n = traces.shape[0]
    with pytest.raises(SessionInputError, match="wholly inside"):  # a copy of recording1: its samples 0..n-1 again
        openephys.open_recording(session)
    for index in recording.parent.glob("recording2/continuous/*/*.npy"):  # recorded on: the clock continues
        numbers = np.load(index)
        np.save(index, numbers + (n if numbers.dtype.kind in "iu" else n / syn.FS))
    source = openephys.open_recording(session)
    assert source.n_samples == 2 * n and source.zero_copy_path is None
    first = source.timeline[0].first_sample
    assert [(s.first_sample - first, s.binary_start) for s in source.timeline] == [(0, 0), (n, n)]
    np.testing.assert_array_equal(source.read_chunk(n - 100, n + 100), np.concatenate([traces[-100:], traces[:100]]))


def test_neuropixels_part_number_uses_the_probeinterface_catalogue(tmp_path):
    from ks_platform.core.synthetic import np1_probe

    catalogue = np1_probe(syn.N_CHANNELS).contact_positions
    plugin_positions = catalogue + [11.0, 0.0]  # the plugin's NP1.0 x positions are 27/59/11/43 µm
    traces = syn.traces(3000)
    folder = write_openephys_session(
        tmp_path / "s", traces, syn.FS, plugin_positions, syn.DATE, probe_part_number="PRB_1_4_0480_1"
    )
    source = openephys.open_recording(folder)
    assert "probeinterface" in source.scaling_note
    np.testing.assert_allclose(source.probe.contact_positions, catalogue)
    np.testing.assert_array_equal(source.probe.device_channel_indices, np.arange(syn.N_CHANNELS))
    np.testing.assert_array_equal(source.read_chunk(0, 3000), traces)


def test_lfp_stream_is_not_sorted(session):
    oebin_path = next(session.rglob("structure.oebin"))
    oebin = json.loads(oebin_path.read_text())
    lfp = dict(oebin["continuous"][0], folder_name="Neuropix-PXI-100.1/", stream_name="1", sample_rate=2500.0)
    oebin["continuous"].append(lfp)  # GUI 0.5 style names: only the rate tells AP from LFP
    oebin_path.write_text(json.dumps(oebin))
    source = openephys.open_recording(session)
    assert source.sampling_frequency == syn.FS and "ProbeA" in str(source.zero_copy_path)

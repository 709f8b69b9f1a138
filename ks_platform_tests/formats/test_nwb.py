"""NWB: the writer makes pynwb-valid files; the reader slices the ElectricalSeries lazily."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import nwb
from ks_platform_tests.formats import synthetic as syn
from ks_platform_tests.writers import write_nwb_session

N_SAMPLES = 45000  # 1.5 s keeps pynwb writes quick


@pytest.fixture(scope="module")
def traces() -> np.ndarray:
    return syn.traces(N_SAMPLES)


@pytest.fixture(scope="module")
def int16_session(tmp_path_factory, traces) -> Path:
    return write_nwb_session(
        tmp_path_factory.mktemp("nwb") / "session", traces, syn.FS, syn.positions(), syn.DATE, syn.shank_ids()
    )


@pytest.fixture(scope="module")
def float_session(tmp_path_factory, traces) -> Path:
    folder = tmp_path_factory.mktemp("nwb_float") / "session"
    return write_nwb_session(
        folder,
        traces,
        syn.FS,
        syn.positions(),
        syn.DATE,
        syn.shank_ids(),
        as_float=True,
        position_columns=("rel_x", "rel_y"),
    )


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "session"))


def test_pynwb_reads_the_written_file(int16_session, traces):
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(int16_session / "session.nwb"), mode="r") as io:
        nwbfile = io.read()
        series = nwbfile.acquisition["ElectricalSeries"]
        assert series.data.dtype == np.int16 and series.rate == syn.FS
        np.testing.assert_array_equal(series.data[:], traces)
        assert series.conversion == pytest.approx(0.195e-6)
        table = series.electrodes.to_dataframe()
        np.testing.assert_allclose(table[["rel_x", "rel_y"]].to_numpy(), syn.positions())
        assert list(table["group_name"]) == [f"shank{s}" for s in syn.shank_ids()]
        assert nwbfile.session_start_time.date() == syn.DATE


def test_open_recording_int16_kept_as_stored(int16_session, traces):
    assert nwb.find_files(int16_session) == [int16_session / "session.nwb"]
    source = nwb.open_recording(int16_session)
    assert (source.format, source.n_channels, source.n_samples, source.sampling_frequency) == (
        "nwb",
        syn.N_CHANNELS,
        N_SAMPLES,
        syn.FS,
    )
    assert source.source_dtype == "int16" and source.uv_per_bit == pytest.approx(0.195)
    assert source.recording_date == syn.DATE and source.zero_copy_path is None
    assert source.sorting_channels == tuple(range(syn.N_CHANNELS))
    for start, stop in syn.windows(N_SAMPLES):
        block = source.read_chunk(start, stop)
        assert block.dtype == np.int16 and block.shape == (stop - start, syn.N_CHANNELS)
        np.testing.assert_array_equal(block, traces[start:stop])
    probe = source.probe
    np.testing.assert_allclose(probe.contact_positions, syn.positions())
    np.testing.assert_array_equal(probe.device_channel_indices, np.arange(syn.N_CHANNELS))
    assert list(probe.shank_ids) == [f"shank{s}" for s in syn.shank_ids()]
    assert "conversion" in source.scaling_note


def test_open_recording_float_volts_scaled_to_int16(float_session, traces):
    source = nwb.open_recording(float_session)
    assert source.source_dtype == "float32" and source.uv_per_bit == pytest.approx(nwb.FLOAT_UV_PER_BIT)
    for start, stop in syn.windows(N_SAMPLES):
        np.testing.assert_array_equal(source.read_chunk(start, stop), traces[start:stop])
    np.testing.assert_allclose(source.probe.contact_positions, syn.positions())  # from rel_x/rel_y
    assert "rel_x" in source.scaling_note


def test_channel_conversion_and_offset_are_applied(float_session, traces, tmp_path):
    session = _copy(float_session, tmp_path)
    with h5py.File(session / "session.nwb", "r+") as handle:
        group = handle["acquisition/ElectricalSeries"]
        data = group["data"]
        data.attrs["conversion"] = 0.5
        data.attrs["offset"] = 1e-6  # +1 µV
        gains = np.full(syn.N_CHANNELS, 2.0, dtype=np.float32)
        dataset = group.create_dataset("channel_conversion", data=gains)
        dataset.attrs["axis"] = 1
    source = nwb.open_recording(session)
    # the +1 µV offset lifts the full-scale samples past ±32767 x 0.195 µV: the step grows so nothing clips
    largest = 32767 * 0.195 + 1.0
    assert source.uv_per_bit == pytest.approx(largest / 32767, rel=1e-3) and source.uv_per_bit >= largest / 32767
    expected = np.rint((traces.astype(np.float64) * 0.195 + 1.0) / source.uv_per_bit)
    assert np.abs(expected).max() <= 32767
    np.testing.assert_allclose(source.read_chunk(0, N_SAMPLES), expected, atol=1)


def test_nan_in_float_series_is_refused_naming_the_file(float_session, tmp_path):
    session = _copy(float_session, tmp_path)
    with h5py.File(session / "session.nwb", "r+") as handle:
        handle["acquisition/ElectricalSeries/data"][1234, 5] = np.nan
    source = nwb.open_recording(session)
    for window in ((2000, 3000), (1000, 2000)):  # refused at the first read, whichever it is, and at every later one
        with pytest.raises(SessionInputError, match=r"session\.nwb.*NaN or inf sample at sample 1234, channel 5"):
            source.read_chunk(*window)


def test_file_without_electrical_series_is_refused(tmp_path):
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    nwbfile = NWBFile(
        session_description="behaviour only",
        identifier="no-ephys",
        session_start_time=dt.datetime(2025, 1, 2, tzinfo=dt.timezone.utc),
    )
    nwbfile.add_acquisition(TimeSeries(name="running_speed", data=np.zeros(100), unit="m/s", rate=10.0))
    (tmp_path / "s").mkdir()
    with NWBHDF5IO(str(tmp_path / "s" / "behaviour.nwb"), mode="w") as io:
        io.write(nwbfile)
    with pytest.raises(SessionInputError, match=r"behaviour\.nwb.*no ElectricalSeries.*running_speed"):
        nwb.open_recording(tmp_path / "s")


def test_truncated_file_is_refused(int16_session, tmp_path):
    session = _copy(int16_session, tmp_path)
    path = session / "session.nwb"
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    with pytest.raises(SessionInputError, match=r"session\.nwb"):
        source = nwb.open_recording(session)
        source.read_chunk(0, N_SAMPLES)


def test_electrodes_disagreeing_with_data_columns_is_refused(int16_session, tmp_path):
    session = _copy(int16_session, tmp_path)
    with h5py.File(session / "session.nwb", "r+") as handle:
        group = handle["acquisition/ElectricalSeries"]
        region = group["electrodes"]
        attrs = dict(region.attrs)
        del group["electrodes"]
        shorter = group.create_dataset("electrodes", data=np.arange(syn.N_CHANNELS - 1))
        for key, value in attrs.items():
            shorter.attrs[key] = value
    with pytest.raises(SessionInputError, match=r"session\.nwb.*32 channels but its electrodes region lists 31"):
        nwb.open_recording(session)

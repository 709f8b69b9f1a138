"""Plexon .plx: the writer follows the published PLX layout; our streaming reader indexes and gathers blocks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import plexon
from ks_platform_tests.formats import synthetic as syn
from ks_platform_tests.writers import PLEXON_UV_PER_BIT, write_plexon_session

#: A whole number of 4096-sample blocks (~3 s): neo 0.14's PlexonRawIO mis-indexes a shorter last block.
N_SAMPLES = 22 * 4096


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, np.ndarray]:
    traces = syn.traces(N_SAMPLES)
    folder = write_plexon_session(
        tmp_path_factory.mktemp("plx") / "session", traces, syn.FS, syn.positions(), syn.DATE, syn.shank_ids()
    )
    return folder, traces


@pytest.fixture
def session(written, tmp_path) -> Path:
    return Path(shutil.copytree(written[0], tmp_path / "session"))


def _patch_header(path: Path, field: str, value) -> None:
    header = np.fromfile(path, dtype=plexon.FILE_HEADER, count=1)
    header[0][field] = value
    with open(path, "r+b") as handle:
        handle.write(header.tobytes())


def test_neo_reads_the_written_file(written):
    from neo.rawio import PlexonRawIO

    folder, traces = written
    raw = PlexonRawIO(filename=str(folder / "session.plx"), progress_bar=False)
    raw.parse_header()
    streams = list(raw.header["signal_streams"]["id"])
    assert sorted(streams) == ["FP", "WB"]
    wb = streams.index("WB")
    # neo returns an empty last block when i_stop ends exactly on a block end, so stop one short
    chunk = raw.get_analogsignal_chunk(block_index=0, seg_index=0, i_start=0, i_stop=N_SAMPLES - 1, stream_index=wb)
    np.testing.assert_array_equal(chunk, traces[: N_SAMPLES - 1])
    assert raw.get_signal_size(0, 0, wb) == N_SAMPLES
    assert raw.get_signal_sampling_rate(wb) == syn.FS
    assert raw.raw_annotations["blocks"][0]["rec_datetime"].date() == syn.DATE
    wb_channels = raw.header["signal_channels"][raw.header["signal_channels"]["stream_id"] == "WB"]
    assert np.allclose(wb_channels["gain"] * 1000.0, PLEXON_UV_PER_BIT)  # neo's gain is mV per bit
    assert raw.spike_channels_count() == syn.N_CHANNELS and raw.spike_count(0, 0, 0) > 0
    assert raw.event_count(0, 0, 0) == 22  # one strobed word per 4096-sample window


def test_open_recording_describes_and_streams(written):
    folder, traces = written
    assert plexon.find_files(folder) == [folder / "session.plx"]
    source = plexon.open_recording(folder)
    assert (source.format, source.n_samples, source.sampling_frequency, source.recording_date) == (
        "plexon",
        N_SAMPLES,
        syn.FS,
        syn.DATE,
    )
    assert source.n_channels == 2 * syn.N_CHANNELS  # WB01..WB32 then FP01..FP32
    assert source.sorting_channels == tuple(range(syn.N_CHANNELS))
    assert source.uv_per_bit == pytest.approx(PLEXON_UV_PER_BIT)
    assert "SlowMaxMagnitudeMV 5000" in source.scaling_note and "PreAmpGain 1000" in source.scaling_note
    assert source.probe is None and source.zero_copy_path is None
    assert source.probe_file == folder / "session.probe.json"
    for start, stop in syn.windows(N_SAMPLES):
        block = source.read_chunk(start, stop)
        assert block.dtype == np.int16 and block.shape == (stop - start, syn.N_CHANNELS)
        np.testing.assert_array_equal(block, traces[start:stop])


@pytest.mark.parametrize("scan_window", [plexon._SCAN_WINDOW, 4096, 20_000])
def test_uneven_blocks_and_a_short_last_block(tmp_path, monkeypatch, scan_window):
    """Odd block sizes, FP/spike/event blocks in between, and scan windows that cut blocks anywhere."""
    monkeypatch.setattr(plexon, "_SCAN_WINDOW", scan_window)
    traces = syn.traces(50_000, seed=3)
    folder = write_plexon_session(
        tmp_path / "s", traces, syn.FS, syn.positions(), syn.DATE, block_samples=1000 + 7, with_fp=True
    )
    source = plexon.open_recording(folder)
    assert source.n_samples == 50_000
    for start, stop in [(0, 50_000), (1006, 1008), (49_000, 50_000), (3021, 3021 + 2014)]:
        np.testing.assert_array_equal(source.read_chunk(start, stop), traces[start:stop])


def test_spkc_channels_are_sorted_when_there_is_no_wideband(session):
    path = session / "session.plx"
    header = plexon.read_file_header(path)
    slow = plexon.read_slow_channel_headers(path, header)
    offset = int(header["data_start"]) - slow.nbytes
    for i in range(syn.N_CHANNELS):
        slow[i]["Name"] = f"SPKC{i + 1:02d}".encode()
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(slow.tobytes())
    source = plexon.open_recording(session)
    assert source.sorting_channels == tuple(range(syn.N_CHANNELS))


def test_bad_magic_is_refused_naming_the_file(session):
    _patch_header(session / "session.plx", "MagicNumber", 0x12345678)
    with pytest.raises(SessionInputError, match=r"session\.plx.*bad PLX magic number 0x12345678"):
        plexon.open_recording(session)


def test_impossible_counts_are_refused(session):
    _patch_header(session / "session.plx", "NumSlowChannels", -3)
    with pytest.raises(SessionInputError, match=r"session\.plx.*impossible channel counts"):
        plexon.open_recording(session)
    _patch_header(session / "session.plx", "NumSlowChannels", 60000)
    with pytest.raises(SessionInputError, match=r"session\.plx.*file has only"):
        plexon.open_recording(session)


def test_header_channel_count_disagreeing_with_data_is_refused(session):
    path = session / "session.plx"
    _patch_header(path, "NumSlowChannels", 2 * syn.N_CHANNELS - 1)  # the last slow header is read as data
    with pytest.raises(SessionInputError, match=r"session\.plx.*corrupt data block at byte"):
        plexon.open_recording(session)
    _patch_header(path, "NumSlowChannels", 2 * syn.N_CHANNELS + 1)  # the first data block is read as a header
    with pytest.raises(SessionInputError, match=r"session\.plx.*slow-channel headers"):
        plexon.open_recording(session)


def test_truncated_file_is_refused(session):
    path = session / "session.plx"
    for cut in (5000, 17):  # inside a data block, inside a block header
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size - cut)
        with pytest.raises(SessionInputError, match=r"session\.plx.*truncated"):
            plexon.open_recording(session)


def test_impossible_gain_and_date_are_refused(session):
    path = session / "session.plx"
    _patch_header(path, "SlowMaxMagnitudeMV", 0)
    with pytest.raises(SessionInputError, match=r"session\.plx.*SlowMaxMagnitudeMV=0"):
        plexon.open_recording(session)
    _patch_header(path, "SlowMaxMagnitudeMV", 5000)
    _patch_header(path, "Month", 13)
    with pytest.raises(SessionInputError, match=r"session\.plx.*impossible recording date"):
        plexon.open_recording(session)


def test_reads_only_the_blocks_of_the_window(written, monkeypatch):
    """Bounded memory: a 4096-sample window reads about 32 blocks' worth of bytes, not the file."""
    folder, traces = written
    source = plexon.open_recording(folder)
    reads: list[int] = []
    real_empty = np.empty

    def counting_empty(shape, dtype=float, *args, **kwargs):
        if np.dtype(dtype) == np.uint8:
            reads.append(int(np.prod(shape)))
        return real_empty(shape, dtype, *args, **kwargs)

    monkeypatch.setattr(plexon.np, "empty", counting_empty)
    np.testing.assert_array_equal(source.read_chunk(40_000, 44_096), traces[40_000:44_096])
    file_size = (folder / "session.plx").stat().st_size
    assert sum(reads) < 0.12 * file_size

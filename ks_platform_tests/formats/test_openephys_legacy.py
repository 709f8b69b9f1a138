"""Open Ephys legacy format (``*.continuous``): real GUI 0.6.7 files and GUI 0.4 files written as the GUI's
``OriginalRecording`` writes them, each compared sample by sample with SpikeInterface's ``read_openephys``
(neo's ``OpenEphysRawIO``): channels, µV per bit, start time, gaps.

``OEPT_v0.6.7_OpenEphys`` holds the real files of open-ephys-python-tools' test recording (two Record Nodes, the
second after a bandpass filter), each ``.continuous`` cut to its header and first three records.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from ks_platform.core import formats
from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import openephys_legacy
from ks_platform_tests.formats import synthetic as syn
from ks_platform_tests.writers import write_openephys_legacy

DATA = Path(__file__).resolve().parents[1] / "data" / "openephys" / "OEPT_v0.6.7_OpenEphys"
RECORD = 1024


def _si(folder: Path):
    import spikeinterface.extractors as se

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return se.read_openephys(folder, stream_name="Signals CH", use_names_as_ids=True)


def test_real_gui_067_files_equal_spikeinterface_and_one_node_is_used(tmp_path):
    session = Path(shutil.copytree(DATA, tmp_path / "2025-04-03_13-38-45"))
    scan = formats.scan_session(session)
    assert scan.format == "openephys-legacy" and list(scan.listing.probes) == ["100_example-data"]
    assert scan.listing.skipped == (
        "Record Node 105/100_example-data: also recorded by Record Node 101, which is used (the lowest-numbered "
        "Record Node)",
    )
    source = scan.open("100_example-data")
    assert (source.sampling_frequency, source.n_channels, source.n_samples) == (40000.0, 16, 3 * RECORD)
    assert source.uv_per_bit == 0.05 and str(source.recording_date) == "2025-04-03"
    assert source.details["record_node"] == "Record Node 101" and source.probe is None
    recording = _si(session / "Record Node 101")
    assert list(recording.channel_ids) == source.details["channels"] == [f"CH{i + 1}" for i in range(16)]
    np.testing.assert_allclose(recording.get_channel_gains(), source.uv_per_bit)
    ours = source.read_chunk(0, source.n_samples)
    np.testing.assert_array_equal(ours, recording.get_traces(return_in_uV=False))
    assert source.timeline[0].first_sample == 251635
    assert source.timeline[0].first_sample / 40000.0 == pytest.approx(recording.get_times()[0], abs=1e-12)
    filtered = _si(session / "Record Node 105").get_traces(return_in_uV=False)
    assert not np.array_equal(ours, filtered)  # the other node's copy differs: it was not mixed in
    for start, stop in ((0, 1), (1000, 1100), (1023, 1025), (2047, 3072), (3071, 3072)):
        np.testing.assert_array_equal(source.read_chunk(start, stop), ours[start:stop])


def _gui_04(folder: Path, gap_s: float = 2.0, **kw) -> tuple[Path, np.ndarray, list[int]]:
    """32 CH channels (+ 3 AUX, 8 ADC): recording 1 of 5 records from sample 3000, then recording 2 (4 records)
    ``gap_s`` later; the traces' tail is zero-padded to the last record, as the GUI does."""
    traces = syn.traces(9 * RECORD - 100)
    gap = int(gap_s * syn.FS)
    starts = [3000 + RECORD * k for k in range(5)] + [3000 + RECORD * 5 + gap + RECORD * k for k in range(4)]
    write_openephys_legacy(
        folder,
        traces,
        syn.FS,
        syn.DATE,
        record_starts=starts,
        recording_numbers=[0] * 5 + [1] * 4,
        extra_channels=("AUX1", "AUX2", "AUX3", *(f"ADC{i + 1}" for i in range(8))),
        **kw,
    )
    padded = np.zeros((9 * RECORD, 32), np.int16)
    padded[: traces.shape[0]] = traces
    return folder, padded, starts


def test_gui_04_folder_with_a_pause_equals_spikeinterface(tmp_path):
    folder, padded, starts = _gui_04(tmp_path / "2016-06-15_11-45-27")
    scan = formats.scan_session(folder)
    assert list(scan.listing.probes) == ["100"]
    assert sorted(scan.listing.skipped) == [
        "100_ADC1..ADC8: ADC / analog inputs, not a probe",
        "100_AUX1..AUX3: auxiliary (accelerometer) inputs, not a probe",
    ]
    source = scan.open("100")
    gap = starts[5] - (starts[4] + RECORD)
    expected = np.concatenate([padded[: 5 * RECORD], np.zeros((gap, 32), np.int16), padded[5 * RECORD :]])
    assert source.n_samples == len(expected) and source.recording_date == syn.DATE
    assert [(s.first_sample, s.binary_start, s.n_samples, s.zeros_before) for s in source.timeline] == [
        (3000, 0, 5 * RECORD, 0),
        (starts[5], 5 * RECORD + gap, 4 * RECORD, gap),
    ]
    ours = source.read_chunk(0, source.n_samples)
    np.testing.assert_array_equal(ours, expected)
    recording = _si(folder)
    np.testing.assert_array_equal(ours, recording.get_traces(return_in_uV=False))  # neo fills the gap the same way
    assert recording.get_times()[0] == pytest.approx(3000 / syn.FS, abs=1e-12)
    np.testing.assert_allclose(recording.get_channel_gains(), 0.195)
    for start, stop in ((5 * RECORD - 3, 5 * RECORD + 10), (5 * RECORD + gap - 2, 5 * RECORD + gap + RECORD + 1)):
        np.testing.assert_array_equal(source.read_chunk(start, stop), expected[start:stop])
    assert "1 gap(s)" in source.scaling_note


def test_a_chunk_reads_only_the_records_it_needs(tmp_path, monkeypatch):
    folder, padded, _ = _gui_04(tmp_path / "2016-06-15_11-45-27")
    source = formats.scan_session(folder).open("100")
    reads: list[int] = []
    real = os.pread
    monkeypatch.setattr(openephys_legacy.os, "pread", lambda fd, n, offset: reads.append(n) or real(fd, n, offset))
    np.testing.assert_array_equal(source.read_chunk(1030, 1040), padded[1030:1040])
    assert reads == [2070] * 32  # one record of each channel file


@pytest.mark.parametrize("block", [1, 2, 5, 6])
def test_records_scanned_in_blocks_give_the_same_runs(tmp_path, monkeypatch, block):
    """The first channel's timestamps are read in blocks: a run continuing across a block edge stays one run."""
    folder, _, _ = _gui_04(tmp_path / "2016-06-15_11-45-27")
    whole = formats.scan_session(folder).open("100").timeline
    monkeypatch.setattr(openephys_legacy, "_SCAN_RECORDS", block)
    assert formats.scan_session(folder).open("100").timeline == whole


def test_gap_over_the_limit_is_refused_then_split_per_recording(tmp_path):
    folder, padded, starts = _gui_04(tmp_path / "2016-06-15_11-45-27", gap_s=70.0)
    with pytest.raises(SessionInputError, match="starts 70.000 s after recording1") as info:
        formats.scan_session(folder).open("100")
    assert '"split_segments": true' in info.value.fix and '"max_gap_fill_s": 71' in info.value.fix
    (folder / "ks_session.json").write_text(json.dumps({"probes": {"100": {"split_segments": True}}}))
    scan = formats.scan_session(folder)
    assert sorted(scan.listing.probes) == ["100-r1", "100-r2"]
    recording = _si(folder)
    for name, rows, start in (("100-r1", slice(0, 5 * RECORD), 3000), ("100-r2", slice(5 * RECORD, None), starts[5])):
        part = scan.open(name)
        np.testing.assert_array_equal(part.read_chunk(0, part.n_samples), padded[rows])
        assert part.timeline[0].first_sample == start and len(part.timeline) == 1
        binary = (start - 3000) if name == "100-r2" else 0  # where neo put it (zero-filled in between)
        theirs = recording.get_traces(start_frame=binary, end_frame=binary + part.n_samples, return_in_uV=False)
        np.testing.assert_array_equal(part.read_chunk(0, part.n_samples), theirs)


def test_experiments_are_partitions_equal_to_spikeinterface(tmp_path):
    """``…_2.continuous`` (acquisition restarted): its own partition. neo reads it as segment 1 but orders that
    segment's channels by file name as text (``100_CH10_2`` before ``100_CH1_2``: it takes the ``_2`` for the channel
    number), so experiment 2 is compared with neo's reading of the same files under experiment-1 names; the start
    times are compared with neo's segments."""
    folder = tmp_path / "2016-06-15_11-45-27"
    one = syn.traces(3 * RECORD, seed=1)
    two = syn.traces(2 * RECORD, seed=2)
    write_openephys_legacy(folder, one, syn.FS, syn.DATE, first_sample=500)
    write_openephys_legacy(folder, two, syn.FS, syn.DATE, first_sample=0, experiment=2)  # the clock restarted
    scan = formats.scan_session(folder)
    assert sorted(scan.listing.probes) == ["100-e1", "100-e2"]
    recording = _si(folder)
    assert recording.get_num_segments() == 2
    alone = tmp_path / "experiment2"
    alone.mkdir()
    for path in folder.glob("*_2.continuous"):
        shutil.copy(path, alone / path.name.replace("_2.continuous", ".continuous"))
    references = (recording.get_traces(segment_index=0, return_in_uV=False), _si(alone).get_traces(return_in_uV=False))
    for index, (name, data, start) in enumerate((("100-e1", one, 500), ("100-e2", two, 0))):
        source = scan.open(name)
        assert source.details["experiment"] == index + 1
        ours = source.read_chunk(0, source.n_samples)
        np.testing.assert_array_equal(ours, data)
        np.testing.assert_array_equal(ours, references[index])
        assert start / syn.FS == pytest.approx(recording.get_times(segment_index=index)[0], abs=1e-12)


def _plain(folder: Path) -> Path:
    write_openephys_legacy(folder, syn.traces(3 * RECORD)[:, :4], syn.FS, syn.DATE, first_sample=0)
    return folder


def _poke(path: Path, offset: int, payload: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(payload)


RECORD_BYTES = 8 + 2 + 2 + 2 * RECORD + 10
DAMAGE = {
    "truncated": (lambda f: os.truncate(f / "100_CH2.continuous", 1024 + 2 * RECORD_BYTES - 7), "CH2", "truncated"),
    "one record less": (
        lambda f: os.truncate(f / "100_CH3.continuous", 1024 + 2 * RECORD_BYTES),
        "CH3",
        "holds 2 records, 100_CH1.continuous 3",
    ),
    "overlapping records": (
        lambda f: _poke(f / "100_CH1.continuous", 1024 + RECORD_BYTES, np.int64(512).tobytes()),
        "CH1",
        "record 1 starts at sample 512, 512 samples after the record before it",
    ),
    "short record": (
        lambda f: _poke(f / "100_CH1.continuous", 1024 + 8, np.uint16(512).tobytes()),
        "CH1",
        "record 0 says it holds 512 samples",
    ),
    "bad marker": (
        lambda f: _poke(f / "100_CH4.continuous", 1024 + 2 * RECORD_BYTES - 1, b"\x07"),
        "CH4",
        "record 1 does not end in the format's record marker",
    ),
    "other timestamps": (
        lambda f: _poke(f / "100_CH2.continuous", 1024 + 2 * RECORD_BYTES, np.int64(4096).tobytes()),
        "CH2",
        "record 2 starts at sample 4096, the same record of 100_CH1.continuous at 2048",
    ),
    "other gain": (
        lambda f: _poke(
            f / "100_CH3.continuous", 0, (f / "100_CH3.continuous").read_bytes()[:1024].replace(b"0.195", b"0.390")
        ),
        "CH3",
        "header.bitVolts = 0.39 µV, 100_CH1.continuous 0.195 µV",
    ),
    "not a header": (lambda f: _poke(f / "100_CH1.continuous", 0, b"\x00" * 64), "CH1", "header"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_files_are_refused_naming_the_file(tmp_path, case):
    damage, channel, message = DAMAGE[case]
    folder = _plain(tmp_path / "2016-06-15_11-45-27")
    damage(folder)
    with pytest.raises(SessionInputError) as info:
        formats.scan_session(folder).open("100")
    assert info.value.path == folder / f"100_{channel}.continuous"
    assert message in info.value.problem, info.value.problem


def test_geometry_comes_from_the_session_config(tmp_path):
    import probeinterface as pi

    from ks_platform.core.probes import probe_for_recording

    folder = _plain(tmp_path / "2016-06-15_11-45-27")
    with pytest.raises(SessionInputError, match="carries no geometry"):
        probe_for_recording(formats.scan_session(folder).open("100"))
    probe = pi.generate_linear_probe(num_elec=4, ypitch=20)
    probe.set_device_channel_indices(np.arange(4))
    pi.write_probeinterface(folder / "probe.json", probe)
    (folder / "ks_session.json").write_text(json.dumps({"probe_file": "probe.json"}))
    source = formats.scan_session(folder).open("100")
    loaded, origin = probe_for_recording(source)
    assert origin == folder / "probe.json"
    np.testing.assert_allclose(loaded.contact_positions, probe.contact_positions)


def test_a_folder_without_ch_channels_says_what_it_holds(tmp_path):
    folder = tmp_path / "2016-06-15_11-45-27"
    write_openephys_legacy(folder, np.zeros((RECORD, 0), np.int16), syn.FS, syn.DATE, extra_channels=("ADC1", "ADC2"))
    with pytest.raises(
        SessionInputError,
        match="no probe recording to sort in this openephys-legacy folder; it holds: "
        "100_ADC1..ADC2: ADC / analog inputs, not a probe",
    ) as info:
        formats.scan_session(folder)
    assert "record the CH channels" in info.value.fix


def test_legacy_session_through_the_ingest_steps(tmp_path):
    """observe → probe map (from the session config's probe file, two shanks kept) → recording binary."""
    import probeinterface as pi

    from ks_platform.core import pipeline
    from ks_platform.core.conversion import load_recording_binary
    from ks_platform.core.store import SessionStore

    folder = tmp_path / "landing" / "2016-06-15_11-45-27"
    traces = syn.traces(3 * RECORD)
    write_openephys_legacy(folder, traces, syn.FS, syn.DATE, extra_channels=("AUX1",))
    probe = pi.Probe(ndim=2, si_units="um")
    probe.set_contacts(positions=syn.positions(), shapes="circle", shape_params={"radius": 6})
    probe.set_shank_ids(np.asarray(syn.shank_ids()).astype(str))
    probe.set_device_channel_indices(np.arange(32))
    pi.write_probeinterface(folder / "probe.json", probe)
    (folder / "ks_session.json").write_text(json.dumps({"probe_file": "probe.json"}))
    store = SessionStore(tmp_path / "store", f"{syn.DATE}__rig1__2016-06-15_11-45-27__100")
    observed = pipeline.observe_raw_recording(folder, store)
    assert observed.metadata["format"] == "openephys-legacy"
    assert observed.metadata["recording_date"] == syn.DATE.isoformat()
    probe_map = pipeline.build_probe_map(folder, store)
    assert probe_map.metadata["n_sorted_channels"] == 32 and probe_map.metadata["n_shanks"] == 2
    pipeline.build_recording_binary(folder, store)
    binary = load_recording_binary(store.binary_dir)
    data = np.fromfile(binary.path, dtype=np.int16).reshape(-1, binary.n_chan_bin)
    np.testing.assert_array_equal(data, traces)

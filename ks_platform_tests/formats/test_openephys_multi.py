"""Open Ephys folders with several streams, Record Nodes, experiments and recordings: which probes, which skipped."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import openephys
from ks_platform_tests.formats.openephys_support import N, _nidaq, _np_stream, _streams, _write
from ks_platform_tests.writers import openephys_channels, openephys_stream_entry, write_openephys_recording


def test_one_node_two_probes_lfp_and_nidaq_skipped(tmp_path):
    data = _write(tmp_path)
    listing = openephys.list_probes(tmp_path)
    assert sorted(listing.probes) == ["ProbeA", "ProbeB"]
    assert listing.probes["ProbeA"] == (next(tmp_path.rglob("Neuropix-PXI-100.ProbeA-AP")) / "continuous.dat",)
    assert sorted(listing.skipped) == [
        "NI-DAQmx-102.PXIe-6341: NI-DAQ analog inputs, not a probe",
        "Neuropix-PXI-100.ProbeA-LFP: LFP band, not sorted",
    ]
    for name, folder in (("ProbeA", "Neuropix-PXI-100.ProbeA-AP"), ("ProbeB", "Neuropix-PXI-100.ProbeB-AP")):
        source = openephys.open_recording(tmp_path, name)
        assert (
            source.probe_name == name and source.n_channels == 9 and source.sorting_channels == tuple(range(8))
        )  # AP_SYNC not sorted
        assert source.zero_copy_path == next(tmp_path.rglob(folder)) / "continuous.dat"
        np.testing.assert_array_equal(source.read_chunk(0, N), data[folder][:, :8])
        assert source.summary()["record_node"] == "Record Node 101" and source.summary()["skipped_streams"] == list(
            listing.skipped
        )
    with pytest.raises(SessionInputError, match="2 probes"):
        openephys.open_recording(tmp_path)


def test_two_record_nodes_with_the_same_streams_use_the_lowest(tmp_path):
    _write(tmp_path, node=103)
    data = _write(tmp_path, node=101)
    listing = openephys.list_probes(tmp_path)
    assert sorted(listing.probes) == ["ProbeA", "ProbeB"]
    assert (
        "Record Node 103/Neuropix-PXI-100.ProbeA-AP: also recorded by Record Node 101, which is used (the "
        "lowest-numbered Record Node with the data)" in listing.skipped
    )
    source = openephys.open_recording(tmp_path, "ProbeA")
    assert source.details["record_node"] == "Record Node 101" and source.details["unused_record_nodes"] == [
        "Record Node 103"
    ]
    np.testing.assert_array_equal(source.read_chunk(0, N), data["Neuropix-PXI-100.ProbeA-AP"][:, :8])
    # a node without the data files is passed over
    shutil.rmtree(next((tmp_path / "2024-05-06_10-00-00" / "Record Node 101").rglob("Neuropix-PXI-100.ProbeA-AP")))
    assert openephys.open_recording(tmp_path, "ProbeA").details["record_node"] == "Record Node 103"
    assert openephys.open_recording(tmp_path, "ProbeB").details["record_node"] == "Record Node 101"


def test_record_nodes_with_different_streams_are_combined(tmp_path):
    _write(tmp_path, node=101, entries=[_np_stream("ProbeA-AP", n=8, node=101), _nidaq(101)])
    _write(tmp_path, node=102, entries=[_np_stream("ProbeB-AP", n=8, node=102)])
    listing = openephys.list_probes(tmp_path)
    assert sorted(listing.probes) == ["ProbeA", "ProbeB"] and len(listing.skipped) == 1
    assert openephys.open_recording(tmp_path, "ProbeB").details["record_node"] == "Record Node 102"


def test_recordings_are_laid_out_on_the_clock_and_experiments_are_separate_probes(tmp_path):
    """recording2 starts at sample 90000 (recording1 holds 0..N-1): the gap between them is zero-filled, so every
    sample of the binary sits where the acquisition clock put it."""
    r1, r2 = _write(tmp_path, recording=1), _write(tmp_path, recording=2, first_sample=90000)
    e2 = _write(tmp_path, experiment=2)
    listing = openephys.list_probes(tmp_path)
    assert sorted(listing.probes) == ["ProbeA-e1", "ProbeA-e2", "ProbeB-e1", "ProbeB-e2"]
    assert len(listing.probes["ProbeA-e1"]) == 2
    folder = "Neuropix-PXI-100.ProbeA-AP"
    source = openephys.open_recording(tmp_path, "ProbeA-e1")
    laid = np.zeros((90000 + N, 8), dtype=np.int16)
    laid[:N], laid[90000:] = r1[folder][:, :8], r2[folder][:, :8]
    assert source.n_samples == 90000 + N and source.zero_copy_path is None and source.details["experiment"] == 1
    assert [(s.label, s.first_sample, s.binary_start, s.n_samples, s.zeros_before) for s in source.timeline] == [
        ("Record Node 101/experiment1/recording1", 0, 0, N, 0),
        ("Record Node 101/experiment1/recording2", 90000, 90000, N, 90000 - N),
    ]
    for start, stop in (
        (0, 90000 + N),
        (N - 7, N + 5),
        (89990, 90010),
        (N, N + 1),
        (5, 5),
        (90000 + N - 3, 90000 + N + 9),
    ):
        np.testing.assert_array_equal(source.read_chunk(start, stop), laid[start:stop])
    assert (
        source.summary()["zero_copy_capable"] is False and len(source.data_files) == 6
    )  # dat, oebin, sample_numbers x2
    other = openephys.open_recording(tmp_path, "ProbeA-e2")
    assert other.n_samples == N and other.details["experiment"] == 2
    np.testing.assert_array_equal(other.read_chunk(0, N), e2[folder][:, :8])


def test_recordings_that_differ_are_refused(tmp_path):
    _write(tmp_path, recording=1)
    _write(tmp_path, recording=2, entries=_streams(n=6))
    with pytest.raises(
        SessionInputError, match="recording2 of Neuropix-PXI-100.ProbeA-AP differs from .*recording1 in channels"
    ):
        openephys.open_recording(tmp_path, "ProbeA")
    _write(tmp_path, recording=2, entries=[_np_stream("ProbeA-AP", n=8, node=101)] + _streams(n=8)[1:])
    _damage(tmp_path, lambda e: None)
    oebin = next(tmp_path.rglob("recording2/structure.oebin"))
    payload = json.loads(oebin.read_text())
    for channel in payload["continuous"][0]["channels"][:8]:
        channel["bit_volts"] = 0.5
    oebin.write_text(json.dumps(payload))
    with pytest.raises(SessionInputError, match="recording2 of Neuropix-PXI-100.ProbeA-AP has bit_volts 0.5 µV"):
        openephys.open_recording(tmp_path, "ProbeA")


def test_experiment_settings_file_is_used(tmp_path):
    """Experiment 2 takes its geometry from settings_2.xml."""
    from ks_platform_tests.formats import synthetic as syn
    from ks_platform_tests.writers import write_openephys_session

    session = write_openephys_session(tmp_path / "s", syn.traces(N), syn.FS, syn.positions(), syn.DATE, syn.shank_ids())
    node = next(session.rglob("Record Node 101"))
    shutil.copytree(node / "experiment1", node / "experiment2")
    text = (node / "settings.xml").read_text()
    (node / "settings_2.xml").write_text(text.replace('<ELECTRODE_XPOS CH0="', '<ELECTRODE_XPOS CH0="1000.0" OLD="'))
    first, second = (openephys.open_recording(session, f"ProbeA-e{e}") for e in (1, 2))
    assert first.probe.contact_positions[0, 0] != 1000.0 and second.probe.contact_positions[0, 0] == 1000.0
    assert "settings_2.xml" in second.scaling_note


def test_gui_05_names_probes_by_folder_and_maps_ap_streams_to_probes(tmp_path):
    names = [f"AP{i + 1}" for i in range(8)] + ["AP_SYNC"]
    channels = openephys_channels(names, [0.195] * 8 + [1.0], ["uV"] * 8 + [""])
    entries = [
        openephys_stream_entry("Neuropix-PXI", 100, None, rate, channels, record_node=102, sub_idx=i)
        for i, rate in enumerate((30000.0, 2500.0, 30000.0, 2500.0))
    ]
    _write(tmp_path, node=102, entries=entries, gui_version="0.5.3")
    listing = openephys.list_probes(tmp_path)
    assert sorted(listing.probes) == ["Neuropix-PXI-100.0", "Neuropix-PXI-100.2"]
    assert sorted(listing.skipped) == [
        f"Neuropix-PXI-100.{i}: sampled below 10 kHz (LFP band or slow data), not sorted" for i in (1, 3)
    ]
    assert not (next(tmp_path.rglob("Neuropix-PXI-100.0")) / "sample_numbers.npy").exists()  # 0.5: timestamps.npy only
    segment = next(s for s in openephys._segments(tmp_path) if s.folder == "Neuropix-PXI-100.2")
    assert openephys.legacy_probe_index(segment, entries) == 1  # the second probe: probeinterface's "100.1"
    source = openephys.open_recording(tmp_path, "Neuropix-PXI-100.2")
    assert source.sorting_channels == tuple(range(8)) and source.details["gui_version"] == "0.5.3"


def _board(stream: str, headstages: tuple[str, ...], n: int = 4) -> dict:
    names = [f"{h}-CH{i + 1}" for h in headstages for i in range(n)] + [f"{headstages[0]}-AUX1", "ADC1", "ADC2"]
    units = ["uV"] * (n * len(headstages)) + ["V"] * 3
    return openephys_stream_entry(
        "Acquisition Board",
        100,
        stream,
        30000.0,
        openephys_channels(names, [0.195] * (len(names) - 3) + [0.0000374, 0.00015, 0.00015], units),
    )


def test_acquisition_board_headstages_are_probes(tmp_path):
    data = _write(tmp_path, entries=[_board("Rhythm Data", ("A1", "B1"))])["Acquisition_Board-100.Rhythm Data"]
    listing = openephys.list_probes(tmp_path)
    assert sorted(listing.probes) == ["Rhythm Data-A1", "Rhythm Data-B1"]
    for name, channels in (("Rhythm Data-A1", (0, 1, 2, 3)), ("Rhythm Data-B1", (4, 5, 6, 7))):
        source = openephys.open_recording(tmp_path, name)
        assert (
            source.sorting_channels == channels
            and source.details["headstage"] == name[-2:]
            and source.uv_per_bit == pytest.approx(0.195)
        )
        np.testing.assert_array_equal(source.read_chunk(10, 20), data[10:20, list(channels)])


def test_single_headstage_or_plain_names_are_one_probe(tmp_path):
    _write(tmp_path, entries=[_board("Rhythm Data", ("A1",))])
    assert list(openephys.list_probes(tmp_path).probes) == ["Rhythm Data"]


def _damage(session: Path, change) -> Path:
    oebin = next(session.rglob("structure.oebin"))
    payload = json.loads(oebin.read_text())
    change(payload["continuous"][0])
    oebin.write_text(json.dumps(payload))
    return oebin


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda e: e.update(sample_rate="NaN"),
            r"continuous\[0\] \(Neuropix-PXI-100.ProbeA-AP\) sample_rate='NaN' must be a finite number > 0",
        ),
        (lambda e: e.update(sample_rate=0), r"sample_rate=0 must be a finite number > 0"),
        (lambda e: e.update(sample_rate=-30000.0), r"sample_rate=-30000.0 must be"),
        (lambda e: e.update(sample_rate="fast"), r"sample_rate='fast' is not a number"),
        (lambda e: e.pop("sample_rate"), r"sample_rate is missing"),
        (lambda e: e.update(num_channels=7), r"num_channels=7 but 9 channels are listed"),
        (lambda e: e.update(num_channels=True), r"num_channels=True"),
        (lambda e: e.update(channels=[]), r"channels lists no channels"),
        (
            lambda e: e["channels"][3].update(bit_volts=0),
            r"channels\[3\] \('AP4'\) bit_volts=0 must be a finite number > 0",
        ),
        (
            lambda e: e["channels"][3].update(bit_volts="Infinity"),
            r"channels\[3\] \('AP4'\) bit_volts='Infinity' must be",
        ),
        (lambda e: e["channels"][3].pop("bit_volts"), r"bit_volts=None is not a number"),
        (lambda e: e["channels"][0].update(units="furlongs"), r"units='furlongs' is not a known unit"),
        (lambda e: e["channels"][1].update(bit_volts=0.5), r"different bit_volts"),
    ],
)
def test_bad_values_name_the_file_and_key(tmp_path, change, message):
    _write(tmp_path)
    oebin = _damage(tmp_path, change)
    with pytest.raises(SessionInputError, match=message) as info:
        openephys.open_recording(tmp_path, "ProbeA")
    assert info.value.path == oebin


def test_bad_electrode_position_names_settings_and_key(tmp_path):
    from ks_platform_tests.formats import synthetic as syn
    from ks_platform_tests.writers import write_openephys_session

    session = write_openephys_session(tmp_path / "s", syn.traces(N), syn.FS, syn.positions(), syn.DATE, syn.shank_ids())
    settings = next(session.rglob("settings.xml"))
    settings.write_text(settings.read_text().replace('<ELECTRODE_YPOS CH0="', '<ELECTRODE_YPOS CH0="nan" OLD="'))
    with pytest.raises(SessionInputError, match="ELECTRODE_YPOS CH0='nan' is not a finite number") as info:
        openephys.open_recording(session)
    assert info.value.path == settings


def test_no_probe_stream_lists_why(tmp_path):
    from ks_platform.core import formats

    _write(tmp_path, entries=[_nidaq(), _np_stream("ProbeA-LFP", 2500.0, n=8)])
    with pytest.raises(SessionInputError, match="no probe recording.*NI-DAQ analog inputs.*LFP band"):
        formats.list_probes(tmp_path)


def test_session_folder_may_be_any_level(tmp_path):
    """A Record Node or recording folder as the session: settings.xml above the session folder is not read."""
    from ks_platform.core import formats
    from ks_platform_tests.formats import synthetic as syn
    from ks_platform_tests.writers import write_openephys_session

    session = write_openephys_session(tmp_path / "s", syn.traces(N), syn.FS, syn.positions(), syn.DATE, syn.shank_ids())
    node = next(session.rglob("Record Node 101"))
    assert formats.open_recording(node).probe is not None
    # the dated GUI folder above a recording folder is outside the session: its date must come from ks_session.json
    with pytest.raises(SessionInputError, match="holds no recording date"):
        formats.open_recording(node / "experiment1" / "recording1")
    config = {"recording_date": syn.DATE.isoformat()}
    (node / "experiment1" / "recording1" / "ks_session.json").write_text(json.dumps(config))
    recording = formats.open_recording(node / "experiment1" / "recording1")
    assert recording.recording_date == syn.DATE
    assert recording.probe is None and "no settings.xml" in recording.scaling_note
    assert all(node / "experiment1" / "recording1" in p.parents for p in recording.data_files)


def test_session_writer_adds_streams_and_record_nodes(tmp_path):
    """``write_openephys_session`` with an LFP band, an NI-DAQ board and two Record Nodes, read by neo too."""
    from neo.rawio import OpenEphysBinaryRawIO

    from ks_platform_tests.formats import synthetic as syn
    from ks_platform_tests.writers import write_openephys_session

    lfp = openephys_stream_entry(
        "Neuropix-PXI", 100, "ProbeA-LFP", 2500.0, openephys_channels([f"LFP{i}" for i in range(4)], 0.195)
    )
    traces = syn.traces(N)
    session = write_openephys_session(
        tmp_path / "s",
        traces,
        syn.FS,
        syn.positions(),
        syn.DATE,
        extra_streams=[lfp, _nidaq()],
        record_nodes=(101, 102),
    )
    listing = openephys.list_probes(session)
    assert list(listing.probes) == ["ProbeA"] and len(listing.skipped) == 3
    assert any(
        s.startswith("Record Node 102/Neuropix-PXI-100.ProbeA: also recorded by Record Node 101")
        for s in listing.skipped
    )
    np.testing.assert_array_equal(openephys.open_recording(session).read_chunk(0, N), traces)
    raw = OpenEphysBinaryRawIO(dirname=str(session))
    raw.parse_header()
    assert "Record Node 102#NI-DAQmx-102.PXIe-6341" in list(raw.header["signal_streams"]["name"])


def test_experiment_and_recordings_match_spikeinterface_blocks_and_segments(tmp_path):
    """SpikeInterface reads an experiment as one block and its recordings as segments: ours concatenates them."""
    import warnings

    import spikeinterface.extractors as se

    _write(tmp_path, recording=1)
    _write(tmp_path, recording=2, first_sample=90000)
    _write(tmp_path, experiment=2)
    for experiment in (1, 2):
        source = openephys.open_recording(tmp_path, f"ProbeA-e{experiment}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            recording = se.read_openephys(
                tmp_path,
                stream_name="Record Node 101#Neuropix-PXI-100.ProbeA-AP",
                experiment_name=f"experiment{experiment}",
            )
        segments = [
            recording.get_traces(segment_index=i, return_in_uV=False) for i in range(recording.get_num_segments())
        ]
        assert [s.n_samples for s in source.timeline] == [len(s) for s in segments]
        for index, (segment, theirs) in enumerate(zip(source.timeline, segments)):  # each where the clock puts it
            ours = source.read_chunk(segment.binary_start, segment.binary_start + segment.n_samples)
            np.testing.assert_array_equal(ours, theirs)
            start_s = recording.get_times(segment_index=index)[0]
            assert segment.first_sample / recording.get_sampling_frequency() == pytest.approx(start_s)
        assert list(recording.channel_ids) == [f"AP{i + 1}" for i in range(8)]


def _legacy_settings(*parts: str) -> ET.Element:
    probes = "".join(f'<NP_PROBE probe_part_number="{p}" probe_serial_number="{i}"/>' for i, p in enumerate(parts))
    return ET.fromstring(
        '<SETTINGS><INFO><VERSION>0.5.5</VERSION></INFO><SIGNALCHAIN><PROCESSOR name="Sources/Neuropix-PXI" '
        f'NodeId="100"><EDITOR>{probes}</EDITOR></PROCESSOR></SIGNALCHAIN></SETTINGS>'
    )


@pytest.mark.parametrize(
    ("parts", "recorded", "expected"),
    [
        (("PRB_1_4_0480_1", "PRB_1_4_0480_1"), (0, 1, 2, 3), {0: 0, 2: 1}),  # NP1: AP, LFP per probe
        (("NP2010", "NP2010"), (0, 1), {0: 0, 1: 1}),  # NP2: AP only (the real OE_5 layout)
        (("NP2010", "NP1000"), (0, 1, 2), {0: 0, 1: 1}),  # mixed
        (("PRB_1_4_0480_1", "PRB_1_4_0480_1"), (2, 3), {2: 1}),  # only probe B recorded: still probe B
    ],
)
def test_gui_05_subprocessors_map_to_probes_by_part_number(tmp_path, parts, recorded, expected):
    channels = openephys_channels([f"AP{i + 1}" for i in range(4)], 0.195)
    lfp = set(recorded) - set(expected)
    entries = [
        openephys_stream_entry("Neuropix-PXI", 100, None, 2500.0 if i in lfp else 30000.0, channels, sub_idx=i)
        for i in recorded
    ]
    _write(tmp_path, entries=entries, gui_version="0.5.5")
    root = _legacy_settings(*parts)
    found = {
        s.entry["source_processor_sub_idx"]: openephys.legacy_probe_index(s, entries, root)
        for s in openephys._segments(tmp_path)
        if openephys.skip_reason(s.entry) is None
    }
    assert found == expected
    assert (
        openephys.has_lf_band("NP1100")
        and not openephys.has_lf_band("NP2014")
        and openephys.has_lf_band("PRB_1_2_0480_2")
    )


def test_several_gui_run_folders_name_the_run(tmp_path):
    _write(tmp_path)
    later = tmp_path / "2024-05-06_11-00-00" / "Record Node 101" / "experiment1" / "recording1"
    write_openephys_recording(later, _streams(n=8), n_samples=N)
    assert sorted(openephys.list_probes(tmp_path).probes) == [
        f"Probe{p}-2024-05-06_{h}-00-00-e1" for p in "AB" for h in ("10", "11")
    ]

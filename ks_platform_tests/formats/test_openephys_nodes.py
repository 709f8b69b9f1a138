"""Record Nodes in every spelling the GUI used, recognised by their content; one node per stream, never mixed.

``OEPT_v0.6.7_Binary`` holds the real headers of open-ephys-python-tools' two-node recording (Record Node 101 after
the File Reader, Record Node 105 after a bandpass filter: two different copies of one stream). The samples are
written by the test writers, a different set per node, and each probe is compared sample by sample with
SpikeInterface's ``read_openephys`` of the node that was used.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from ks_platform.core import formats
from ks_platform.core.formats import openephys
from ks_platform_tests.formats.openephys_support import _np_stream
from ks_platform_tests.writers import write_openephys_recording

DATA = Path(__file__).resolve().parents[1] / "data" / "openephys" / "OEPT_v0.6.7_Binary"
STREAM = "File_Reader-100.example_data"
N = 500
#: The node folder names of GUI 1.0/0.6 (``Record Node 101``), 0.5.x (``RecordNode101``) and other copies.
SPELLINGS = {"spaces": "Record Node {}", "gui-0.5": "RecordNode{}", "underscores": "Record_Node_{}"}


def _session(tmp_path: Path, spelling: str) -> tuple[Path, dict[int, np.ndarray]]:
    """The two real nodes under ``spelling``, each with its own samples; returns the samples by node id."""
    session = tmp_path / "2025-04-03_13-38-45"
    written = {}
    for node in (101, 105):
        source = DATA / f"Record Node {node}"
        target = session / spelling.format(node)
        shutil.copytree(source, target)
        oebin = target / "experiment1" / "recording1" / "structure.oebin"
        entries = openephys._load_oebin(oebin)["continuous"]
        data = write_openephys_recording(oebin.parent, entries, n_samples=N, first_sample=251635, seed=node)
        written[node] = data[STREAM]
    return session, written


def _si(folder: Path, stream: str):
    import spikeinterface.extractors as se

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return se.read_openephys(folder, stream_name=stream)


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_two_nodes_of_one_stream_use_the_lowest_and_equal_spikeinterface(tmp_path, spelling):
    name = SPELLINGS[spelling]
    session, written = _session(tmp_path, name)
    scan = formats.scan_session(session)
    assert list(scan.listing.probes) == ["example_data"]
    assert (
        f"{name.format(105)}/{STREAM}: also recorded by {name.format(101)}, which is used (the lowest-numbered "
        "Record Node with the data)" in scan.listing.skipped[0]
    )
    assert "Bandpass Filter" in scan.listing.skipped[0]  # the skipped copy passed a filter: the reason is shown
    source = scan.open("example_data")
    assert source.details["record_node"] == name.format(101)
    assert source.details["unused_record_nodes"] == [name.format(105)]
    assert source.n_samples == N and len(source.timeline) == 1  # one node's samples, never both
    assert source.uv_per_bit == pytest.approx(0.05)
    recording = _si(session, f"{name.format(101)}#{STREAM}")
    theirs = recording.get_traces(return_in_uV=False)
    np.testing.assert_array_equal(source.read_chunk(0, source.n_samples), theirs)
    np.testing.assert_array_equal(theirs, written[101])
    assert list(recording.channel_ids) == [f"CH{i + 1}" for i in range(16)]
    np.testing.assert_allclose(recording.get_channel_gains(), source.uv_per_bit, rtol=1e-6)
    assert source.timeline[0].first_sample / source.sampling_frequency == pytest.approx(recording.get_times()[0])

    # the lowest node without its data file: the next one is used, whole (neo reads the folder only while complete)
    theirs = _si(session, f"{name.format(105)}#{STREAM}").get_traces(return_in_uV=False)
    (session / name.format(101) / "experiment1" / "recording1" / "continuous" / STREAM / "continuous.dat").unlink()
    other = formats.scan_session(session).open("example_data")
    assert other.details["record_node"] == name.format(105)
    np.testing.assert_array_equal(other.read_chunk(0, other.n_samples), theirs)
    np.testing.assert_array_equal(theirs, written[105])


def test_a_node_folder_named_otherwise_is_recognised_by_its_oebin(tmp_path):
    """Renamed node folders (``node-a``, ``node-b``): the oebin's ``recorded_processor`` says they are Record Nodes,
    so the copies of one stream are still one probe (the lower ``recorded_processor_id`` used)."""
    session, written = _session(tmp_path, "node-{}")
    for node, renamed in ((101, "node-b"), (105, "node-a")):  # names sort against the node ids
        (session / f"node-{node}").rename(session / renamed)
    listing = openephys.list_probes(session)
    assert list(listing.probes) == ["example_data"]
    assert listing.skipped[0].startswith(f"node-a/{STREAM}: also recorded by node-b, which is used")
    source = openephys.open_recording(session)
    assert source.details["record_node"] == "node-b"
    theirs = _si(session / "node-b", STREAM).get_traces(return_in_uV=False)
    np.testing.assert_array_equal(source.read_chunk(0, N), theirs)
    np.testing.assert_array_equal(theirs, written[101])


def test_gui_04_run_folders_are_runs_not_nodes(tmp_path):
    """GUI 0.4 binary: ``experiment1/`` directly in each dated run folder, no Record Node: two runs, two probes."""
    entries = [_np_stream("ProbeA-AP", n=8)]
    for entry in entries:
        entry.pop("recorded_processor")
        entry.pop("recorded_processor_id")
    for run in ("2024-05-06_10-00-00", "2024-05-06_11-00-00"):
        write_openephys_recording(tmp_path / run / "experiment1" / "recording1", entries, gui_version="0.4.6")
    listing = openephys.list_probes(tmp_path)
    assert sorted(listing.probes) == ["ProbeA-2024-05-06_10-00-00-e1", "ProbeA-2024-05-06_11-00-00-e1"]
    assert listing.skipped == ()


def test_a_node_folder_is_recognised_by_its_settings_xml(tmp_path):
    """Neither a node name nor ``recorded_processor`` in the oebin: the settings.xml beside ``experiment1/`` has Record
    Node processors, so the two folders are nodes of one run (one used), not two runs."""
    session = tmp_path / "2025-04-03_13-38-45"
    for node, renamed in ((101, "first"), (105, "second")):
        target = session / renamed
        shutil.copytree(DATA / f"Record Node {node}", target)
        oebin = target / "experiment1" / "recording1" / "structure.oebin"
        entries = openephys._load_oebin(oebin)["continuous"]
        for entry in entries:
            del entry["recorded_processor"], entry["recorded_processor_id"]
        write_openephys_recording(oebin.parent, entries, n_samples=N, seed=node)
    listing = openephys.list_probes(session)
    assert list(listing.probes) == ["example_data"]
    assert listing.skipped[0].startswith(f"second/{STREAM}: also recorded by first, which is used")
    for node in ("first", "second"):
        (session / node / "settings.xml").unlink()
    assert sorted(openephys.list_probes(session).probes) == ["example_data-first-e1", "example_data-second-e1"]

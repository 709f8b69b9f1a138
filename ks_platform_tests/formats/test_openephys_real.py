"""Open Ephys reader vs probeinterface / SpikeInterface on real GUI headers (0.5.x, 0.6.x, 1.0).

The headers in ``ks_platform_tests/data/openephys`` are real files: ``OE_*`` from probeinterface's test data
(``tests/data/openephys``), ``OEPT_v0.6.7_Binary`` from open-ephys-python-tools' test data (commit 1c915b2,
``tests/data/v0.6.7_Binary``, two Record Nodes recording one File Reader stream). Only headers are stored:
each session is built in a temporary folder with a few hundred generated samples per stream. Layouts that
come with their ``structure.oebin`` keep it; for settings.xml-only layouts the oebin is the one that GUI
version writes for the streams each Record Node records (``recording_state`` ALL / NONE / channel mask).
Each probe stream is compared channel by channel with SpikeInterface's ``read_openephys`` (which reads the
geometry with probeinterface's ``read_openephys_neuropixels``): channel count, order and names, gains,
positions, shank ids and samples.
"""

from __future__ import annotations

import shutil
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ks_platform.core.formats import openephys
from ks_platform_tests.formats.openephys_real_support import (
    DATA,
    N_SAMPLES,
    _our_positions,
    _read_si,
    _si_stream,
    build_from_settings,
    entries_from_settings,
)
from ks_platform_tests.writers import write_openephys_recording


def build_from_oebin(layout: Path, session: Path) -> Path:
    """Copy the real headers and write samples for every stream of every real structure.oebin."""
    shutil.copytree(layout, session)
    for seed, oebin in enumerate(sorted(session.rglob("structure.oebin"))):
        payload = openephys._load_oebin(oebin)
        write_openephys_recording(
            oebin.parent, payload["continuous"], gui_version=payload["GUI version"], n_samples=N_SAMPLES, seed=seed
        )
        experiment = int(oebin.parent.parent.name.removeprefix("experiment"))
        node_dir = oebin.parents[2]
        if experiment > 1 and not (node_dir / f"settings_{experiment}.xml").exists():  # kept as settings.xml only
            shutil.copy(node_dir / "settings.xml", node_dir / f"settings_{experiment}.xml")
    return session


@dataclass(frozen=True)
class Layout:
    folder: str
    settings: str | None  # settings.xml-only layouts: the file to build from; None: real oebin present
    probes: tuple[str, ...]
    skipped: tuple[str, ...]  # substrings each expected in one skipped entry
    #: probe -> why SpikeInterface cannot read it (then only our reader's own checks run)
    si_fails: tuple[tuple[str, str], ...] = ()


LAYOUTS = {
    "np1-binary-1.0": Layout("OE_Neuropix-PXI-NP1-binary", None, ("ProbeA",), ()),
    "np2-4shank-binary-0.6.7": Layout(
        "OE_Neuropix-PXI-NP2-4shank-binary",
        None,
        ("ProbeA",),
        ("ProbeA-LFP: LFP band", "NI-DAQmx-104.PXIe-6341: NI-DAQ analog inputs"),
    ),
    "np2-multishank-binary-0.6.7": Layout("OE_Neuropix-PXI-NP2-multishank-binary", None, ("ProbeA",), ()),
    "onebox-np2014-binary-0.6.7": Layout("OE_OneBox-NP2014-binary", None, ("ProbeA",), ("OneBox-111.OneBox-ADC: ADC",)),
    "oept-two-nodes-0.6.7": Layout(
        "OEPT_v0.6.7_Binary",
        None,
        ("example_data",),
        ("Record Node 105/File_Reader-100.example_data: also recorded by Record Node 101",),
    ),
    "multi-probe-1.0": Layout(
        "OE_1.0_Neuropix-PXI-multi-probe",
        "settings.xml",
        ("ProbeA", "ProbeB", "ProbeC"),
        ("NI-DAQmx-102.PXIe-6341: NI-DAQ",),
    ),
    "multi-probe-0.5": Layout(
        "OE_5_Neuropix-PXI-multi-probe", "settings.xml", ("Neuropix-PXI-100.0", "Neuropix-PXI-100.1"), ()
    ),
    "multi-probe-0.6.0": Layout(
        "OE_Neuropix-PXI-multi-probe",
        "settings.xml",
        ("ProbeA", "ProbeB", "ProbeC", "ProbeD"),
        ("ProbeA-LFP: LFP band", "ProbeD-LFP: LFP band"),
        (
            (
                "ProbeA",
                "384 channels but 383 electrodes (reference channel CH191 has none): SpikeInterface refuses the probe",
            ),
        ),
    ),
    "enabled-enabled-0.6.7": Layout(
        "OE_6.7_enabled_disabled_Neuropix-PXI",
        "settings_enabled-enabled.xml",
        ("ProbeA", "ProbeB"),
        ("ProbeA-LFP", "PXIe-6341: NI-DAQ"),
    ),
    "enabled-disabled-0.6.7": Layout(
        "OE_6.7_enabled_disabled_Neuropix-PXI",
        "settings_enabled-disabled.xml",
        ("ProbeA",),
        ("ProbeA-LFP", "PXIe-6341: NI-DAQ"),
    ),
    "np-ultra-two-nodes-0.6.6": Layout(
        "OE_Neuropix-PXI-NP-Ultra",
        "settings.xml",
        ("ProbeA", "ProbeB", "ProbeD", "ProbeF"),
        ("ProbeA-LFP", "ProbeF-LFP", "NI-DAQmx-106.PXI-6133: NI-DAQ"),
        tuple(
            (p, "labelled NP1100 but its positions match no NP1100 electrodes (probeinterface issue 407)")
            for p in ("ProbeA", "ProbeB", "ProbeF")
        ),
    ),
    "np2-4shank-0.6.5": Layout("OE_Neuropix-PXI-NP2-4shank", "settings.xml", ("ProbeA",), ()),
    "np2-0.6.0": Layout("OE_Neuropix-PXI", "settings.xml", ("ProbeA",), ()),
    "quadbase-1.0": Layout(
        "OE_Neuropix-PXI-QuadBase",
        "settings.xml",
        ("ProbeA", "ProbeB", "ProbeC-1", "ProbeC-2", "ProbeC-3", "ProbeC-4"),
        ("ProbeA-LFP", "ProbeB-LFP"),
    ),
    "quadbase-custom-names-two-nodes-1.0": Layout(
        "OE_Neuropix-PXI-QuadBase",
        "settings_custom_names_w_shank.xml",
        (
            "23207205101-1",
            "23207205101-2",
            "23207205101-3",
            "23207205101-4",
            "46100",
            "46110",
            "46113",
            "46116",
            "46122",
            "50209",
        ),
        ("Record Node 111/Neuropix-PXI-100.46100: also recorded by Record Node 109", "PXIe-6341: NI-DAQ"),
    ),
    "quadbase-custom-names-1.0": Layout(
        "OE_Neuropix-PXI-QuadBase",
        "settings_custom_names.xml",
        (
            "46101",
            "46810",
            "46811-1",
            "46811-2",
            "46811-3",
            "46811-4",
            "50197",
            "50210",
            "50213-1",
            "50213-2",
            "50213-3",
            "50213-4",
            "50720",
        ),
        ("Record Node 111/Neuropix-PXI-100.50210: also recorded by Record Node 109",),
    ),
    "subset-0.6.3": Layout("OE_Neuropix-PXI-subset", "settings.xml", ("ProbeA",), ("ProbeA-LFP", "PXIe-6341: NI-DAQ")),
    "multiple-signalchains-0.6.6": Layout(
        "OE_Neuropix-PXI-multiple-signalchains", "settings.xml", ("ProbeA",), ("ProbeA-LFP", "PXIe-6341: NI-DAQ")
    ),
    "opto-with-sync-0.6.0": Layout(
        "OE_Neuropix-PXI-opto-with-sync", "settings.xml", ("ProbeA",), ("ProbeA-LFP", "PXIe-6341: NI-DAQ")
    ),
    "onebox-np-ultra-two-nodes-0.6.7": Layout(
        "OE_OneBox-NP-Ultra",
        "settings.xml",
        ("ProbeA",),
        ("ProbeA-LFP", "OneBox-ADC: ADC", "Record Node 111/OneBox-100.ProbeA-AP: also recorded by Record Node 101"),
    ),
    "onix-np2-1.0.1": Layout(
        "OE_ONIX-NP",
        "settings_NP2.xml",
        (
            "PortA-Neuropixels2.0eHeadstage-Neuropixels2.0-Probe0",
            "PortA-Neuropixels2.0eHeadstage-Neuropixels2.0-Probe1",
        ),
        ("BreakoutBoard-DigitalIO: digital", "BreakoutBoard-AnalogIO-AnalogInput: ADC", "BNO055: digital / auxiliary"),
    ),
    "onix-np1-bank-b-1.0.1": Layout(
        "OE_ONIX-NP",
        "settings_bankB.xml",
        ("PortB-Neuropixels1.0eHeadstage-Probe",),
        ("Probe-LFP: LFP band", "MemoryMonitor-PercentUsed"),
    ),
}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def layout_session(request, tmp_path_factory) -> tuple[Layout, Path]:
    layout = LAYOUTS[request.param]
    session = tmp_path_factory.mktemp(request.param) / "session"
    if layout.settings is None:
        return layout, build_from_oebin(DATA / layout.folder, session)
    return layout, build_from_settings(DATA / layout.folder / layout.settings, session)


def test_probes_and_skipped_streams(layout_session):
    layout, session = layout_session
    listing = openephys.list_probes(session)
    assert sorted(listing.probes) == sorted(layout.probes)
    for expected in layout.skipped:
        assert any(expected in entry for entry in listing.skipped), (expected, listing.skipped)
    assert all(": " in entry for entry in listing.skipped)


def test_matches_spikeinterface_channel_by_channel(layout_session):
    layout, session = layout_session
    fails = dict(layout.si_fails)
    for name in layout.probes:
        source = openephys.open_recording(session, name)
        assert source.probe_name == name
        data = np.fromfile(source.data_files[0], dtype="<i2").reshape(-1, source.n_channels)
        np.testing.assert_array_equal(source.read_chunk(0, N_SAMPLES), data[:, list(source.sorting_channels)])
        if name in fails:
            with pytest.raises(Exception):  # noqa: B017 - documents that SpikeInterface cannot open it
                _read_si(session, _si_stream(source))
            assert source.probe is not None, (name, source.scaling_note)  # ours still wires the settings' electrodes
            continue
        recording = _read_si(session, _si_stream(source))
        oebin = openephys._load_oebin(source.data_files[1])
        entry = next(
            e for e in oebin["continuous"] if e["folder_name"].strip("/") == source.details["openephys_stream"]
        )
        names = [entry["channels"][i]["channel_name"] for i in source.sorting_channels]
        assert list(recording.channel_ids) == names
        assert recording.get_sampling_frequency() == source.sampling_frequency
        np.testing.assert_allclose(recording.get_channel_gains(), source.uv_per_bit, rtol=1e-6)
        np.testing.assert_array_equal(recording.get_traces(return_in_uV=False), source.read_chunk(0, source.n_samples))
        if recording.has_probe():
            assert source.probe is not None, source.scaling_note
            ours, shanks = _our_positions(source)
            np.testing.assert_allclose(ours, recording.get_channel_locations(), atol=1e-6)
            theirs = recording.get_probe()
            if shanks is not None:
                np.testing.assert_array_equal(shanks, np.asarray(theirs.shank_ids))
        else:  # SpikeInterface attaches no probe to GUI 0.5.x streams (no STREAM names): compared with probeinterface below
            assert (
                source.probe is None or source.details["gui_version"].startswith("0.5") or "XPOS" in source.scaling_note
            )


def test_geometry_matches_probeinterface(layout_session):
    """Direct probeinterface reads (``probe_name`` for GUI 0.5.x, ``stream_name`` otherwise)."""
    import probeinterface as pi

    layout, session = layout_session
    for name in layout.probes:
        source = openephys.open_recording(session, name)
        settings = (
            next(p for p in source.data_files if p.suffix == ".xml")
            if any(p.suffix == ".xml" for p in source.data_files)
            else None
        )
        if settings is None or not pi.has_neuropixels_probes(settings) or name in dict(layout.si_fails):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if name.startswith("Neuropix-PXI-"):  # GUI 0.5.x: probeinterface names probes <nodeId>.<k>
                expected = pi.read_openephys_neuropixels(settings, probe_name=name.removeprefix("Neuropix-PXI-"))
            else:
                expected = pi.read_openephys_neuropixels(settings, stream_name=source.details["openephys_stream"])
        ours, _ = _our_positions(source)
        assert ours.shape == expected.contact_positions.shape
        np.testing.assert_allclose(ours, expected.contact_positions, atol=1e-6)


def _parts(settings: Path) -> set[str]:
    root = ET.parse(settings).getroot()
    return {p.attrib.get("probe_part_number") or p.attrib.get("probePartNumber") or "" for p in root.iter("NP_PROBE")}


def test_every_catalogue_part_gets_catalogue_positions(layout_session):
    """Every real layout: a probe whose settings.xml names catalogue parts sits on its part's catalogue electrodes
    (never the plugin's own positions)."""
    from probeinterface.neuropixels_tools import build_neuropixels_probe

    layout, session = layout_session
    for name in layout.probes:
        source = openephys.open_recording(session, name)
        settings = next((p for p in source.data_files if p.suffix == ".xml"), None)
        known = {part for part in _parts(settings) if openephys._catalogue_features(part)} if settings else set()
        if not known:
            continue
        assert "NP_PROBE ELECTRODE_XPOS" not in source.scaling_note, (name, source.scaling_note)
        part = source.probe.annotations["part_number"]
        catalogue = {tuple(p) for p in build_neuropixels_probe(part).contact_positions.round(6)}
        ours, _ = _our_positions(source)
        assert {tuple(p) for p in ours.round(6)} <= catalogue, (name, part)


def test_two_experiments_take_their_own_settings_file(tmp_path):
    """``settings.xml`` (GUI 0.6.0) for experiment 1 and ``settings_2.xml`` (0.6.2) for experiment 2, as the GUI
    names them: each experiment is its own probe set, compared with SpikeInterface's ``experiment_name``."""
    import spikeinterface.extractors as se

    folder = DATA / "OE_Neuropix-PXI-multi-probe"
    node_dir = tmp_path / "Record Node 102"
    for experiment, name in ((1, "settings.xml"), (2, "settings_2.xml")):
        root = ET.parse(folder / name).getroot()
        (entries,) = entries_from_settings(root).values()
        write_openephys_recording(
            node_dir / f"experiment{experiment}" / "recording1",
            entries,
            gui_version=root.findtext("INFO/VERSION"),
            n_samples=N_SAMPLES,
            seed=experiment,
        )
        shutil.copy(folder / name, node_dir / name)
    listing = openephys.list_probes(tmp_path)
    assert sorted(listing.probes) == ["ProbeA-e1", "ProbeA-e2", "ProbeB-e1", "ProbeB-e2", "ProbeC-e1", "ProbeD-e1"]
    for name in ("ProbeA-e2", "ProbeB-e2", "ProbeB-e1"):
        source = openephys.open_recording(tmp_path, name)
        experiment = source.details["experiment"]
        assert source.scaling_note.count("settings_2.xml" if experiment == 2 else "settings.xml (")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            recording = se.read_openephys(
                tmp_path, stream_name=_si_stream(source), experiment_name=f"experiment{experiment}"
            )
        np.testing.assert_array_equal(recording.get_traces(return_in_uV=False), source.read_chunk(0, source.n_samples))
        np.testing.assert_allclose(_our_positions(source)[0], recording.get_channel_locations(), atol=1e-6)

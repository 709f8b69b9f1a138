"""``ks-platform convert`` on Open Ephys folders: a folder without a probe to sort says what it holds; a legacy
recording is converted to the binary SpikeInterface reads from the same files."""

from __future__ import annotations

import json
import warnings

import numpy as np

from ks_platform.cli import main
from ks_platform_tests.formats import synthetic as syn
from ks_platform_tests.formats.openephys_support import _nidaq, _np_stream, _write
from ks_platform_tests.writers import write_openephys_legacy


def test_binary_folder_without_a_probe_names_its_streams(tmp_path, capsys):
    _write(tmp_path / "s", entries=[_nidaq(), _np_stream("ProbeA-LFP", 2500.0, n=8)])
    assert main(["convert", str(tmp_path / "s"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert (
        "no probe recording to sort in this openephys folder; it holds: NI-DAQmx-102.PXIe-6341: NI-DAQ analog " in err
    )
    assert "Neuropix-PXI-100.ProbeA-LFP: LFP band, not sorted" in err and "Fix: record the wideband/AP band" in err


def test_legacy_folder_without_ch_channels_names_its_files(tmp_path, capsys):
    folder = tmp_path / "2016-06-15_11-45-27"
    write_openephys_legacy(folder, np.zeros((1024, 0), np.int16), syn.FS, syn.DATE, extra_channels=("AUX1", "ADC1"))
    assert main(["convert", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no probe recording to sort in this openephys-legacy folder; it holds: 100_ADC1..ADC1: ADC" in err
    assert "100_AUX1..AUX1: auxiliary" in err


def test_legacy_recording_converts_to_what_spikeinterface_reads(tmp_path, capsys):
    import spikeinterface.extractors as se

    folder = tmp_path / "2016-06-15_11-45-27"
    traces = syn.traces(4 * 1024)[:, :8]
    starts = [0, 1024, 4096, 5120]  # a 2048-sample pause after the second record
    write_openephys_legacy(folder, traces, syn.FS, syn.DATE, record_starts=starts, recording_numbers=[0, 0, 1, 1])
    assert main(["convert", str(folder), "--out", str(tmp_path / "out")]) == 0
    manifest = json.loads((tmp_path / "out" / "raw_recording.json").read_text())
    assert manifest["format"] == "openephys-legacy" and manifest["n_samples"] == 6144
    binary = np.fromfile(tmp_path / "out" / "binary" / "recording.bin", np.int16).reshape(-1, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = se.read_openephys(folder, stream_name="Signals CH").get_traces(return_in_uV=False)
    np.testing.assert_array_equal(binary, theirs)
    assert not binary[2048:4096].any() and "segment" in capsys.readouterr().out

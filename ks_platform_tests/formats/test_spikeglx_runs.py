"""SpikeGLX run folders: several probes, gates and triggers, CatGT output, skipped streams and bad metas."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ks_platform.core import formats
from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import spikeglx
from ks_platform.core.synthetic import GlxProbe, write_spikeglx_run

#: The NP2013 subset of SpikeGLX's own test data: 120 AP channels + sync (acquired id 384).
NP2_SUBSET = (*range(36), *range(72, 96), *range(192, 228), *range(264, 288))
FULL, SUBSET = GlxProbe("imec0"), GlxProbe("imec1", NP2_SUBSET, np2=True)


def _frames(path: Path, n_channels: int) -> np.ndarray:
    return np.fromfile(path, np.int16).reshape(-1, n_channels)


def _edit(meta: Path, key: str, value: str) -> Path:
    lines = [
        f"{key}={value}" if line.lstrip("~").startswith(f"{key}=") else line for line in meta.read_text().splitlines()
    ]
    meta.write_text("\n".join(lines) + "\n")
    return meta


def test_each_imec_of_a_run_is_a_probe_and_a_saved_subset_keeps_all_its_ap_channels(tmp_path):
    written = write_spikeglx_run(tmp_path / "run", (FULL, SUBSET))
    listing = formats.list_probes(tmp_path / "run")
    assert {name: list(files) for name, files in listing.probes.items()} == written
    full = formats.open_recording(tmp_path / "run", "imec0")
    subset = formats.open_recording(tmp_path / "run", "imec1")
    assert (full.n_channels, full.sorting_channels) == (385, tuple(range(384)))  # sync (id 768) not sorted
    assert (subset.n_channels, subset.sorting_channels) == (121, tuple(range(120)))  # not 60: ids are acquired ids
    assert full.uv_per_bit == pytest.approx(0.6 / 512 / 500 * 1e6)
    assert subset.uv_per_bit == pytest.approx(0.62 / 2048 / 100 * 1e6)
    assert full.zero_copy_path == written["imec0"][0] and full.probe_name == "imec0"
    assert np.array_equal(subset.read_chunk(10, 150), _frames(written["imec1"][0], 121)[10:150, :120])
    probe, _ = formats_probe(subset)
    order = np.argsort(probe.device_channel_indices)
    assert probe.device_channel_indices[order].tolist() == list(range(120))
    assert [int(s) for s in probe.shank_ids[order]] == [
        c // 96 for c in NP2_SUBSET
    ]  # the generated imro: shank c // 96


def formats_probe(source):
    from ks_platform.core.probes import probe_for_recording

    return probe_for_recording(source)


def test_gates_and_triggers_are_appended_in_order_into_one_recording(tmp_path):
    written = write_spikeglx_run(tmp_path / "run", (SUBSET,), gates=(0, 1), triggers=(0, 1), n_samples=150)
    source = formats.open_recording(tmp_path / "run")
    files = written["imec1"]
    assert [p.name for p in files] == [
        "run_g0_t0.imec1.ap.bin",
        "run_g0_t1.imec1.ap.bin",
        "run_g1_t0.imec1.ap.bin",
        "run_g1_t1.imec1.ap.bin",
    ]
    appended = np.concatenate([_frames(p, 121)[:, :120] for p in files])
    assert source.n_samples == 600 and source.zero_copy_path is None
    assert np.array_equal(source.read_chunk(0, 600), appended)
    assert np.array_equal(source.read_chunk(140, 460), appended[140:460])  # spans three files
    assert np.array_equal(source.read_chunk(590, 700), appended[590:])  # clipped at the end
    assert source.data_files == tuple(p for f in files for p in (f, f.with_suffix(".meta")))
    timeline = source.summary()["timeline"]
    assert [(s["label"], s["first_sample"], s["binary_start"], s["n_samples"]) for s in timeline] == [
        ("g0_t0", 0, 0, 150),
        ("g0_t1", 150, 150, 150),
        ("g1_t0", 300, 300, 150),
        ("g1_t1", 450, 450, 150),
    ]
    assert timeline[2]["file"] == "run_g1/run_g1_imec1/run_g1_t0.imec1.ap.bin"


def test_one_gate_can_be_opened_on_its_own(tmp_path):
    written = write_spikeglx_run(tmp_path / "run", (FULL,), gates=(0, 1), n_samples=100)
    gate = formats.open_recording(tmp_path / "run", "imec0-g1")
    assert gate.probe_name == "imec0-g1" and gate.n_samples == 100 and gate.zero_copy_path == written["imec0"][1]
    assert list(formats.list_probes(tmp_path / "run").probes) == ["imec0"]  # not listed as a probe of its own
    with pytest.raises(SessionInputError, match="no probe named 'imec0-g5'"):
        formats.open_recording(tmp_path / "run", "imec0-g5")


def test_gates_that_disagree_are_refused_naming_the_meta(tmp_path):
    written = write_spikeglx_run(tmp_path / "run", (FULL,), gates=(0, 1), n_samples=100)
    meta = _edit(written["imec0"][1].with_suffix(".meta"), "imSampRate", "30000.5")
    _edit(meta, "fileTimeSecs", str(100 / 30000.5))
    with pytest.raises(SessionInputError, match="imSampRate differs") as caught:
        formats.open_recording(tmp_path / "run")
    assert caught.value.path == meta


def test_catgt_output_is_preferred_and_the_raw_files_are_listed_as_skipped(tmp_path):
    written = write_spikeglx_run(tmp_path / "run", (FULL,), gates=(0,), triggers=(0, 1), n_samples=100, catgt=True)
    listing = formats.list_probes(tmp_path / "run")
    [catgt] = listing.probes["imec0"]
    assert catgt.name == "run_g0_tcat.imec0.ap.bin" and catgt.parent.parent.name == "catgt_run_g0"
    assert [s.split(":")[0] for s in listing.skipped] == [
        str(p.relative_to(tmp_path / "run")) for p in written["imec0"]
    ]
    assert all("superseded by the CatGT output" in s for s in listing.skipped)
    source = formats.open_recording(tmp_path / "run")
    assert source.zero_copy_path == catgt and source.n_samples == 200 and source.summary()["catgt"] is True
    assert np.array_equal(
        source.read_chunk(0, 200), np.concatenate([_frames(p, 385)[:, :384] for p in written["imec0"]])
    )
    shutil.rmtree(tmp_path / "run" / "run_g0")  # CatGT output alone is a session too
    assert formats.open_recording(tmp_path / "run").data_files[0] == catgt


def test_ni_daq_and_lf_streams_are_listed_as_skipped_with_why(tmp_path):
    write_spikeglx_run(tmp_path / "run", (FULL,), other_streams=True)
    listing = formats.list_probes(tmp_path / "run")
    assert list(listing.probes) == ["imec0"]
    assert sorted(listing.skipped) == [
        "run_g0/run_g0_imec0/run_g0_t0.imec0.lf.bin: LF band (sorting uses the AP band)",
        "run_g0/run_g0_t0.nidq.bin: NI-DAQ stream (not a probe)",
    ]
    assert formats.open_recording(tmp_path / "run").summary()["skipped_streams"] == list(listing.skipped)
    for path in (tmp_path / "run").rglob("*.ap.*"):
        path.unlink()
    with pytest.raises(SessionInputError, match="no probe recording to sort in this spikeglx folder.*NI-DAQ"):
        formats.list_probes(tmp_path / "run")


def test_phase3a_files_are_probe_imec(tmp_path):
    written = write_spikeglx_run(tmp_path / "run", (FULL,))
    path = written["imec0"][0]
    for suffix in (".bin", ".meta"):
        path.with_suffix(suffix).rename(path.parent / f"test_file.imec.ap{suffix}")
    meta = path.parent / "test_file.imec.ap.meta"  # phase 3A: SpikeGLX names the file *.imec.ap.bin
    meta.write_text(meta.read_text().replace("fileName=run_g0_t0.imec0.ap.bin", "fileName=run_g0_t0.imec.ap.bin"))
    assert list(formats.list_probes(tmp_path / "run").probes) == ["imec"]
    assert formats.open_recording(tmp_path / "run").probe_name == "imec"


def test_an_ap_bin_without_its_meta_is_named(tmp_path):
    written = write_spikeglx_run(tmp_path / "run", (FULL,), gates=(0, 1))
    written["imec0"][1].with_suffix(".meta").unlink()
    with pytest.raises(SessionInputError, match="run_g1_t0.imec0.ap.bin") as caught:
        formats.open_recording(tmp_path / "run")
    assert caught.value.path == written["imec0"][1].with_suffix(".meta") and "copy the .ap.meta" in caught.value.fix


def test_gates_whose_channel_gains_differ_are_refused(tmp_path):
    # mixed AP gains within a file are rescaled (test_spikeglx_gains.py); gates recorded with different imro
    # tables are not one recording
    written = write_spikeglx_run(tmp_path / "run", (FULL,), gates=(0, 1))
    meta = written["imec0"][1].with_suffix(".meta")
    meta.write_text(meta.read_text().replace("(7 0 0 500 250 1)", "(7 0 0 1000 250 1)"))
    with pytest.raises(SessionInputError, match="differs from run_g0_t0.imec0.ap.meta") as caught:
        formats.open_recording(tmp_path / "run")
    assert caught.value.path == meta and "split_segments" in caught.value.fix
    assert formats.open_recording(tmp_path / "run", "imec0-g1").scaling_note.count("gain 1000 on 1 channels (x1)")


BAD_NUMBERS = [
    (FULL, "imMaxInt", "0"),
    (FULL, "imMaxInt", "-512"),
    (FULL, "imSampRate", "nan"),
    (FULL, "imSampRate", "-1"),
    (FULL, "imSampRate", "thirty-thousand"),
    (FULL, "imSampRate", "inf"),
    (FULL, "imSampRate", "1e999"),
    (FULL, "imAiRangeMax", "0"),
    (FULL, "imAiRangeMax", ""),
    (FULL, "nSavedChans", "0"),
    (FULL, "fileTimeSecs", "nan"),
    (FULL, "fileSizeBytes", "many"),
    (FULL, "snsSaveChanSubset", "0:383,abc"),
    (FULL, "snsSaveChanSubset", "383:0,768"),
    (FULL, "snsSaveChanSubset", "0:383,9999"),
    (FULL, "snsSaveChanSubset", "0:383,0"),
    (FULL, "snsSaveChanSubset", ""),
    (FULL, "acqApLfSy", "384;384;1"),
    (FULL, "imroTbl", "garbage"),
    (SUBSET, "imChan0apGain", "0"),
    (SUBSET, "imChan0apGain", "nan"),
]


@pytest.mark.parametrize(("probe", "key", "value"), BAD_NUMBERS, ids=[f"{k}={v!r}" for _, k, v in BAD_NUMBERS])
def test_bad_numbers_in_the_meta_name_the_meta_and_the_key(tmp_path, probe, key, value):
    written = write_spikeglx_run(tmp_path / "run", (probe,))
    meta = _edit(written[probe.name][0].with_suffix(".meta"), key, value)
    with pytest.raises(SessionInputError) as caught:  # never ZeroDivisionError / ValueError
        formats.open_recording(tmp_path / "run")
    assert caught.value.path == meta and key in caught.value.problem, caught.value


def test_files_of_two_runs_for_one_probe_are_refused(tmp_path):
    write_spikeglx_run(tmp_path / "both", (FULL,), run="first")
    write_spikeglx_run(tmp_path / "both", (FULL,), run="second")
    with pytest.raises(SessionInputError, match="2 runs"):
        spikeglx.open_recording(tmp_path / "both")


def test_a_multi_gate_probe_converts_to_one_binary_with_the_files_appended(tmp_path, monkeypatch):
    from ks_platform.core import conversion

    monkeypatch.setattr(conversion, "CHUNK_BYTES", 1)  # the smallest chunks (512 frames): files of 300 frames
    written = write_spikeglx_run(tmp_path / "run", (FULL,), gates=(0, 1), triggers=(0, 1), n_samples=300)
    source = formats.open_recording(tmp_path / "run")
    binary = conversion.write_recording_binary(source, tmp_path / "binary")
    assert not binary.zero_copy and binary.n_chan_bin == 384 and binary.n_samples == 1200
    appended = np.concatenate([_frames(p, 385)[:, :384] for p in written["imec0"]])
    assert np.array_equal(_frames(binary.path, 384), appended)

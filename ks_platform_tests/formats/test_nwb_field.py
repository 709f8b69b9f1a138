"""NWB files as labs get them (neuroconv's SpikeGLX and SpikeInterface pipes, pynwb layouts, Zarr), each read by
our reader and by SpikeInterface's ``read_nwb_recording``: same channels in the same order, samples within one
int16 step, same positions where SpikeInterface has them."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ks_platform.core import formats, probes
from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import nwb
from ks_platform_tests.conftest import require_module
from ks_platform_tests.nwb_support import (
    FS,
    N_CHANNELS,
    N_SAMPLES,
    START,
    _linear_positions,
    _noise,
    _series,
    _spikeinterface,
    _write_pynwb,
)

# ------------------------------------------------------------------------------------------- helpers


def _agrees_with_spikeinterface(folder: Path, probe: str | None, file: Path, series: str):
    """Our source for ``probe`` against SpikeInterface's reading of ``series``: channels, samples, positions."""
    source = nwb.open_recording(folder, probe)
    recording = _spikeinterface(file, series)
    assert (recording.get_num_channels(), recording.get_num_samples()) == (source.n_channels, source.n_samples)
    assert recording.get_sampling_frequency() == pytest.approx(source.sampling_frequency)
    ours = source.read_chunk(0, source.n_samples).astype(np.float64) * source.uv_per_bit
    theirs = recording.get_traces(return_in_uV=True).astype(np.float64)
    assert np.abs(ours - theirs).max() <= source.uv_per_bit * 1.0001, "samples differ by more than one int16 step"
    assert np.abs(ours).max(axis=0).min() > 0  # every channel carries data: a column order mix-up would show
    if "location" in recording.get_property_keys() or recording.has_probe():
        np.testing.assert_allclose(source.probe.contact_positions, recording.get_channel_locations())
    return source, recording


def _spikeglx_folder(
    folder: Path, probes_: tuple[int, ...] = (0,), n_channels: int = 48, n_samples: int = N_SAMPLES
) -> Path:
    """A SpikeGLX run (NP1.0 meta as ``ks_platform.core.synthetic`` writes it) with one AP file per probe."""
    from ks_platform.core.synthetic import spikeglx_meta

    folder.mkdir(parents=True, exist_ok=True)
    for index in probes_:
        data = np.random.default_rng(index).integers(-300, 300, (n_samples, n_channels + 1), dtype=np.int16)
        (folder / f"demo_g0_t0.imec{index}.ap.bin").write_bytes(data.tobytes())
        meta = spikeglx_meta(n_channels, n_samples, FS, START.date()).replace("imec0", f"imec{index}")
        meta = meta.replace("typeImEnabled=1", f"typeImEnabled={len(probes_)}").replace(
            "imDatPrb_sn=18005116022", f"imDatPrb_sn=1800511602{index}"
        )
        (folder / f"demo_g0_t0.imec{index}.ap.meta").write_text(meta)
    return folder


def _neuroconv_metadata(converter) -> dict:
    metadata = converter.get_metadata()
    metadata["NWBFile"]["session_start_time"] = START
    return metadata


# --------------------------------------------------------------------------------------- neuroconv


@pytest.fixture(scope="module")
def neuroconv_one_probe(tmp_path_factory) -> tuple[Path, Path]:
    require_module("neuroconv")
    from neuroconv.datainterfaces import SpikeGLXRecordingInterface

    base = tmp_path_factory.mktemp("nc_one")
    raw = _spikeglx_folder(base / "spikeglx")
    interface = SpikeGLXRecordingInterface(folder_path=raw, stream_id="imec0.ap")
    file = base / "session" / "sub-01_ses-01_ecephys.nwb"
    file.parent.mkdir()
    interface.run_conversion(nwbfile_path=file, metadata=_neuroconv_metadata(interface), overwrite=True)
    return file, raw


def test_neuroconv_spikeglx_file_reads_like_spikeinterface(neuroconv_one_probe):
    from probeinterface import read_spikeglx

    file, raw = neuroconv_one_probe
    with h5py.File(file) as handle:
        assert handle["acquisition/ElectricalSeriesAP/data"].compression == "gzip"  # neuroconv's default
    listing = nwb.list_probes(file.parent)
    assert list(listing.probes) == ["ElectricalSeriesAP"]
    source, recording = _agrees_with_spikeinterface(file.parent, None, file, "ElectricalSeriesAP")
    assert source.probe_name == "ElectricalSeriesAP" and source.uv_per_bit == pytest.approx(2.34375)
    # neuroconv writes no rel_x/rel_y for SpikeGLX: the geometry comes from the catalogue and electrode_name
    truth = read_spikeglx(raw / "demo_g0_t0.imec0.ap.meta")
    np.testing.assert_allclose(source.probe.contact_positions, truth.contact_positions)
    assert list(source.probe.contact_ids) == list(truth.contact_ids)
    assert "catalogue PRB_1_4_0480_1" in source.details["geometry"]
    assert not recording.has_probe()  # SpikeInterface has no positions for this file; ours are SpikeGLX's own


def test_neuroconv_two_probes_are_two_partitions(tmp_path):
    require_module("neuroconv")
    from neuroconv.converters import SpikeGLXConverterPipe

    raw = _spikeglx_folder(tmp_path / "spikeglx", probes_=(0, 1))
    converter = SpikeGLXConverterPipe(folder_path=raw)
    file = tmp_path / "session" / "two_probes.nwb"
    file.parent.mkdir()
    converter.run_conversion(nwbfile_path=file, metadata=_neuroconv_metadata(converter), overwrite=True)
    listing = formats.list_probes(file.parent)
    assert sorted(listing.probes) == ["ElectricalSeriesAPImec0", "ElectricalSeriesAPImec1"]
    blocks = []
    for name in sorted(listing.probes):
        source, _ = _agrees_with_spikeinterface(file.parent, name, file, name)
        assert source.n_channels == 48 and source.probe is not None
        blocks.append(source.read_chunk(0, 100))
    assert not np.array_equal(*blocks)
    with pytest.raises(SessionInputError, match="2 probes"):
        nwb.open_recording(file.parent)


def _numpy_recording(with_location: bool):
    from probeinterface import generate_linear_probe
    from spikeinterface.core import NumpyRecording

    recording = NumpyRecording([_noise(16)], FS)
    probe = generate_linear_probe(num_elec=16, ypitch=20)
    probe.set_device_channel_indices(np.arange(16))
    recording = recording.set_probe(probe) or recording  # in place from SpikeInterface 0.105, a copy before
    recording.set_channel_gains(0.195)
    recording.set_channel_offsets(0.0)
    if with_location:  # older SpikeInterface kept positions in "location"; neuroconv writes it as rel_x/rel_y
        recording.set_property("location", recording.get_channel_locations())
    return recording


@pytest.mark.parametrize("with_location", [True, False], ids=["rel_x", "no_positions"])
def test_neuroconv_spikeinterface_pipe(tmp_path, with_location):
    require_module("neuroconv")
    from neuroconv.tools.spikeinterface import write_recording_to_nwbfile

    file = tmp_path / "session" / "si.nwb"
    file.parent.mkdir()
    metadata = {"NWBFile": {"session_description": "si pipe", "identifier": "si-pipe", "session_start_time": START}}
    write_recording_to_nwbfile(_numpy_recording(with_location), nwbfile_path=file, metadata=metadata, overwrite=True)
    [name] = nwb.list_probes(file.parent).probes
    source, _ = _agrees_with_spikeinterface(file.parent, name, file, name)
    if with_location:
        np.testing.assert_allclose(source.probe.contact_positions, _numpy_recording(True).get_channel_locations())
    else:
        assert source.probe is None and "geometry missing" in source.details["geometry"]
        with pytest.raises(SessionInputError, match="no probe description"):
            probes.probe_for_recording(source)


# ------------------------------------------------------------------------------------- pynwb layouts


def test_rel_x_rel_y_are_positions_and_x_y_z_are_not(tmp_path):
    positions = _linear_positions()
    brain = {
        "x": np.full(N_CHANNELS, 1200.0),
        "y": np.linspace(-2000, -1800, N_CHANNELS),
        "z": np.full(N_CHANNELS, 3000.0),
    }
    file = _write_pynwb(
        tmp_path / "s" / "rec.nwb",
        [_series("ElectricalSeries", _noise(), conversion=0.195e-6)],
        {"rel_x": positions[:, 0], "rel_y": positions[:, 1], **brain},
    )
    source, _ = _agrees_with_spikeinterface(file.parent, None, file, "ElectricalSeries")
    np.testing.assert_allclose(source.probe.contact_positions, positions)
    assert source.details["geometry"].startswith("electrodes table rel_x/rel_y")


def test_allen_probe_positions_are_used(tmp_path):
    positions = _linear_positions()
    columns = {
        "probe_horizontal_position": positions[:, 0],
        "probe_vertical_position": positions[:, 1],
        "x": np.full(N_CHANNELS, 8000.0),
    }
    file = _write_pynwb(
        tmp_path / "s" / "rec.nwb", [_series("ElectricalSeries", _noise(), conversion=0.195e-6)], columns
    )
    source = nwb.open_recording(file.parent)
    np.testing.assert_allclose(source.probe.contact_positions, positions)
    assert source.details["geometry"].startswith("electrodes table probe_horizontal_position/probe_vertical_position")


def test_only_brain_coordinates_leave_the_probe_to_the_session_config(tmp_path):
    brain = {"x": np.arange(N_CHANNELS) * 10.0, "y": np.arange(N_CHANNELS) * 20.0, "z": np.full(N_CHANNELS, 3000.0)}
    file = _write_pynwb(tmp_path / "s" / "rec.nwb", [_series("ElectricalSeries", _noise(), conversion=0.195e-6)], brain)
    source = formats.open_recording(file.parent)
    assert source.probe is None
    assert (
        "x/y/z ignored: brain coordinates" in source.details["geometry"]
        and "session config" in source.summary()["geometry"]
    )
    with pytest.raises(SessionInputError, match="no probe description"):
        probes.probe_for_recording(source)
    _agrees_with_spikeinterface(file.parent, None, file, "ElectricalSeries")


def test_identical_values_on_every_row_do_not_crash(tmp_path):
    same = np.zeros(N_CHANNELS)
    columns = {"rel_x": same, "rel_y": same, "x": same, "y": same, "z": same}
    file = _write_pynwb(
        tmp_path / "s" / "rec.nwb", [_series("ElectricalSeries", _noise(), conversion=0.195e-6)], columns
    )
    source = nwb.open_recording(file.parent)
    assert source.probe is None and "the same (0, 0) on every row" in source.details["geometry"]
    assert source.read_chunk(0, 10).shape == (10, N_CHANNELS)


def test_two_wideband_series_and_an_lfp(tmp_path):
    ap0, ap1 = _noise(seed=1), _noise(seed=2)
    lfp = _noise(n_samples=1250, seed=3)
    series = [
        _series("ElectricalSeriesAPImec0", ap0, conversion=2.34375e-6, rows=range(32)),
        _series("ElectricalSeriesAPImec1", ap1, conversion=2.34375e-6, rows=range(32, 64)),
        _series("ElectricalSeriesLFImec0", lfp, rate=2500.0, conversion=4.6875e-6, rows=range(32)),
    ]
    positions = np.vstack([_linear_positions(), _linear_positions()])
    file = _write_pynwb(tmp_path / "s" / "rec.nwb", series, {"rel_x": positions[:, 0], "rel_y": positions[:, 1]})
    listing = nwb.list_probes(file.parent)
    assert sorted(listing.probes) == ["ElectricalSeriesAPImec0", "ElectricalSeriesAPImec1"]
    assert listing.skipped == (
        "ElectricalSeriesLFImec0: sampled at 2500 Hz (< 10000 Hz: LFP or a downsampled band), not sorted",
    )
    for name, data in (("ElectricalSeriesAPImec0", ap0), ("ElectricalSeriesAPImec1", ap1)):
        source, _ = _agrees_with_spikeinterface(file.parent, name, file, name)
        np.testing.assert_array_equal(source.read_chunk(0, N_SAMPLES), data)
        assert source.details["skipped_streams"] == list(listing.skipped)


def test_lfp_only_file_is_not_sorted(tmp_path):
    file = _write_pynwb(
        tmp_path / "s" / "rec.nwb",
        [_series("ElectricalSeriesLFP", _noise(n_samples=2500), rate=2500.0)],
        {"rel_x": _linear_positions()[:, 0], "rel_y": _linear_positions()[:, 1]},
    )
    with pytest.raises(SessionInputError, match=r"no probe recording to sort.*ElectricalSeriesLFP: sampled at 2500 Hz"):
        formats.list_probes(file.parent)
    with pytest.raises(SessionInputError, match=r"no probe recording to sort.*2500 Hz"):
        nwb.open_recording(file.parent)


def test_same_series_name_in_two_files_gets_the_file_stem(tmp_path):
    positions = _linear_positions()
    columns = {"rel_x": positions[:, 0], "rel_y": positions[:, 1]}
    a = _write_pynwb(
        tmp_path / "s" / "probeA.nwb", [_series("ElectricalSeries", _noise(seed=1), conversion=0.195e-6)], columns
    )
    _write_pynwb(
        tmp_path / "s" / "probeB.nwb",
        [
            _series("ElectricalSeries", _noise(seed=2), conversion=0.195e-6),
            _series("ElectricalSeriesExtra", _noise(seed=4), conversion=0.195e-6),
        ],
        columns,
    )
    listing = formats.list_probes(a.parent)
    assert sorted(listing.probes) == ["ElectricalSeriesExtra", "probeA-ElectricalSeries", "probeB-ElectricalSeries"]
    assert listing.probes["probeA-ElectricalSeries"] == (a,)
    source, _ = _agrees_with_spikeinterface(a.parent, "probeA-ElectricalSeries", a, "ElectricalSeries")
    np.testing.assert_array_equal(source.read_chunk(0, 50), _noise(seed=1)[:50])


def test_channel_conversion_rescaled_without_clipping(tmp_path):
    """Per-channel gains 0.5..4 on full-scale int16: the µV/bit comes from the dtype's range, nothing clips."""
    data = _noise(scale=6000.0)
    gains = np.linspace(0.5, 4.0, N_CHANNELS)
    file = _write_pynwb(
        tmp_path / "s" / "rec.nwb",
        [_series("ElectricalSeries", data, conversion=0.195e-6, channel_conversion=gains)],
        {"rel_x": _linear_positions()[:, 0], "rel_y": _linear_positions()[:, 1]},
    )
    source, _ = _agrees_with_spikeinterface(file.parent, None, file, "ElectricalSeries")
    block = source.read_chunk(0, N_SAMPLES)
    old_clipped = int((np.abs(np.rint(data * gains)) > 32767).sum())  # what 0.195 µV/bit would clip
    assert old_clipped > 1000
    assert int((np.abs(block) == 32767).sum()) <= 2 and source.uv_per_bit == pytest.approx(0.195 * 4, rel=1e-3)
    assert "nothing clips" in source.scaling_note


def test_float_volts_get_a_step_that_does_not_clip(tmp_path):
    volts = (_noise(scale=3000.0).astype(np.float32) * np.float32(0.195e-6)) * np.float32(3.0)  # up to ±19 mV
    file = _write_pynwb(
        tmp_path / "s" / "rec.nwb",
        [_series("ElectricalSeries", volts)],
        {"rel_x": _linear_positions()[:, 0], "rel_y": _linear_positions()[:, 1]},
    )
    source, _ = _agrees_with_spikeinterface(file.parent, None, file, "ElectricalSeries")
    assert source.uv_per_bit == pytest.approx(0.585, rel=1e-3) and source.uv_per_bit >= 32767 * 0.585 / 32767
    assert np.abs(source.read_chunk(0, N_SAMPLES)).max() <= 32767


def test_float_with_a_glitch_beyond_any_usable_step_is_refused_with_a_count(tmp_path):
    volts = _noise().astype(np.float32) * np.float32(0.195e-6)
    volts[100:103, 4] = 1.0  # 1 V: three samples
    file = _write_pynwb(
        tmp_path / "s" / "rec.nwb",
        [_series("ElectricalSeries", volts)],
        {"rel_x": _linear_positions()[:, 0], "rel_y": _linear_positions()[:, 1]},
    )
    with pytest.raises(
        SessionInputError,
        match=rf"rec\.nwb.*ElectricalSeries 'ElectricalSeries': 3 of {N_SAMPLES * N_CHANNELS} samples exceed .* "
        r"channel 4",
    ):
        nwb.open_recording(file.parent)


def test_partial_scan_leaves_headroom_and_every_sample_is_checked_before_the_first_read(tmp_path, monkeypatch):
    """Long float series are scanned in part when opened (discovery stays quick): x2 headroom; then every sample is
    range-checked before the first read returns, so a sample the scan missed is refused before anything is written."""
    volts = _noise(seed=5).astype(np.float32) * np.float32(0.195e-6)  # full scale ±6.39 mV in every block
    positions = _linear_positions()
    columns = {"rel_x": positions[:, 0], "rel_y": positions[:, 1]}
    monkeypatch.setattr(nwb, "BLOCK_BYTES", 1)  # blocks of one chunk row: 5000 samples, three blocks
    monkeypatch.setattr(nwb, "SCAN_BYTES", 1)  # the scan at open reads one of them
    clean = _write_pynwb(tmp_path / "clean" / "rec.nwb", [_series("ElectricalSeries", volts)], columns)
    source = nwb.open_recording(clean.parent)
    assert source.uv_per_bit == pytest.approx(0.39, rel=1e-3) and "x2 headroom" in source.scaling_note
    assert "range-checked before the first read" in source.scaling_note
    uv = source.read_chunk(0, N_SAMPLES).astype(np.float64) * source.uv_per_bit
    assert np.abs(uv - volts.astype(np.float64) * 1e6).max() <= source.uv_per_bit * 0.5 + 1e-3

    volts[12000, 9] = 0.020  # 20 mV in the last block, which the scan at open does not read
    glitch = _write_pynwb(tmp_path / "glitch" / "rec.nwb", [_series("ElectricalSeries", volts)], columns)
    source = nwb.open_recording(glitch.parent)
    assert source.uv_per_bit == pytest.approx(0.39, rel=1e-3)
    for window in ((0, 10), (10000, 15000)):  # the first read, far from the sample, and any later one
        with pytest.raises(
            SessionInputError,
            match=r"glitch/rec\.nwb: ElectricalSeries 'ElectricalSeries': sample 12000 \(0\.400 s\) on channel 9 is "
            r"\+20 mV, beyond ±12\.7\d+ mV.*refused before anything is written.*Fix: re-export the traces as int16",
        ):
            source.read_chunk(*window)


def test_zarr_backed_nwb(tmp_path):
    require_module("hdmf_zarr")
    positions = _linear_positions()
    file = _write_pynwb(
        tmp_path / "s" / "rec.nwb.zarr",
        [_series("ElectricalSeries", _noise(), conversion=0.195e-6)],
        {"rel_x": positions[:, 0], "rel_y": positions[:, 1]},
        zarr=True,
    )
    assert nwb.find_files(file.parent) == [file] and formats.detect_format(file.parent) is nwb
    source = nwb.open_recording(file.parent)
    np.testing.assert_array_equal(source.read_chunk(0, N_SAMPLES), _noise())
    np.testing.assert_allclose(source.probe.contact_positions, positions)
    try:
        recording = _spikeinterface(file, "ElectricalSeries")
    except Exception as exc:  # noqa: BLE001 - SpikeInterface's Zarr support depends on its version
        pytest.skip(f"SpikeInterface cannot read the Zarr NWB: {exc}")
    np.testing.assert_allclose(
        source.read_chunk(0, N_SAMPLES) * source.uv_per_bit,
        recording.get_traces(return_in_uV=True),
        atol=source.uv_per_bit,
    )


def test_zarr_without_hdmf_zarr_is_refused_by_name(tmp_path, monkeypatch):
    folder = tmp_path / "s" / "rec.nwb.zarr"
    folder.mkdir(parents=True)
    (folder / ".zgroup").write_text('{"zarr_format": 2}')
    monkeypatch.setitem(sys.modules, "hdmf_zarr.nwb", None)
    with pytest.raises(
        SessionInputError, match=r"rec\.nwb\.zarr: Zarr-backed NWB is not supported.*Fix: convert it to HDF5 NWB"
    ):
        formats.list_probes(folder.parent)


# --------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("starting_time/rate", 0.0, r"rate 0\.0"),
        ("starting_time/rate", np.inf, r"rate inf"),
        ("data/conversion", 0.0, r"conversion = 0"),
        ("data/conversion", np.nan, r"conversion = nan"),
    ],
)
def test_bad_values_are_refused_naming_file_series_and_key(tmp_path, key, value, message):
    file = _write_pynwb(
        tmp_path / "s" / "rec.nwb",
        [_series("ElectricalSeries", _noise(), conversion=0.195e-6)],
        {"rel_x": _linear_positions()[:, 0], "rel_y": _linear_positions()[:, 1]},
    )
    dataset, attribute = key.split("/")
    with h5py.File(file, "r+") as handle:
        handle[f"acquisition/ElectricalSeries/{dataset}"].attrs[attribute] = value
    with pytest.raises(SessionInputError, match=rf"rec\.nwb.*ElectricalSeries 'ElectricalSeries'.*{message}"):
        nwb.open_recording(file.parent)


def test_bad_channel_conversion_is_refused(tmp_path):
    gains = np.ones(N_CHANNELS)
    gains[3] = np.nan
    file = _write_pynwb(
        tmp_path / "s" / "rec.nwb",
        [_series("ElectricalSeries", _noise(), conversion=0.195e-6, channel_conversion=gains)],
        {"rel_x": _linear_positions()[:, 0], "rel_y": _linear_positions()[:, 1]},
    )
    with pytest.raises(SessionInputError, match=r"rec\.nwb.*'ElectricalSeries' has channel_conversion\[3\] = nan"):
        nwb.open_recording(file.parent)


# ------------------------------------------------------------------------------------------ reading


def test_reader_opens_the_file_once_and_caches_a_row_of_chunks(tmp_path, monkeypatch):
    data = _noise(n_channels=150, n_samples=12000)
    positions = np.column_stack([np.zeros(150), np.arange(150) * 20.0])
    file = _write_pynwb(
        tmp_path / "s" / "rec.nwb",
        [_series("ElectricalSeries", data, conversion=0.195e-6)],
        {"rel_x": positions[:, 0], "rel_y": positions[:, 1]},
    )
    source = nwb.open_recording(file.parent)
    opened = []
    real = h5py.File

    def counting(*args, **kwargs):
        opened.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(h5py, "File", counting)
    step = 1365  # the converter's block for 384 channels: never aligned with the 5000-sample chunks
    for start in range(0, len(data), step):
        np.testing.assert_array_equal(
            source.read_chunk(start, min(start + step, len(data))), data[start : start + step]
        )
    assert len(opened) == 1
    chunk_bytes = 5000 * 64 * 2
    assert opened[0]["rdcc_nbytes"] >= 3 * chunk_bytes  # 150 channels = 3 chunks a row

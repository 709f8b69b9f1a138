"""NWB channels with different gains (``channel_conversion``): one µV/bit for the binary, the finest channel gain, or
the smallest step at which every channel's largest sample fits int16, chosen when the series is opened; every
channel rescaled so that a sample loses at most half a bit of its own channel's gain (half a step when the step must
be coarser). Checked sample by sample against pynwb's ``data x conversion x channel_conversion`` (float64) and
SpikeInterface's scaled traces, in the reader and in the binary the converter writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ks_platform.core.conversion import write_recording_binary
from ks_platform.core.formats import nwb
from ks_platform_tests.nwb_support import (
    N_CHANNELS,
    _linear_positions,
    _noise,
    _series,
    _spikeinterface,
    _write_pynwb,
)

CONVERSION = 0.195e-6
#: Per-channel gains 1x..12x of 0.195 µV: the coarsest step is 2.34 µV (1.17 µV lost per sample at that step).
GAINS = np.linspace(1.0, 12.0, N_CHANNELS)


def _file(folder: Path, data: np.ndarray) -> Path:
    positions = _linear_positions()
    return _write_pynwb(
        folder / "rec.nwb",
        [_series("ElectricalSeries", data, conversion=CONVERSION, channel_conversion=GAINS)],
        {"rel_x": positions[:, 0], "rel_y": positions[:, 1]},
    )


def _pynwb_uv(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """pynwb's reading of the series in µV (float64) and each channel's gain in µV per stored unit."""
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(file), mode="r") as io:
        series = io.read().acquisition["ElectricalSeries"]
        gains = np.asarray(series.channel_conversion[:], dtype=np.float64) * series.conversion * 1e6
        return np.asarray(series.data[:], dtype=np.float64) * gains, gains


def _binary(source, tmp_path: Path) -> np.ndarray:
    binary = write_recording_binary(source, tmp_path / "binary")
    assert binary.uv_per_bit == source.uv_per_bit
    return np.fromfile(binary.path, dtype=np.int16).reshape(-1, binary.n_chan_bin)


def _check_against_references(file: Path, source, bits: np.ndarray, bound_uv: np.ndarray) -> None:
    """Every sample within ``bound_uv`` (per channel) of pynwb's µV, and of SpikeInterface's float32 µV."""
    truth, _ = _pynwb_uv(file)
    ours = bits.astype(np.float64) * source.uv_per_bit
    assert ours.shape == truth.shape
    error = np.abs(ours - truth)
    assert (error <= bound_uv * (1 + 1e-9)).all(), f"largest loss {error.max():.4f} µV"
    theirs = _spikeinterface(file, "ElectricalSeries").get_traces(return_in_uV=True).astype(np.float64)
    float32_rounding = np.abs(theirs) * 2.0**-23  # SpikeInterface returns float32 µV
    assert (np.abs(ours - theirs) <= bound_uv * (1 + 1e-9) + float32_rounding).all()


def test_the_finest_gain_keeps_half_a_bit_of_each_channels_own_gain(tmp_path):
    data = np.clip(_noise(scale=400.0), -2700, 2700).astype(np.int16)  # x12 still fits int16 at the finest gain
    file = _file(tmp_path / "s", data)
    source = nwb.open_recording(file.parent)
    _, gains = _pynwb_uv(file)
    assert source.uv_per_bit == pytest.approx(gains.min(), rel=1e-12) == pytest.approx(0.195)
    assert "the finest channel gain (gains 0.195..2.34 µV/bit, each channel rescaled)" in source.scaling_note
    bits = _binary(source, tmp_path)
    np.testing.assert_array_equal(bits, source.read_chunk(0, source.n_samples))
    _check_against_references(file, source, bits, gains / 2)  # half a bit of each channel's own gain
    # at the coarsest gain (2.34 µV/bit, the old choice) channel 0 lost up to 1.17 µV per sample, 12x its half bit
    coarse = np.rint(data * GAINS / 12.0) * 12.0 * 0.195
    assert np.abs(coarse - data * GAINS * 0.195)[:, 0].max() > 1.0


def test_a_channel_that_would_overflow_at_the_finest_gain_sets_the_smallest_step_that_fits(tmp_path):
    data = np.clip(_noise(scale=400.0), -2700, 2700).astype(np.int16)
    data[321, 31] = 9000  # the 12x channel: 9000 x 2.34 µV = 21.06 mV, beyond int16 at 0.195 µV/bit (6.39 mV)
    file = _file(tmp_path / "s", data)
    source = nwb.open_recording(file.parent)  # the step is settled here, before any conversion
    largest = 9000 * GAINS[31] * 0.195
    assert source.uv_per_bit == pytest.approx(0.6428) and largest / 32767 <= source.uv_per_bit < largest / 32767 * 1.001
    assert "coarser than the finest channel gain 0.195 so that channel 31's largest |sample| 21060 µV fits" in (
        source.scaling_note
    )
    bits = _binary(source, tmp_path)
    assert np.abs(bits).max() < 32767  # nothing clipped
    _check_against_references(file, source, bits, np.full(N_CHANNELS, source.uv_per_bit / 2))

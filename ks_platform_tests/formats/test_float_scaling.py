"""Float → int16 scaling (raw float binaries, NWB float series): float32 math in place, NaN/inf refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ks_platform.core.conversion import write_recording_binary
from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import raw_binary
from ks_platform.core.formats.base import scale_to_int16

SCALE = 1.0 / raw_binary.FLOAT_UV_PER_BIT


def _reference(values: np.ndarray, scale, shift: float = 0.0) -> np.ndarray:
    return np.clip(np.rint(values.astype(np.float64) * scale + shift), -32767, 32767).astype(np.int16)


def test_within_one_step_of_float64_and_exact_away_from_half_steps():
    values = (np.random.default_rng(1).standard_normal((20000, 16)) * 400).astype(np.float32)
    out = np.empty(values.shape, np.int16)
    assert scale_to_int16(values.copy(), np.float32(SCALE), out) is None
    diff = out.astype(int) - _reference(values, SCALE)
    assert np.abs(diff).max() <= 1 and np.count_nonzero(diff) < values.size * 1e-4
    products = values.astype(np.float64) * SCALE
    far_from_half = np.abs(products - np.floor(products) - 0.5) > 1e-3
    assert np.array_equal(out[far_from_half], _reference(values, SCALE)[far_from_half])


def test_clips_to_symmetric_full_scale_and_keeps_overflowing_finite_values():
    values = np.array([[1e4, -1e4, 3e38, -3e38, 6000.0, -6000.0]], np.float32)  # 3e38 * 5.13 overflows float32
    out = np.empty(values.shape, np.int16)
    assert scale_to_int16(values.copy(), np.float32(SCALE), out, original=lambda: values) is None
    assert out.tolist() == [[32767, -32767, 32767, -32767, 30769, -30769]]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_report_the_first_bad_row(bad):
    values = np.zeros((100, 4), np.float32)
    values[37, 2] = bad
    values[80, 0] = bad
    out = np.empty(values.shape, np.int16)
    assert scale_to_int16(values.copy(), np.float32(SCALE), out, original=lambda: values) == 37


def test_per_channel_scale_and_shift():
    values = np.tile(np.arange(-3, 4, dtype=np.float32)[:, None], (1, 3))
    scale = np.array([1.0, 2.0, 10.0], np.float32)
    out = np.empty(values.shape, np.int16)
    assert scale_to_int16(values.copy(), scale, out, shift=0.25) is None
    assert np.array_equal(out, _reference(values, scale, 0.25))


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("channels", [None, (1, 2, 3, 4, 5, 6, 7), (7, 0, 3)])
def test_raw_float_binary_converts_chunk_by_chunk(tmp_path, dtype, channels):
    n_samples, n_channels = 70000, 8
    values = (np.random.default_rng(2).standard_normal((n_samples, n_channels)) * 200).astype(dtype)
    values[5, 7] = 9000.0  # clipped (channel 7 is sorted in every case)
    (tmp_path / "rec.bin").write_bytes(values.tobytes())
    sidecar = {
        "sampling_frequency": 30000.0,
        "n_channels": n_channels,
        "dtype": dtype,
        "units": "uV",
        "recording_date": "2026-03-02",
    }
    if channels:
        sidecar["sorting_channels"] = list(channels)
    (tmp_path / "rec.json").write_text(json.dumps(sidecar))
    source = raw_binary.open_recording(tmp_path)
    binary = write_recording_binary(source, tmp_path / "store" / "binary")
    written = np.fromfile(binary.path, np.int16).reshape(n_samples, -1)
    picked = values[:, list(channels or range(n_channels))]
    expected = _reference(picked, SCALE)
    assert np.abs(written.astype(int) - expected).max() <= 1
    products = picked.astype(np.float64) * SCALE
    far_from_half = np.abs(products - np.floor(products) - 0.5) > 1e-3
    assert np.array_equal(written[far_from_half], expected[far_from_half])
    assert written[5, list(channels or range(n_channels)).index(7)] == 32767


def test_raw_float_binary_with_nan_names_the_file_and_sample(tmp_path):
    values = np.zeros((50000, 4), np.float32)
    values[43210, 3] = np.nan
    (tmp_path / "rec.bin").write_bytes(values.tobytes())
    sidecar = {"sampling_frequency": 30000.0, "n_channels": 4, "dtype": "float32", "recording_date": "2026-03-02"}
    (tmp_path / "rec.json").write_text(json.dumps(sidecar))
    source = raw_binary.open_recording(tmp_path)
    with pytest.raises(
        SessionInputError, match=r"rec\.bin: NaN or inf sample at sample 43210\. Fix: repair or re-export"
    ):
        write_recording_binary(source, tmp_path / "store" / "binary")
    assert not (tmp_path / "store" / "binary").exists()

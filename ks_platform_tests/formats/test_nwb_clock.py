"""An ElectricalSeries on the session clock: ``starting_time`` (or the first timestamp) is the timeline's first sample
(``round(starting_time x rate)``), so every binary row maps back to the time pynwb gives that sample (within half a
sample); timestamps that are not one regular grid (a gap, jitter) are refused with the fix, at open or, for the part
a bounded check at open did not read, before the first sample is returned."""

from __future__ import annotations

import numpy as np
import pytest

from ks_platform.core import formats
from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import nwb
from ks_platform.core.timeline import to_acquisition_seconds
from ks_platform_tests.nwb_support import (
    FS,
    N_SAMPLES,
    _linear_positions,
    _noise,
    _series,
    _spikeinterface,
    _write_pynwb,
)


def _file(tmp_path, **timing):
    positions = _linear_positions()
    return _write_pynwb(
        tmp_path / "s" / "rec.nwb",
        [_series("ElectricalSeries", _noise(), conversion=0.195e-6, **timing)],
        {"rel_x": positions[:, 0], "rel_y": positions[:, 1]},
    )


def _pynwb_times(file) -> np.ndarray:
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(file), mode="r") as io:
        return np.asarray(io.read().acquisition["ElectricalSeries"].get_timestamps(), dtype=np.float64)


def _rows_on_the_session_clock(file, source) -> None:
    """Every binary row, mapped through the timeline, lies within half a sample of pynwb's time of that sample."""
    times = to_acquisition_seconds(np.arange(source.n_samples), source.timeline, source.sampling_frequency)
    assert np.abs(times - _pynwb_times(file)).max() <= 0.5 / source.sampling_frequency
    np.testing.assert_array_equal(source.read_chunk(0, source.n_samples), _noise())


def test_starting_time_is_the_first_sample_on_the_session_clock(tmp_path):
    file = _file(tmp_path, starting_time=12.34567)
    source = formats.open_recording(file.parent)
    [segment] = source.summary()["timeline"]
    assert segment["first_sample"] == round(12.34567 * FS) == 370370 and segment["file"] == "rec.nwb"
    assert "starting_time 12.3457 s = sample 370370" in source.scaling_note
    _rows_on_the_session_clock(file, source)


def test_regular_timestamps_give_the_rate_and_the_first_sample(tmp_path):
    timestamps = 5.0 + np.arange(N_SAMPLES) / FS
    file = _file(tmp_path, timestamps=timestamps)
    source = formats.open_recording(file.parent)
    recording = _spikeinterface(file, "ElectricalSeries")
    assert source.sampling_frequency == pytest.approx(recording.get_sampling_frequency(), rel=1e-9)
    assert source.timeline[0].first_sample == round(5.0 * FS) == 150000
    np.testing.assert_allclose(recording.get_times(), timestamps, rtol=1e-12)
    _rows_on_the_session_clock(file, source)


def test_timestamps_with_sub_sample_jitter_are_placed_within_half_a_sample(tmp_path):
    jitter = np.random.default_rng(1).uniform(-0.1, 0.1, N_SAMPLES) / FS  # a clock's jitter, well under a sample
    file = _file(tmp_path, timestamps=5.0 + np.arange(N_SAMPLES) / FS + jitter)
    source = formats.open_recording(file.parent)
    assert source.sampling_frequency == pytest.approx(FS, rel=0.2 / N_SAMPLES)
    _rows_on_the_session_clock(file, source)


@pytest.mark.parametrize(
    "bend, message",
    [
        (
            lambda t: np.where(np.arange(N_SAMPLES) >= 9000, t + 1.0, t),
            r"sample 9000 \(1\.300000 s\) comes 30001 sample periods after sample 8999 .*a gap of 1 s",
        ),
        (
            lambda t: t + np.tile([0.0, 0.7 / FS], N_SAMPLES // 2 + 1)[:N_SAMPLES],
            r"sample 2 .* a step shorter than half a sample period \(irregular sampling",
        ),
    ],
    ids=["a one-second gap", "jitter of 0.7 samples"],
)
def test_irregular_timestamps_are_refused_with_the_fix(tmp_path, bend, message):
    file = _file(tmp_path, timestamps=bend(np.arange(N_SAMPLES) / FS))
    with pytest.raises(
        SessionInputError,
        match=rf"rec\.nwb: ElectricalSeries 'ElectricalSeries' timestamps are not regular: {message}.*"
        r"Fix: store each part recorded without a gap as its own ElectricalSeries",
    ):
        formats.open_recording(file.parent)


def test_timestamps_the_bounded_check_did_not_read_are_checked_before_the_first_sample(tmp_path, monkeypatch):
    timestamps = np.arange(N_SAMPLES) / FS
    timestamps[11500] += 0.8 / FS  # in a block the check at open does not read
    file = _file(tmp_path, timestamps=timestamps)
    monkeypatch.setattr(nwb, "TIMESTAMP_BLOCK", 1000)  # 15 blocks of timestamps...
    monkeypatch.setattr(nwb, "SCAN_BYTES", 3 * 1000 * 8)  # ...of which the check at open reads 3 (0, 7 and 14)
    source = formats.open_recording(file.parent)
    assert "timestamps checked in part here, all before the first read" in source.scaling_note
    for window in ((0, 10), (100, 200)):
        with pytest.raises(SessionInputError, match=r"rec\.nwb: .*timestamps are not regular: sample 11500 "):
            source.read_chunk(*window)

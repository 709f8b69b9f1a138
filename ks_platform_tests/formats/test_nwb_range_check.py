"""A large float NWB with an artifact the bounded scan at open did not see: the range pass over every sample runs
before the first sample is returned, so the conversion is refused before it writes anything (it used to fail after
part of the binary was written), naming the file, the channel, the value and the fix. "Large" is simulated by
shrinking the scan budget (``SCAN_BYTES``) and the block size, as a series of many GB would be scanned in part."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ks_platform.cli import main
from ks_platform.core import formats
from ks_platform.core.conversion import write_recording_binary
from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import nwb
from ks_platform_tests.conftest import leftovers
from ks_platform_tests.nwb_support import N_SAMPLES, _linear_positions, _noise, _series, _write_pynwb


@pytest.fixture
def partly_scanned(monkeypatch) -> None:
    monkeypatch.setattr(nwb, "BLOCK_BYTES", 1)  # blocks of one chunk row: 5000 samples, three blocks
    monkeypatch.setattr(nwb, "SCAN_BYTES", 1)  # the scan at open reads the first of them


def _float_file(folder: Path, sample: int, channel: int, volts: float) -> Path:
    data = _noise(seed=5).astype(np.float32) * np.float32(0.195e-6)  # ±6.39 mV in every block
    data[sample, channel] = volts
    positions = _linear_positions()
    return _write_pynwb(
        folder / "rec.nwb", [_series("ElectricalSeries", data)], {"rel_x": positions[:, 0], "rel_y": positions[:, 1]}
    )


def test_an_artifact_the_scan_missed_is_refused_before_anything_is_written(tmp_path, partly_scanned):
    file = _float_file(tmp_path / "s", 12000, 9, 0.020)  # 20 mV at 80 % of the file, beyond ±12.8 mV at 0.39 µV/bit
    source = formats.open_recording(file.parent)
    assert source.uv_per_bit == pytest.approx(0.39, rel=1e-3)
    progress: list[float] = []
    with pytest.raises(
        SessionInputError,
        match=r"s/rec\.nwb: ElectricalSeries 'ElectricalSeries': sample 12000 \(0\.400 s\) on channel 9 is \+20 mV, "
        r"beyond ±12\.7\d+ mV, the int16 range at the 0\.39 µV/bit chosen from a scan of part of it: refused before "
        r"anything is written, never clipped\. Fix: re-export the traces as int16 with their conversion",
    ):
        write_recording_binary(source, tmp_path / "binary", progress=lambda done, _: progress.append(done))
    assert progress == []  # not one chunk was converted
    assert not (tmp_path / "binary").exists() and leftovers(tmp_path) == []


def test_ks_platform_convert_refuses_in_one_line_and_leaves_nothing(tmp_path, partly_scanned, capsys):
    file = _float_file(tmp_path / "s", 14000, 3, -1.0)  # -1 V: beyond int16 at any usable step
    assert main(["convert", str(file.parent), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{file}: ElectricalSeries 'ElectricalSeries': sample 14000 (0.467 s) on channel 3 is -1000 mV" in err
    assert "Fix: check conversion/channel_conversion/unit (volts expected); if the value is an artifact" in err
    assert not (tmp_path / "out" / "binary").exists() and not (tmp_path / "out" / "raw_recording.json").exists()


def test_a_long_series_that_fits_converts_within_half_a_step(tmp_path, partly_scanned):
    file = _float_file(tmp_path / "s", 12000, 9, 0.012)  # 12 mV: beyond the scanned ±6.39 mV, inside the headroom
    source = formats.open_recording(file.parent)
    binary = write_recording_binary(source, tmp_path / "binary")
    bits = np.fromfile(binary.path, dtype=np.int16).reshape(N_SAMPLES, -1)
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(file), mode="r") as io:
        truth = np.asarray(io.read().acquisition["ElectricalSeries"].data[:], dtype=np.float64) * 1e6
    assert np.abs(bits * binary.uv_per_bit - truth).max() <= binary.uv_per_bit / 2 + 1e-3  # float32 source rounding

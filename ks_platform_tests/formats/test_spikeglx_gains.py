"""Per-channel AP gains (NP1.0 imro tables give each channel its own): SpikeInterface's rule, one µV/bit per binary.

Real NP1.0 meta (``Noise_g0_t0``, imro type 0, every channel at AP gain 500) with the imro entries' apGain edited
as SpikeGLX writes an imro file that mixes gains (no public meta mixes them). SpikeInterface scales each channel
with its own gain; the binary is int16 at the finest channel's µV/bit with the coarser channels rescaled to it, so
``binary * uv_per_bit`` equals SpikeInterface's ``get_traces(return_in_uV=True)`` within half a step of that gain.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from ks_platform.core import conversion, formats
from ks_platform.core.formats.base import RescaledReader
from ks_platform_tests.formats import real_glx as rg

N = 400
RANGE, MAX_INT = 0.6, 512  # the template's imAiRangeMax; NP1.0's 10-bit ADC (the meta predates imMaxInt)


def _mixed_imro(gain_of: dict[int, int]) -> str:
    """The template's meta with channel c's AP gain set to ``gain_of[c]`` (others stay 500)."""
    text = rg.template(rg.NP1)

    def entry(match: re.Match) -> str:
        channel, bank, ref, ap, lf, hp = match.group(1).split()
        return f"({channel} {bank} {ref} {gain_of.get(int(channel), int(ap))} {lf} {hp})"

    imro = rg.values(text)["~imroTbl"]
    return rg.set_key(text, "imroTbl", re.sub(r"\((\d+ \d+ \d+ \d+ \d+ \d+)\)", entry, imro))


def _write(
    folder: Path, gain_of: dict[int, int], triggers: int = 1, data: list[np.ndarray] | None = None
) -> list[Path]:
    text = _mixed_imro(gain_of)
    start = int(rg.values(text)["firstSample"])
    files = []
    for t in range(triggers):
        block = rg.noise(N, 385, t) if data is None else data[t]
        path = folder / "run_g0" / "run_g0_imec0" / f"run_g0_t{t}.imec0.ap.bin"
        files.append(rg.write_ap(path, text, block, first_sample=start + t * N))
    return files


#: (channel → gain): 500 and 1000 on alternate channels (x2), and 500/1000/1500 (x3, x1.5: half steps round).
MIXES = {
    "500-1000": {c: 1000 for c in range(1, 384, 2)},
    "500-1000-1500": {**{c: 1000 for c in range(0, 384, 3)}, **{c: 1500 for c in range(1, 384, 3)}},
}


@pytest.mark.parametrize("triggers", [1, 2], ids=["one-file", "two-triggers"])
@pytest.mark.parametrize("mix", list(MIXES))
def test_mixed_gains_are_rescaled_to_the_finest_and_equal_spikeinterface_in_uv(tmp_path, mix, triggers):
    gain_of = MIXES[mix]
    files = _write(tmp_path / "run", gain_of, triggers)
    source = formats.scan_session(tmp_path / "run").open()
    gains = np.array([gain_of.get(c, 500) for c in range(384)], dtype=float)
    finest = RANGE / MAX_INT / gains.max() * 1e6
    assert source.uv_per_bit == pytest.approx(finest)
    assert source.zero_copy_path is None and isinstance(source.read_chunk, RescaledReader)
    assert "zero-copy is off" in source.scaling_note and "gain 500 on" in source.scaling_note
    assert source.details["ap_gains"] == {f"{g:g}": int((gains == g).sum()) for g in np.unique(gains)}
    ours = source.read_chunk(0, source.n_samples)
    reference = rg.spikeinterface_segments(tmp_path / "run")
    assert np.allclose(reference.get_channel_gains(), RANGE / MAX_INT / gains * 1e6)  # its gain per channel
    for k, segment in enumerate(source.timeline):
        theirs = reference.get_traces(segment_index=k, return_in_uV=True).astype(np.float64)
        mine = ours[segment.binary_start : segment.binary_start + segment.n_samples] * source.uv_per_bit
        error = np.abs(mine - theirs)
        assert error.max() <= 0.5 * finest * (1 + 1e-6) + 1e-4  # half a step of the finest gain (SI: float32)
        exact = np.flatnonzero((gains.max() / gains) % 1 == 0)  # integer factors: exact
        assert error[:, exact].max() <= 1e-3
        raw = rg.frames(files[k], 385)[:, :384]
        fine = gains == gains.max()
        assert np.array_equal(ours[segment.binary_start : segment.binary_start + N][:, fine], raw[:, fine])
    if mix == "500-1000-1500":  # a x1.5 channel's odd values land on half steps: rint, half to even
        assert ours[:N, 0].tolist() == np.rint(rg.frames(files[0], 385)[:, 0] * 1.5).astype(int).tolist()
    binary = conversion.write_recording_binary(source, tmp_path / "binary")  # zero-copy asked for, not possible
    assert not binary.zero_copy and binary.uv_per_bit == source.uv_per_bit
    assert np.array_equal(rg.frames(binary.path, 384), ours)
    assert source.read_chunk.clipped == 0


def test_a_rescaled_sample_beyond_int16_saturates_and_is_counted(tmp_path):
    data = rg.noise(N, 385, 0)
    data[10, 0], data[11, 0], data[12, 1], data[13, 0] = 20000, -20000, 20000, 16383  # channel 0 at 500: x2
    _write(tmp_path / "run", {c: 1000 for c in range(1, 384)}, data=[data])
    source = formats.scan_session(tmp_path / "run").open()
    block = source.read_chunk(0, N)
    assert block[10:14, 0].tolist() == [32767, -32767, 2 * int(data[12, 0]), 32766]  # 16383 x 2 still fits
    assert block[12, 1] == 20000  # channel 1 is at the finest gain: as stored
    assert source.read_chunk.clipped == 2 and source.read_chunk.first_clip == (10, 0)
    source.read_chunk(5, 11)  # row 10 again
    assert source.read_chunk.clipped == 3  # counted on every read
    from ks_platform.core.conversion import load_recording_binary, write_recording_binary

    write_recording_binary(source, tmp_path / "binary")  # the conversion records what saturated in it
    assert load_recording_binary(tmp_path / "binary").clipped_samples == 2


def test_one_gain_keeps_the_plain_zero_copy_reader(tmp_path):
    files = _write(tmp_path / "run", {})
    source = formats.scan_session(tmp_path / "run").open()
    assert source.zero_copy_path == files[0] and not isinstance(source.read_chunk, RescaledReader)
    assert "zero-copy" not in source.scaling_note and source.details["ap_gains"] == {"500": 384}
    assert source.uv_per_bit == pytest.approx(RANGE / MAX_INT / 500 * 1e6)

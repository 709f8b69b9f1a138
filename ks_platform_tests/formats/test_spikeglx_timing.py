"""SpikeGLX triggers on the acquisition clock, against CatGT's layout and SpikeInterface, on real NP1.0 headers.

The run: ``allan-longcol``'s meta (NP1.0, trigMode=Timed, imSampRate 29999.941586) for three triggers of 200
samples, nested as SpikeGLX writes them (``<run>_g0/<run>_g0_imec0/<run>_g0_tN.imec0.ap.bin``); only fileName,
firstSample, fileSizeBytes and fileTimeSecs differ between the three metas. t1 starts 1 s (30000 samples) after t0
ends; t2 starts one sample before t1 ends. CatGT lays that out as t0, 30000 zeros, t1, then t2 without its first
sample: the 600 samples of the files give 599 (+ the 30000 zeros).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ks_platform.core import formats
from ks_platform.core.conversion import write_recording_binary
from ks_platform.core.errors import SessionInputError
from ks_platform.core.timeline import to_acquisition_seconds
from ks_platform_tests.formats import real_glx as rg

TEMPLATE = "allan-longcol_g0_t0.imec0.ap.meta"
RUN = "3-1-2021"  # the run the template's fileName names
N, GAP = 200, 30000
START = int(rg.values(rg.template(TEMPLATE))["firstSample"])
FS = float(rg.values(rg.template(TEMPLATE))["imSampRate"])
#: firstSample of t0, t1, t2: a 1 s gap after t0, a 1-sample overlap of t1 and t2.
FIRSTS = (START, START + N + GAP, START + 2 * N + GAP - 1)
REPO = Path(__file__).resolve().parents[2]


def _run(folder: Path, firsts: tuple[int, ...] = FIRSTS, gates: tuple[int, ...] | None = None) -> list[Path]:
    """One file per firstSample: triggers t0, t1… of gate 0 (or one gate each, trigger 0, with ``gates``)."""
    meta = rg.template(TEMPLATE)
    files = []
    for i, first in enumerate(firsts):
        gate, trigger = (gates[i], 0) if gates else (0, i)
        path = folder / f"{RUN}_g{gate}" / f"{RUN}_g{gate}_imec0" / f"{RUN}_g{gate}_t{trigger}.imec0.ap.bin"
        files.append(rg.write_ap(path, meta, rg.noise(N, 385, i), first_sample=first))
    return files


def catgt_layout(files: list[Path], firsts: tuple[int, ...]) -> np.ndarray:
    """What CatGT writes for the files (AP channels): each acquisition sample once, from the earlier file where two
    overlap, zeros where no file has it; row 0 is the first file's firstSample."""
    data = [rg.frames(path, 385)[:, :384] for path in files]
    end = max(first + len(d) for first, d in zip(firsts, data)) - firsts[0]
    out, taken = np.zeros((end, 384), np.int16), np.zeros(end, bool)
    for first, d in zip(firsts, data):
        rows = np.arange(len(d)) + first - firsts[0]
        new = ~taken[rows]
        out[rows[new]], taken[rows] = d[new], True
    return out


def test_a_gap_and_an_overlap_are_laid_out_as_catgt_does(tmp_path, monkeypatch):
    from ks_platform.core import conversion

    files = _run(tmp_path / "run")
    expected = catgt_layout(files, FIRSTS)
    source = formats.scan_session(tmp_path / "run").open()
    assert expected.shape == (N + GAP + 2 * N - 1, 384) and source.n_samples == len(expected) == 30599
    assert [(s.first_sample, s.binary_start, s.n_samples, s.file_offset, s.zeros_before) for s in source.timeline] == [
        (FIRSTS[0], 0, 200, 0, 0),
        (FIRSTS[1], 30200, 200, 0, 30000),
        (FIRSTS[2], 30400, 199, 1, 0),  # 600 samples of data → 599
    ]
    assert np.array_equal(source.read_chunk(0, len(expected)), expected)
    for start, stop in [(150, 250), (30150, 30250), (30390, 30410), (30398, 30599)]:  # across every boundary
        assert np.array_equal(source.read_chunk(start, stop), expected[start:stop])
    assert not source.read_chunk(200, 30200).any()  # the gap: zeros
    t1, t2 = rg.frames(files[1], 385), rg.frames(files[2], 385)
    assert np.array_equal(source.read_chunk(30399, 30401), np.stack([t1[-1, :384], t2[1, :384]]))  # overlap once
    assert not np.array_equal(t1[-1], t2[0])  # (the two files' copies of that sample differ: the choice shows)
    monkeypatch.setattr(conversion, "CHUNK_BYTES", 1)  # 512-frame chunks: many chunk edges in the gap and files
    binary = write_recording_binary(source, tmp_path / "binary")
    assert not binary.zero_copy and np.array_equal(rg.frames(binary.path, 384), expected)


def test_each_trigger_equals_its_spikeinterface_segment_and_start_time(tmp_path):
    files = _run(tmp_path / "run")
    source = formats.scan_session(tmp_path / "run").open()
    ours = source.read_chunk(0, source.n_samples)
    reference = rg.spikeinterface_segments(tmp_path / "run")  # triggers as segments, t_start = firstSample / fs
    assert reference.get_num_segments() == len(files) == len(source.timeline)
    assert sum(reference.get_num_samples(k) for k in range(3)) == 600
    for k, segment in enumerate(source.timeline):
        theirs = reference.get_traces(segment_index=k, return_in_uV=False)
        times = reference.get_times(segment_index=k)
        rows = np.arange(segment.binary_start, segment.binary_start + segment.n_samples)
        assert np.array_equal(ours[rows], theirs[segment.file_offset :])  # sample for sample, channel for channel
        assert times[0] == pytest.approx(segment.first_sample / FS, abs=1e-9)
        assert np.allclose(to_acquisition_seconds(rows, source.timeline, FS), times[segment.file_offset :], atol=1e-9)
    assert source.uv_per_bit == pytest.approx(reference.get_channel_gains()[0])


def _config(folder: Path, **values: object) -> None:
    (folder / "ks_session.json").write_text(json.dumps(values))


def test_a_gap_longer_than_max_gap_fill_s_is_refused_with_the_fix_and_converts_once_raised(tmp_path):
    files = _run(tmp_path / "run")
    _config(tmp_path / "run", max_gap_fill_s=0.5)
    with pytest.raises(SessionInputError, match="starts 1.000 s after g0_t0 ends") as caught:
        formats.scan_session(tmp_path / "run").open()
    assert caught.value.path == files[1] and "allowed up to 0.5 s" in caught.value.problem
    # triggers of one gate: splitting by gate would not separate them, so the fix is the fill alone
    assert caught.value.fix == 'allow the fill ("max_gap_fill_s": 2 in ks_session.json)'
    _config(tmp_path / "run", max_gap_fill_s=2)  # the fix, as given
    source = formats.scan_session(tmp_path / "run").open()
    binary = write_recording_binary(source, tmp_path / "binary")
    assert np.array_equal(rg.frames(binary.path, 384), catgt_layout(files, FIRSTS))


def test_the_default_limit_refuses_a_61_s_gap_between_gates_and_the_fix_splits_or_raises(tmp_path):
    firsts = (START, START + N + int(61 * FS))
    files = _run(tmp_path / "run", firsts, gates=(0, 1))
    with pytest.raises(SessionInputError, match="filling a gap with zeros is allowed up to 60 s") as caught:
        formats.scan_session(tmp_path / "run").open()
    assert caught.value.path == files[1]
    assert '"split_segments": true' in caught.value.fix  # two gates: splitting separates them
    allowed = int(re.search(r'"max_gap_fill_s": (\d+)', caught.value.fix).group(1))
    assert allowed == 61  # the gap is 60.99999 s at 29999.941586 Hz
    _config(tmp_path / "run", max_gap_fill_s=allowed)  # the fix, as given
    source = formats.scan_session(tmp_path / "run").open()
    assert source.n_samples == firsts[1] - firsts[0] + N  # opened without reading the 1.8 M zero rows
    assert np.array_equal(source.read_chunk(0, N), rg.frames(files[0], 385)[:, :384])
    assert not source.read_chunk(N, N + 4096).any()
    assert np.array_equal(
        source.read_chunk(source.n_samples - N - 5, source.n_samples)[5:], rg.frames(files[1], 385)[:, :384]
    )
    _config(tmp_path / "run", probes={"imec0": {"split_segments": True}})
    scan = formats.scan_session(tmp_path / "run")
    assert sorted(scan.listing.probes) == ["imec0-g0", "imec0-g1"]
    assert scan.open("imec0-g1").timeline[0].first_sample == firsts[1]


@pytest.mark.parametrize("gates", [None, (0, 1)], ids=["triggers", "gates"])
def test_a_file_that_restarts_the_clock_is_refused(tmp_path, gates):
    files = _run(tmp_path / "run", (START, 1000), gates=gates)  # the second file starts at sample 1000
    with pytest.raises(SessionInputError, match="the acquisition clock restarted") as caught:
        formats.scan_session(tmp_path / "run").open()
    assert caught.value.path == files[1] and f"before g0_t0 ({START})" in caught.value.problem
    if gates is None:  # two triggers of one gate: only separate folders separate them
        assert caught.value.fix == "put the files of each acquisition in their own session folder"
    else:
        assert '"split_segments": true' in caught.value.fix


def test_convert_prints_the_segment_table_with_first_samples(tmp_path):
    files = _run(tmp_path / "run")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-c", "import sys; from ks_platform.cli import main; sys.exit(main())"]  # ks-platform
    done = subprocess.run(
        [*cli, "convert", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("segment "))
    assert lines[header].split() == [
        "segment",
        "first_sample",
        "first_s",
        "binary_start",
        "n_samples",
        "skipped",
        "zeros_before",
        "file",
    ]
    rows = [line.split() for line in lines[header + 1 : header + 4]]
    assert rows == [
        [
            f"g0_t{k}",
            str(FIRSTS[k]),
            f"{FIRSTS[k] / FS:.6f}",
            start,
            n,
            skipped,
            zeros,
            str(path.relative_to(tmp_path / "run")),
        ]
        for k, (path, start, n, skipped, zeros) in enumerate(
            zip(files, ("0", "30200", "30400"), ("200", "200", "199"), ("0", "0", "1"), ("0", "30000", "0"))
        )
    ]
    assert "384 channels x 30599 samples" in done.stdout
    assert np.array_equal(rg.frames(tmp_path / "out" / "binary" / "recording.bin", 384), catgt_layout(files, FIRSTS))
    manifest = json.loads((tmp_path / "out" / "raw_recording.json").read_text())
    assert [s["first_sample"] for s in manifest["timeline"]] == list(FIRSTS)

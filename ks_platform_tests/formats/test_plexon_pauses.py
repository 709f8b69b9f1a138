"""Plexon ``.plx`` recording pauses: the continuous blocks are placed on the acquisition clock by their timestamps
(a pause is zero-filled up to ``max_gap_fill_s``, a longer one refused with the fix, or each part sorted on its own
with ``split_segments``), compared sample by sample with neo's PlexonRawIO: its samples (one segment, concatenated
across the pause) put where its block timestamps say. ``.pl2`` files are refused by name with what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ks_platform.cli import main
from ks_platform.core import formats
from ks_platform.core.discovery import discover
from ks_platform.core.errors import SessionInputError
from ks_platform.core.timeline import to_acquisition_samples
from ks_platform_tests.formats import synthetic as syn
from ks_platform_tests.writers import write_plexon_session

BLOCK = 4096
#: Whole blocks (neo 0.14's PlexonRawIO mis-indexes a shorter last block); the pause comes after block 5.
N_SAMPLES = 12 * BLOCK
PAUSE_AT, PAUSE = 5 * BLOCK, 75000  # 2.5 s
START = 12345  # the first sample's place on the acquisition clock
TICKS = 2  # ADFrequency 60 kHz for 30 kHz channels


def _write(folder: Path, pause: int = PAUSE) -> tuple[Path, np.ndarray]:
    traces = syn.traces(N_SAMPLES)
    write_plexon_session(
        folder,
        traces,
        syn.FS,
        syn.positions(),
        syn.DATE,
        syn.shank_ids(),
        pauses=[(PAUSE_AT, pause)],
        start_sample=START,
        ticks_per_sample=TICKS,
    )
    return folder, traces


@pytest.fixture(scope="module")
def paused(tmp_path_factory) -> tuple[Path, np.ndarray]:
    return _write(tmp_path_factory.mktemp("plx_pause") / "session")


def _neo_on_the_clock(file: Path) -> tuple[np.ndarray, int, np.ndarray]:
    """neo's WB samples placed at their blocks' timestamps: (rows from the first block on, first clock sample, the
    clock sample of each block's first row)."""
    from neo.rawio import PlexonRawIO

    raw = PlexonRawIO(filename=str(file), progress_bar=False)
    raw.parse_header()
    wb = list(raw.header["signal_streams"]["id"]).index("WB")
    n = raw.get_signal_size(0, 0, wb)
    samples = raw.get_analogsignal_chunk(0, 0, 0, n - 1, stream_index=wb)  # neo: a stop on a block end reads empty
    ticks = raw._global_ssampling_rate / raw.get_signal_sampling_rate(wb)
    channels = raw.header["signal_channels"]
    blocks = raw._data_blocks[5][int(channels[channels["stream_id"] == "WB"]["id"][0])]
    starts = (blocks["timestamp"] / ticks).astype(np.int64)
    sizes = (blocks["size"] // 2).astype(np.int64)
    placed = np.zeros((starts[-1] + sizes[-1] - starts[0], samples.shape[1]), dtype=np.int16)
    taken = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for first, size, offset in zip(starts, sizes, taken):
        rows = samples[offset : offset + size]
        placed[first - starts[0] : first - starts[0] + len(rows)] = rows
    return placed, int(starts[0]), starts


def test_a_pause_is_placed_on_the_clock_as_neos_block_timestamps_say(paused):
    folder, traces = paused
    source = formats.scan_session(folder).open()
    expected, first, block_starts = _neo_on_the_clock(folder / "session.plx")
    assert (source.n_samples, first) == (N_SAMPLES + PAUSE, START)
    windows = [(0, PAUSE_AT + 10), (PAUSE_AT - 3, PAUSE_AT + PAUSE + 3), (PAUSE_AT + PAUSE - 1, source.n_samples - 1)]
    for start, stop in [*windows, (0, source.n_samples - 1)]:
        np.testing.assert_array_equal(source.read_chunk(start, stop), expected[start:stop])  # neo, sample by sample
    np.testing.assert_array_equal(source.read_chunk(source.n_samples - 1, source.n_samples), traces[-1:])
    assert not source.read_chunk(PAUSE_AT, PAUSE_AT + PAUSE).any()  # the pause, zero-filled
    timeline = source.summary()["timeline"]
    assert [(s["label"], s["first_sample"], s["binary_start"], s["zeros_before"]) for s in timeline] == [
        ("part1", START, 0, 0),
        ("part2", START + PAUSE_AT + PAUSE, PAUSE_AT + PAUSE, PAUSE),
    ]
    # the binary row of each block's first sample maps back to the clock sample of neo's block timestamp
    rows = np.concatenate([np.arange(0, PAUSE_AT, BLOCK), np.arange(PAUSE_AT + PAUSE, source.n_samples, BLOCK)])
    np.testing.assert_array_equal(to_acquisition_samples(rows, source.timeline), block_starts)
    assert "1 recording pause(s): the parts are placed on the acquisition clock" in source.scaling_note


def test_a_pause_longer_than_the_fill_limit_is_refused_then_allowed_or_split(tmp_path, capsys):
    folder, traces = _write(tmp_path / "landing" / "long_pause", pause=int(61 * syn.FS))
    with pytest.raises(
        SessionInputError,
        match=r"session\.plx: part2 starts 61\.000 s after part1 ends; filling a gap with zeros is allowed up to 60 s"
        r"\. Fix: sort the parts separately \(\"split_segments\": true in ks_session\.json\), or allow the fill "
        r"\(\"max_gap_fill_s\": 62 in ks_session\.json\)",
    ):
        formats.scan_session(folder).open()
    assert main(["convert", str(folder), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "part2 starts 61.000 s after part1 ends" in err and "Traceback" not in err

    (folder / "ks_session.json").write_text(json.dumps({"max_gap_fill_s": 62}))
    filled = formats.scan_session(folder).open()
    assert filled.n_samples == N_SAMPLES + int(61 * syn.FS)
    np.testing.assert_array_equal(filled.read_chunk(filled.n_samples - 100, filled.n_samples), traces[-100:])

    (folder / "ks_session.json").write_text(json.dumps({"split_segments": True}))
    scan = formats.scan_session(folder)
    assert sorted(scan.listing.probes) == ["session-part1", "session-part2"]
    expected, _, _ = _neo_on_the_clock(folder / "session.plx")
    part1, part2 = scan.open("session-part1"), scan.open("session-part2")
    np.testing.assert_array_equal(part1.read_chunk(0, part1.n_samples), expected[:PAUSE_AT])
    np.testing.assert_array_equal(part2.read_chunk(0, part2.n_samples - 1), expected[-part2.n_samples : -1])
    assert (part1.timeline[0].first_sample, part2.timeline[0].first_sample) == (
        START,
        START + PAUSE_AT + int(61 * syn.FS),
    )
    found, rejected = discover({"rig1": folder.parent})
    assert rejected == [] and sorted(f.probe_name for f in found) == ["session-part1", "session-part2"]


def test_pl2_is_refused_by_name_with_what_to_do(tmp_path, paused, capsys):
    landing = tmp_path / "landing"
    (landing / "pl2_only").mkdir(parents=True)
    pl2 = landing / "pl2_only" / "rat3.pl2"
    pl2.write_bytes(b"\x00" * 4096)
    problem = (
        r"rat3\.pl2: a PL2 file \(Plexon's newer format\) cannot be read here: the only PL2 reader, neo's Plexon2RawIO"
    )
    fix = r"Fix: convert it to \.plx with Plexon's own software \(PlexUtil's PL2 to PLX conversion, or Offline Sorter\)"
    with pytest.raises(SessionInputError, match=rf"{problem}.*{fix}"):
        formats.scan_session(pl2.parent)
    assert main(["convert", str(pl2.parent), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and str(pl2) in err and "PlexUtil" in err

    both = Path(shutil.copytree(paused[0], landing / "plx_and_pl2"))
    (both / "session.pl2").write_bytes(b"\x00" * 4096)  # the same recording in both formats: the .plx is sorted
    found, rejected = discover({"rig1": landing})
    assert [(r.folder.name, "PL2" in r.reason and "PlexUtil" in r.reason) for r in rejected] == [("pl2_only", True)]
    [plx] = found
    assert plx.skipped_streams == (
        "session.pl2: a PL2 file, not readable offline (the same recording as session.plx, which is sorted)",
    )

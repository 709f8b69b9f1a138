"""Recordings of one Open Ephys experiment on the acquisition clock: gaps, overlaps, duplicates, split partitions.

Each recording is compared sample by sample with SpikeInterface's segment of it (``read_openephys``: one segment per
recording) and its start time (the segment's first time) with our first sample / rate.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from ks_platform.core import formats
from ks_platform.core.errors import SessionInputError
from ks_platform_tests.formats.openephys_support import N, _write

FOLDER = "Neuropix-PXI-100.ProbeA-AP"
FS = 30000.0
FIRST = 1000


def _two_recordings(session: Path, second_start: int) -> tuple[np.ndarray, np.ndarray]:
    """recording1 at sample FIRST, recording2 at ``second_start`` (N samples each, 8 ephys channels + sync)."""
    one = _write(session, recording=1, first_sample=FIRST)[FOLDER][:, :8]
    two = _write(session, recording=2, first_sample=second_start)[FOLDER][:, :8]
    return one, two


def _si_segments(session: Path) -> tuple[list[np.ndarray], list[float]]:
    import spikeinterface.extractors as se

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recording = se.read_openephys(session, stream_name=f"Record Node 101#{FOLDER}")
    segments = range(recording.get_num_segments())
    traces = [recording.get_traces(segment_index=i, return_in_uV=False) for i in segments]
    return traces, [float(recording.get_times(segment_index=i)[0]) for i in segments]


def _config(session: Path, payload: dict) -> None:
    (session / "ks_session.json").write_text(json.dumps(payload))


def test_gap_is_zero_filled_and_each_recording_equals_its_spikeinterface_segment(tmp_path):
    gap = 250
    one, two = _two_recordings(tmp_path, FIRST + N + gap)
    source = formats.scan_session(tmp_path).open("ProbeA")
    expected = np.concatenate([one, np.zeros((gap, 8), np.int16), two])
    assert source.n_samples == 2 * N + gap
    np.testing.assert_array_equal(source.read_chunk(0, source.n_samples), expected)
    assert [(s.first_sample, s.binary_start, s.file_offset, s.zeros_before) for s in source.timeline] == [
        (FIRST, 0, 0, 0),
        (FIRST + N + gap, N + gap, 0, gap),
    ]
    theirs, starts = _si_segments(tmp_path)
    for segment, traces, start in zip(source.timeline, theirs, starts, strict=True):
        ours = source.read_chunk(segment.binary_start, segment.binary_start + segment.n_samples)
        np.testing.assert_array_equal(ours, traces)
        assert segment.first_sample / FS == pytest.approx(start, abs=1e-12)


def test_overlap_is_skipped_once_and_the_rest_equals_spikeinterface(tmp_path):
    overlap = 100
    one, two = _two_recordings(tmp_path, FIRST + N - overlap)
    source = formats.scan_session(tmp_path).open("ProbeA")
    assert source.n_samples == 2 * N - overlap
    np.testing.assert_array_equal(source.read_chunk(0, source.n_samples), np.concatenate([one, two[overlap:]]))
    second = source.timeline[1]
    assert (second.first_sample, second.file_offset, second.n_samples, second.binary_start) == (
        FIRST + N - overlap,
        overlap,
        N - overlap,
        N,
    )
    theirs, starts = _si_segments(tmp_path)
    np.testing.assert_array_equal(source.read_chunk(0, N), theirs[0])
    np.testing.assert_array_equal(source.read_chunk(N, 2 * N - overlap), theirs[1][overlap:])
    assert [s.first_sample / FS for s in source.timeline] == pytest.approx(starts, abs=1e-12)


def test_duplicate_recording_is_refused(tmp_path):
    _two_recordings(tmp_path, FIRST)  # recording2 holds the same sample numbers as recording1
    with pytest.raises(SessionInputError, match="lies wholly inside .*recording1") as info:
        formats.scan_session(tmp_path).open("ProbeA")
    assert info.value.path.parts[-4:] == ("recording2", "continuous", FOLDER, "continuous.dat")
    assert "remove the duplicate" in info.value.fix


def test_gap_over_the_limit_is_refused_with_the_fix_then_allowed(tmp_path):
    gap_s = 61  # the default limit is 60 s
    one, two = _two_recordings(tmp_path, FIRST + N + gap_s * int(FS))
    with pytest.raises(SessionInputError, match="starts 61.000 s after .*recording1 ends") as info:
        formats.scan_session(tmp_path).open("ProbeA")
    assert '"max_gap_fill_s": 62' in info.value.fix and '"split_segments": true' in info.value.fix
    _config(tmp_path, {"max_gap_fill_s": 62})
    source = formats.scan_session(tmp_path).open("ProbeA")
    assert source.n_samples == 2 * N + gap_s * int(FS)
    np.testing.assert_array_equal(source.read_chunk(0, N + 5), np.concatenate([one, np.zeros((5, 8), np.int16)]))
    end = source.n_samples
    np.testing.assert_array_equal(source.read_chunk(end - N - 3, end), np.concatenate([np.zeros((3, 8)), two]))


def test_split_segments_gives_one_partition_per_recording(tmp_path):
    """``"split_segments": true``: ``ProbeA-r1``, ``ProbeA-r2``, each its own recording from its own first sample
    (so a gap over the limit needs no fill); the other probe stays whole (with the gap filled, as its config allows)."""
    one, two = _two_recordings(tmp_path, FIRST + N + 61 * int(FS))
    _config(tmp_path, {"probes": {"ProbeA": {"split_segments": True}, "ProbeB": {"max_gap_fill_s": 62}}})
    scan = formats.scan_session(tmp_path)
    assert sorted(scan.listing.probes) == ["ProbeA-r1", "ProbeA-r2", "ProbeB"]
    assert scan.listing.split_from == {"ProbeA-r1": "ProbeA", "ProbeA-r2": "ProbeA"}
    theirs, starts = _si_segments(tmp_path)
    for index, (name, data) in enumerate((("ProbeA-r1", one), ("ProbeA-r2", two))):
        part = scan.open(name)
        assert part.probe_name == name and part.n_samples == N and len(part.timeline) == 1
        assert part.zero_copy_path == scan.listing.probes[name][0]
        assert part.details["recordings"] == [f"Record Node 101/experiment1/recording{index + 1}"]
        np.testing.assert_array_equal(part.read_chunk(0, N), data)
        np.testing.assert_array_equal(part.read_chunk(0, N), theirs[index])
        assert part.timeline[0].first_sample / FS == pytest.approx(starts[index], abs=1e-12)
    assert len(scan.open("ProbeB").timeline) == 2 and scan.open("ProbeB").n_samples == 2 * N + 61 * int(FS)
    # a recording partition is also opened by name without the config (ks-platform sort --probe ProbeA-r2)
    (tmp_path / "ks_session.json").unlink()
    plain = formats.scan_session(tmp_path)
    assert plain.pick("ProbeA-r2") == "ProbeA-r2"
    np.testing.assert_array_equal(plain.open("ProbeA-r2").read_chunk(0, N), two)

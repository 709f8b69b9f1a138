"""The segment table: files placed on the acquisition clock as CatGT does (gaps zero-filled, overlaps skipped)."""

from pathlib import Path

import numpy as np
import pytest

from ks_platform.core.errors import SessionInputError
from ks_platform.core.timeline import FilePlacement, lay_out, to_acquisition_samples, total_samples

FS = 30_000.0


def _files(*spans: tuple[int | None, int]) -> list[FilePlacement]:
    return [FilePlacement(f"t{i}", Path(f"f{i}.bin"), first, n) for i, (first, n) in enumerate(spans)]


def test_one_file_keeps_its_first_sample():
    (segment,) = lay_out(_files((434_819, 300)), FS)
    assert (segment.first_sample, segment.binary_start, segment.n_samples) == (434_819, 0, 300)
    assert to_acquisition_samples(np.array([0, 299]), [segment]).tolist() == [434_819, 435_118]


def test_a_gap_is_zero_filled_and_an_overlap_skipped():
    # t0: 100..399; t1 after a 30000-sample (1 s) gap: 30400..30699; t2 overlaps t1 by one sample: 30699..30998
    segments = lay_out(_files((100, 300), (30_400, 300), (30_699, 300)), FS)
    assert [(s.binary_start, s.zeros_before, s.file_offset, s.n_samples) for s in segments] == [
        (0, 0, 0, 300),
        (30_300, 30_000, 0, 300),
        (30_600, 0, 1, 299),
    ]
    assert total_samples(segments) == 30_899  # CatGT: 300 + 30000 + 300 + 299
    rows = np.array([0, 299, 300, 30_299, 30_300, 30_599, 30_600, 30_898])
    assert to_acquisition_samples(rows, segments).tolist() == (rows + 100).tolist()


def test_refusals_name_the_file_and_the_fix():
    with pytest.raises(SessionInputError, match="max_gap_fill_s"):
        lay_out(_files((0, 300), (int(61 * FS), 300)), FS)
    assert len(lay_out(_files((0, 300), (int(61 * FS), 300)), FS, max_gap_fill_s=62)) == 2
    with pytest.raises(SessionInputError, match="restarted"):
        lay_out(_files((1000, 300), (0, 300)), FS)
    with pytest.raises(SessionInputError, match="wholly inside"):
        lay_out(_files((0, 300), (10, 100)), FS)
    with pytest.raises(SessionInputError, match="no first sample"):
        lay_out(_files((0, 300), (None, 100)), FS)


def test_rows_beyond_the_binary_are_refused():
    segments = lay_out(_files((5, 10)), FS)
    with pytest.raises(ValueError):
        to_acquisition_samples(np.array([10]), segments)

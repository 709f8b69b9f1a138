"""Every format through the real ingest steps: observe → probe map (shanks kept) → recording binary (bytes checked)."""

from __future__ import annotations

import numpy as np
import pytest

from ks_platform.core import pipeline
from ks_platform.core.conversion import load_recording_binary
from ks_platform.core.store import SessionStore
from ks_platform_tests import writers
from ks_platform_tests.formats import synthetic

WRITERS = {
    "openephys": writers.write_openephys_session,
    "nwb": writers.write_nwb_session,
    "plexon": writers.write_plexon_session,
}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_format_through_ingest_steps(fmt, tmp_path):
    traces = synthetic.traces(n_samples=45_000)
    folder = WRITERS[fmt](
        tmp_path / "landing" / f"{fmt}_session",
        traces,
        synthetic.FS,
        synthetic.positions(),
        synthetic.DATE,
        shank_ids=synthetic.shank_ids(),
    )
    store = SessionStore(tmp_path / "store", f"{synthetic.DATE}__rig1__{fmt}_session__probe")
    observed = pipeline.observe_raw_recording(folder, store)
    assert observed.metadata["format"] == fmt and observed.metadata["recording_date"] == synthetic.DATE.isoformat()
    probe = pipeline.build_probe_map(folder, store)
    assert probe.metadata["n_sorted_channels"] == 32 and probe.metadata["n_shanks"] == 2
    out = pipeline.build_recording_binary(folder, store)
    binary = load_recording_binary(store.binary_dir)
    data = np.memmap(binary.path, dtype=np.int16, mode="r").reshape(-1, binary.n_chan_bin)
    sorted_rows = [binary.binary_channels.index(c) for c in observed_sorting_channels(folder)]
    assert np.array_equal(np.asarray(data[:, sorted_rows]), traces)
    assert out.metadata["zero_copy"] == (fmt == "openephys")
    if not binary.zero_copy:
        assert out.metadata["bytes_written"] == traces.nbytes


def observed_sorting_channels(folder):
    from ks_platform.core.formats import open_recording

    return list(open_recording(folder).sorting_channels)

"""A folder with no probe to sort is refused with what it holds: for NWB every series found (acquisition and
processing) and why each is skipped; for Plexon the continuous channels that do hold samples."""

from __future__ import annotations

import numpy as np
import pytest

from ks_platform.core import formats
from ks_platform.core.errors import SessionInputError
from ks_platform_tests.formats import synthetic as syn
from ks_platform_tests.nwb_support import START, _linear_positions, _noise
from ks_platform_tests.writers import write_plexon_session


def _nwb_without_a_wideband_series(path, with_lfp_series: bool) -> None:
    """An NWB file holding a running-speed TimeSeries, an LFP in processing/ecephys and (``with_lfp_series``) a
    2.5 kHz ElectricalSeries in acquisition."""
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries
    from pynwb.ecephys import LFP, ElectricalSeries

    nwbfile = NWBFile(session_description="no wideband", identifier=path.name, session_start_time=START)
    device = nwbfile.create_device(name="probe")
    group = nwbfile.create_electrode_group(name="shank0", description="shank", location="CA1", device=device)
    positions = _linear_positions()
    for x, y in positions:
        nwbfile.add_electrode(group=group, location="CA1", rel_x=float(x), rel_y=float(y))
    region = nwbfile.create_electrode_table_region(region=list(range(len(positions))), description="all")
    lfp = _noise(n_samples=2500)
    nwbfile.add_acquisition(TimeSeries(name="running_speed", data=np.zeros(100), unit="m/s", rate=10.0))
    if with_lfp_series:
        nwbfile.add_acquisition(ElectricalSeries(name="ElectricalSeriesLF", data=lfp, electrodes=region, rate=2500.0))
    module = nwbfile.create_processing_module(name="ecephys", description="processed")
    module.add(LFP(electrical_series=ElectricalSeries(name="LFPSeries", data=lfp, electrodes=region, rate=1250.0)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with NWBHDF5IO(str(path), mode="w") as io:
        io.write(nwbfile)


def test_nwb_names_every_series_found_and_why_each_is_skipped(tmp_path):
    file = tmp_path / "s" / "rec.nwb"
    _nwb_without_a_wideband_series(file, with_lfp_series=True)
    with pytest.raises(SessionInputError) as refused:
        formats.scan_session(file.parent)
    message = str(refused.value)
    assert message.startswith(f"{file.parent}: no probe recording to sort in this nwb folder; it holds: ")
    for held in (
        "ElectricalSeriesLF: sampled at 2500 Hz (< 10000 Hz: LFP or a downsampled band), not sorted",
        "running_speed: TimeSeries, not an ElectricalSeries (no voltage traces of electrodes)",
        "processing/ecephys/LFP/LFPSeries: an ElectricalSeries in /processing (processed data such as LFP, not the "
        "raw recording)",
    ):
        assert held in message, message
    assert "Fix: export the raw (>= 10000 Hz) voltage traces as an ElectricalSeries in acquisition" in message


def test_nwb_without_an_electrical_series_in_acquisition_names_what_it_has(tmp_path):
    file = tmp_path / "s" / "rec.nwb"
    _nwb_without_a_wideband_series(file, with_lfp_series=False)
    with pytest.raises(
        SessionInputError,
        match=r"rec\.nwb: the NWB file has no ElectricalSeries in /acquisition \(found: running_speed \(TimeSeries\); "
        r"elsewhere: processing/ecephys/LFP/LFPSeries\)",
    ):
        formats.scan_session(file.parent)


def test_plexon_without_wideband_samples_names_the_channels_that_have_some(tmp_path):
    folder = write_plexon_session(
        tmp_path / "s", syn.traces(8192), syn.FS, syn.positions(), syn.DATE, with_wideband=False
    )
    with pytest.raises(
        SessionInputError,
        match=r"session\.plx: the wideband channels \(WB01, WB02, .*WB32\) hold no samples; the file holds: "
        r"FP01 \(1000 Hz, 274 samples\), FP02 .* and 24 more\. Fix: record wideband \(WB\) data",
    ):
        formats.scan_session(folder).open()

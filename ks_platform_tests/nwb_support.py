"""NWB files written with pynwb (or hdmf-zarr) for the tests of the NWB reader: generated int16 noise on a two-column
linear probe (``_noise``, ``_linear_positions``), series specs (``_series``) written to one file (``_write_pynwb``),
and SpikeInterface's reading of a series (``_spikeinterface``).

Shared by the NWB tests in formats/ (test_nwb_field.py, test_nwb_clock.py, test_nwb_gains.py, test_nwb_range_check.py,
test_nwb_zarr.py, test_no_probe_messages.py) and test_mixed_landing.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

FS = 30000.0
N_SAMPLES = 15000
N_CHANNELS = 32
START = dt.datetime(2025, 11, 14, 10, 0, tzinfo=dt.timezone.utc)


def _noise(n_channels: int = N_CHANNELS, n_samples: int = N_SAMPLES, scale: float = 400.0, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = np.clip(np.rint(rng.normal(0.0, scale, (n_samples, n_channels))), -32767, 32767).astype(np.int16)
    data[7, :] = 32767  # full scale on every channel: what clips first when rescaled
    data[8, :] = -32767
    return data


def _linear_positions(n_channels: int = N_CHANNELS) -> np.ndarray:
    return np.column_stack([np.tile([16.0, 48.0], n_channels // 2), np.repeat(np.arange(n_channels // 2) * 20.0, 2)])


def _series(name: str, data: np.ndarray, rate: float = FS, compress: bool = True, **fields) -> dict:
    return {"name": name, "data": data, "rate": rate, "compress": compress, **fields}


def _write_pynwb(
    path: Path, series: list[dict], columns: dict[str, np.ndarray] | None = None, zarr: bool = False
) -> Path:
    """One NWB file: electrodes with ``columns`` (rel_x, x, ...: one value per row) shared by all series, each series
    on its own rows when the series have different channels (``rows``) or on all rows; a series with ``timestamps``
    has no rate."""
    from hdmf.backends.hdf5.h5_utils import H5DataIO
    from pynwb import NWBFile
    from pynwb.ecephys import ElectricalSeries

    n_rows = max(max(s.get("rows", range(s["data"].shape[1]))) + 1 for s in series)
    nwbfile = NWBFile(session_description="field layout", identifier=path.name, session_start_time=START)
    device = nwbfile.create_device(name="probe", description="a lab probe")
    group = nwbfile.create_electrode_group(name="shank0", description="shank", location="CA1", device=device)
    builtin = {"x", "y", "z", "rel_x", "rel_y", "rel_z"}
    for column in sorted(set(columns or {}) - builtin):
        nwbfile.add_electrode_column(name=column, description=column)
    for row in range(n_rows):
        nwbfile.add_electrode(group=group, location="CA1", **{c: v[row] for c, v in (columns or {}).items()})
    for spec in series:
        rows = list(spec.get("rows", range(spec["data"].shape[1])))
        region = nwbfile.create_electrode_table_region(region=rows, description=f"{spec['name']} rows")
        data = spec["data"]
        if spec["compress"] and not zarr:  # neuroconv's default: gzip level 4, chunks of <= 64 channels
            data = H5DataIO(
                data, compression="gzip", compression_opts=4, chunks=(min(5000, len(data)), min(64, data.shape[1]))
            )
        extra = {k: spec[k] for k in ("conversion", "offset", "channel_conversion", "starting_time") if k in spec}
        timing = {"timestamps": spec["timestamps"]} if "timestamps" in spec else {"rate": spec["rate"]}
        nwbfile.add_acquisition(ElectricalSeries(name=spec["name"], data=data, electrodes=region, **timing, **extra))
    path.parent.mkdir(parents=True, exist_ok=True)
    if zarr:
        from hdmf_zarr.nwb import NWBZarrIO

        with NWBZarrIO(str(path), mode="w") as io:
            io.write(nwbfile)
    else:
        from pynwb import NWBHDF5IO

        with NWBHDF5IO(str(path), mode="w") as io:
            io.write(nwbfile)
    return path


def _spikeinterface(file: Path, series: str):
    from spikeinterface.extractors import read_nwb_recording

    return read_nwb_recording(file, electrical_series_path=f"acquisition/{series}")

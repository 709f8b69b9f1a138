"""Generated Open Ephys Record Node folders (GUI 0.6+ binary) of several streams: Neuropixels AP/LFP streams
(``_np_stream``), an NI-DAQ stream (``_nidaq``), and ``_write`` of one recording of them (``N`` samples per stream).

Shared by test_openephys_multi.py, test_openephys_timing.py, test_openephys_cli.py and test_openephys_nodes.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ks_platform_tests.writers import openephys_channels, openephys_stream_entry, write_openephys_recording

N = 400


def _np_stream(stream: str, rate: float = 30000.0, n: int = 384, node: int = 101) -> dict:
    prefix = "LFP" if stream.endswith("-LFP") else "AP"
    names = [f"{prefix}{i + 1}" for i in range(n)] + [f"{prefix}_SYNC"]
    return openephys_stream_entry(
        "Neuropix-PXI",
        100,
        stream,
        rate,
        openephys_channels(names, [0.195] * n + [1.0], [""] * (n + 1)),
        record_node=node,
    )


def _nidaq(node: int = 101) -> dict:
    return openephys_stream_entry(
        "NI-DAQmx",
        102,
        "PXIe-6341",
        30000.0,
        openephys_channels([f"AI{i}" for i in range(8)], 0.000305, ""),
        record_node=node,
    )


def _streams(node: int = 101, n: int = 384) -> list[dict]:
    return [
        _np_stream("ProbeA-AP", n=n, node=node),
        _np_stream("ProbeA-LFP", 2500.0, n=n, node=node),
        _np_stream("ProbeB-AP", n=n, node=node),
        _nidaq(node),
    ]


def _write(
    session: Path, node: int = 101, experiment: int = 1, recording: int = 1, entries: list[dict] | None = None, **kw
) -> dict[str, np.ndarray]:
    recording_dir = (
        session / "2024-05-06_10-00-00" / f"Record Node {node}" / f"experiment{experiment}" / f"recording{recording}"
    )
    return write_openephys_recording(
        recording_dir,
        entries if entries is not None else _streams(node, n=8),
        n_samples=N,
        seed=node * 100 + experiment * 10 + recording,
        **kw,
    )

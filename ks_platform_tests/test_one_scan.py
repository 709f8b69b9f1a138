"""One scan per step: discovering a session folder, and each pipeline step, read every header file once.

Counted for real: a Python audit hook sees every ``open`` of a file (builtins, ``os``, numpy), nothing is patched."""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ks_platform.core import pipeline
from ks_platform.core.discovery import discover
from ks_platform.core.formats import openephys
from ks_platform.core.store import SessionStore
from ks_platform.core.synthetic import GlxProbe, write_spikeglx_run

_COUNTING: list[collections.Counter[str]] = []


def _hook(event: str, args: tuple) -> None:
    if _COUNTING and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _COUNTING[-1][os.fsdecode(args[0])] += 1


sys.addaudithook(_hook)  # an audit hook cannot be removed: it counts only inside ``opens()``


@contextmanager
def opens() -> Iterator[collections.Counter[str]]:
    """Every file opened inside the block, with how often."""
    counter: collections.Counter[str] = collections.Counter()
    _COUNTING.append(counter)
    try:
        yield counter
    finally:
        _COUNTING.pop()


HEADERS = (".meta", "ks_session.json", "kilosort4-settings.json")


def _two_probe_session(root: Path) -> Path:
    session = root / "mouse1"
    write_spikeglx_run(session, (GlxProbe("imec0"), GlxProbe("imec1", saved_ap=tuple(range(32)))), gates=(0, 1))
    (session / "ks_session.json").write_text(json.dumps({"kilosort": {"Th_universal": 9}}))
    imec1 = next(session.rglob("run_g0_imec1"))
    (imec1 / "kilosort4-settings.json").write_text(json.dumps({"Th_learned": 7}))
    return session


def test_discovery_reads_each_header_file_once(tmp_path):
    session = _two_probe_session(tmp_path / "landing")
    headers = sorted(str(p) for p in session.rglob("*") if p.name.endswith(HEADERS))
    assert len(headers) == 6  # 4 metas, 2 config files
    with opens() as counted:
        found, rejected = discover({"rig1": tmp_path / "landing"})
    assert rejected == [] and [f.probe_name for f in found] == ["imec0", "imec1"]
    assert {path: counted[path] for path in headers} == dict.fromkeys(headers, 1)
    data = [str(p) for p in session.rglob("*.ap.bin")]
    assert all(counted[path] <= 2 for path in data), {p: counted[p] for p in data}  # readable check + fingerprint


def test_each_step_scans_the_folder_once(tmp_path):
    session = _two_probe_session(tmp_path / "landing")
    metas = [str(p) for p in session.rglob("*imec1.ap.meta")]
    store = SessionStore(tmp_path / "store", "2026-03-02__rig1__mouse1__imec1")
    with opens() as counted:
        observed = pipeline.observe_raw_recording(session, store, "imec1")
    assert observed.metadata["settings_version"] != "none"  # the settings version comes from the same scan
    assert [counted[path] for path in metas] == [1, 1]
    with opens() as counted:
        pipeline.build_recording_binary(session, store, probe="imec1")
    assert [counted[path] for path in metas] == [1, 1]


def test_open_ephys_discovery_reads_each_oebin_and_settings_file_once(tmp_path):
    """Two probes in one Record Node (one structure.oebin, one settings.xml) and a session config."""
    from ks_platform.core.synthetic import np1_probe
    from ks_platform_tests.writers import OpenEphysProbe, write_openephys_node

    rng = np.random.default_rng(0)
    positions = np1_probe(32).contact_positions
    probes = [
        OpenEphysProbe(
            name, rng.integers(-100, 100, (600, 32), dtype=np.int16), positions, part_number="PRB_1_4_0480_1"
        )
        for name in ("ProbeA", "ProbeB")
    ]
    session = write_openephys_node(tmp_path / "landing" / "oe", probes, 30000.0, dt.date(2026, 3, 2))
    (session / "ks_session.json").write_text(json.dumps({"kilosort": {"Th_universal": 9}}))
    headers = sorted(
        str(p) for p in session.rglob("*") if p.name in ("structure.oebin", "settings.xml", "ks_session.json")
    )
    assert len(headers) == 3
    with opens() as counted:
        found, rejected = discover({"rig1": tmp_path / "landing"})
    assert rejected == [] and [f.probe_name for f in found] == ["ProbeA", "ProbeB"]
    # probeinterface's read_openephys takes a path and parses settings.xml itself, once per probe stream: those
    # opens are its own; the platform's own reads are one per file
    settings = next(path for path in headers if path.endswith("settings.xml"))
    with opens() as by_probeinterface:
        for stream in ("Neuropix-PXI-100.ProbeA", "Neuropix-PXI-100.ProbeB"):
            openephys._probeinterface_probe(Path(settings), stream, None, 100)
    ours = {path: counted[path] - (by_probeinterface[path] if path == settings else 0) for path in headers}
    assert ours == dict.fromkeys(headers, 1), (dict(counted), dict(by_probeinterface))

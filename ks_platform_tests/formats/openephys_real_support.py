"""Open Ephys sessions built from the real GUI headers in ``ks_platform_tests/data/openephys`` (``DATA``):
``build_from_settings`` writes, for a settings.xml, the oebin and a few hundred generated samples (``N_SAMPLES``)
per stream of every Record Node as that GUI version does; ``_read_si`` / ``_si_stream`` read a probe stream with
SpikeInterface and ``_our_positions`` gives our probe's contact positions in sorting-channel order.

Shared by test_openephys_real.py and test_openephys_catalogue.py.
"""

from __future__ import annotations

import re
import shutil
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ks_platform_tests.writers import openephys_channels, openephys_stream_entry, write_openephys_recording

DATA = Path(__file__).resolve().parents[1] / "data" / "openephys"
#: Source processors (their streams are what Record Nodes record).
SOURCES = ("Neuropix-PXI", "OneBox", "NI-DAQmx", "ONIX", "File Reader")
N_SAMPLES = 300


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:2])


def _processors(root: ET.Element) -> list[ET.Element]:
    return list(root.iter("PROCESSOR"))


def _node_id(processor: ET.Element) -> int:
    return int(processor.attrib.get("nodeId") or processor.attrib.get("NodeId"))


def _short(processor: ET.Element) -> str:
    return processor.attrib["name"].split("/")[-1]


def _channel_names(
    source: str, stream: str, count: int, version: tuple[int, ...]
) -> tuple[list[str], list[float], list[str]]:
    """Channel names, bit_volts and units as that GUI version's plugin writes them."""
    if source == "NI-DAQmx":
        return [f"AI{i}" for i in range(count)], [0.00030518509] * count, [""] * count
    if stream.endswith("ADC"):
        return [f"ADC{i}" for i in range(count)], [0.000152587890625] * count, [""] * count
    sync = count == 385 and source in ("Neuropix-PXI", "OneBox")
    n = count - sync
    if version >= (1, 0):
        names = [f"CH{i}" for i in range(n)]
    else:
        prefix = "LFP" if stream.endswith("-LFP") else "AP" if stream.endswith("-AP") else "CH"
        names = [f"{prefix}{i + 1}" for i in range(n)]
    if sync:
        names.append(names[0].rstrip("0123456789") + "_SYNC")
    return names, [0.195] * n + [1.0] * sync, [""] * count


def _recorded(node: ET.Element) -> dict[str, str]:
    params = node.find("CUSTOM_PARAMETERS")
    states = (
        {s.attrib["name"]: s.attrib.get("recording_state", "ALL") for s in params.findall("STREAM")}
        if params is not None
        else {}
    )
    return {s.attrib["name"]: states.get(s.attrib["name"], "ALL") for s in node.findall("STREAM")}


def entries_from_settings(root: ET.Element) -> dict[int, list[dict]]:
    """The oebin ``continuous`` entries each Record Node of this settings.xml writes (GUI 0.6+/1.0)."""
    version = _version(root.findtext("INFO/VERSION"))
    sources = [p for p in _processors(root) if any(s in _short(p) for s in SOURCES)]
    nodes = [p for p in _processors(root) if "Record Node" in p.attrib["name"]] or [None]
    result: dict[int, list[dict]] = {}
    for node in nodes:
        streams = (
            _recorded(node)
            if node is not None
            else {s.attrib["name"]: "ALL" for p in sources for s in p.findall("STREAM")}
        )
        node_id = _node_id(node) if node is not None else 101
        entries = []
        for name, state in streams.items():
            source = next(p for p in sources if name in [s.attrib["name"] for s in p.findall("STREAM")])
            element = next(s for s in source.findall("STREAM") if s.attrib["name"] == name)
            names, volts, units = _channel_names(_short(source), name, int(element.attrib["channel_count"]), version)
            if state == "NONE":
                continue
            keep = range(len(names)) if state == "ALL" else [i for i, bit in enumerate(state) if bit == "1"]
            channels = openephys_channels([names[i] for i in keep], [volts[i] for i in keep], [units[i] for i in keep])
            entries.append(
                openephys_stream_entry(
                    _short(source),
                    _node_id(source),
                    name,
                    float(element.attrib["sample_rate"]),
                    channels,
                    record_node=node_id,
                )
            )
        result[node_id] = entries
    return result


def entries_from_legacy_settings(root: ET.Element) -> dict[int, list[dict]]:
    """GUI 0.5.x: streams are the Record Node's SUBPROCESSORs, named ``<source>-<id>.<sub_idx>``."""
    source = next(p for p in _processors(root) if "Neuropix-PXI" in p.attrib["name"])
    node = next(p for p in _processors(root) if "Record Node" in p.attrib["name"])
    entries = []
    for sub in node.iter("SUBPROCESSOR"):
        index = int(sub.attrib["sub_idx"])
        names = [f"AP{i + 1}" for i in range(384)] + ["AP_SYNC"]
        channels = openephys_channels(names, [0.195] * 384 + [1.0], ["uV"] * 384 + [""])
        entries.append(
            openephys_stream_entry(
                "Neuropix-PXI", _node_id(source), None, 30000.0, channels, record_node=_node_id(node), sub_idx=index
            )
        )
    return {_node_id(node): entries}


def build_from_settings(settings: Path, session: Path) -> Path:
    root = ET.parse(settings).getroot()
    version = root.findtext("INFO/VERSION")
    builder = entries_from_legacy_settings if _version(version) < (0, 6) else entries_from_settings
    for seed, (node_id, entries) in enumerate(builder(root).items()):
        node_dir = session / f"Record Node {node_id}"
        write_openephys_recording(
            node_dir / "experiment1" / "recording1",
            entries,
            gui_version=version,
            n_samples=N_SAMPLES,
            first_sample=1000,
            seed=seed,
        )
        shutil.copy(settings, node_dir / "settings.xml")
    return session


def _si_stream(source) -> str:
    node = source.details["record_node"]
    return f"{node}#{source.details['openephys_stream']}" if node else source.details["openephys_stream"]


def _read_si(session: Path, stream: str):
    import spikeinterface.extractors as se

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return se.read_openephys(session, stream_name=stream)


def _our_positions(source) -> tuple[np.ndarray, np.ndarray | None]:
    """Contact x/y (and shank ids) of our probe, in sorting-channel order."""
    probe = source.probe
    contact_of = {int(d): j for j, d in enumerate(probe.device_channel_indices)}
    order = [contact_of[c] for c in source.sorting_channels]
    shanks = (
        np.asarray(probe.shank_ids)[order] if probe.shank_ids is not None and len(set(probe.shank_ids)) > 1 else None
    )
    return probe.contact_positions[order], shanks

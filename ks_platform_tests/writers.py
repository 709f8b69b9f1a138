"""Writers of real-format recordings for the tests (Open Ephys, NWB, Plexon fixtures).

Each takes int16 traces ``[samples, channels]`` (in bits of ``uv_per_bit`` where the format stores a gain),
the sampling rate, contact positions in µm, the recording date and optional shank ids, writes a session
folder in that format and returns the folder. Samples are written block by block, so ``traces`` may be a
``np.memmap``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Intan's step, the default gain of the Open Ephys and NWB fixtures.
DEFAULT_UV_PER_BIT = 0.195
#: The Plexon fixture's gain: SlowMaxMagnitudeMV 5000 / (0.5 x 2^16 x Gain 1 x PreAmpGain 1000) mV per bit.
PLEXON_UV_PER_BIT = 5000.0 / (0.5 * 2**16 * 1 * 1000) * 1000.0
_NON_EPHYS_BIT_VOLTS = {"AUX": 0.0000374, "ADC": 0.00015258789}


def _check(traces: np.ndarray, positions_um: np.ndarray, shank_ids: Sequence | None) -> tuple[int, int, list[str]]:
    if traces.ndim != 2 or traces.dtype != np.int16:
        raise ValueError(f"traces must be int16 [samples, channels], got {traces.dtype}{traces.shape}")
    n_samples, n_channels = traces.shape
    positions = np.asarray(positions_um)
    if positions.shape != (n_channels, 2):
        raise ValueError(f"positions_um must be [{n_channels}, 2], got {positions.shape}")
    shanks = ["0"] * n_channels if shank_ids is None else [str(s) for s in shank_ids]
    if len(shanks) != n_channels:
        raise ValueError(f"shank_ids must list {n_channels} values")
    return n_samples, n_channels, shanks


# --------------------------------------------------------------------------------------------- Open Ephys


@dataclass(frozen=True)
class OpenEphysProbe:
    """One Neuropixels stream of a Record Node: int16 ``traces`` ``[samples, channels]``, contact positions (µm),
    optional shank ids and part number (``PRB_1_4_0480_1``: probeinterface builds the catalogue probe from it)."""

    name: str
    traces: np.ndarray
    positions_um: np.ndarray
    shank_ids: Sequence | None = None
    part_number: str | None = None


def _np_probe_xml(k: int, stream: str, positions: np.ndarray, shanks: list[str], part_number: str | None) -> str:
    """The Neuropixels-PXI plugin's ``NP_PROBE`` (older plugin: per-channel positions) of the ``k``-th probe."""
    multi_shank = len(set(shanks)) > 1  # the plugin writes "bank:shank" for multi-shank probes, "bank" otherwise
    channels = " ".join(f'CH{i}="0:{s}"' if multi_shank else f'CH{i}="0"' for i, s in enumerate(shanks))
    xpos = " ".join(f'CH{i}="{float(x)!r}"' for i, x in enumerate(positions[:, 0]))
    ypos = " ".join(f'CH{i}="{float(y)!r}"' for i, y in enumerate(positions[:, 1]))
    part = f' probe_part_number="{part_number}"' if part_number else ""
    return f"""        <NP_PROBE slot="2" port="{k + 1}" dock="1" probe_serial_number="{k}"{part}
                  probe_name="synthetic probe" custom_probe_name="{stream}" isEnabled="1">
          <CHANNELS {channels}/>
          <ELECTRODE_XPOS {xpos}/>
          <ELECTRODE_YPOS {ypos}/>
        </NP_PROBE>
"""


def _settings_xml(
    date: dt.date, fs: float, node_id: int, streams: Sequence[tuple[str, int]], np_probes: Sequence[str]
) -> str:
    """A GUI 0.6-style settings.xml: one Neuropix-PXI processor with ``streams`` (name, channel count) and their
    ``np_probes`` (``_np_probe_xml``), then a Record Node."""
    stamp = dt.datetime.combine(date, dt.time(10, 0, 0)).strftime("%d %b %Y %H:%M:%S")
    stream_xml = "".join(
        f'      <STREAM name="{name}" description="synthetic probe" sample_rate="{fs!r}" channel_count="{n}"/>\n'
        for name, n in streams
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>

<SETTINGS>
  <INFO>
    <VERSION>0.6.7</VERSION>
    <PLUGIN_API_VERSION>8</PLUGIN_API_VERSION>
    <DATE>{stamp}</DATE>
    <OS>Linux</OS>
    <MACHINE name="ks-platform-writer"/>
  </INFO>
  <SIGNALCHAIN>
    <PROCESSOR name="Neuropix-PXI" insertionPoint="0" pluginName="Neuropix-PXI" type="4" index="0"
               libraryName="Neuropix-PXI" libraryVersion="0.6.4" processorType="2" nodeId="{node_id}">
      <GLOBAL_PARAMETERS/>
{stream_xml}      <CUSTOM_PARAMETERS/>
      <EDITOR isCollapsed="0" displayName="Neuropix-PXI" activeStream="0">
{"".join(np_probes)}      </EDITOR>
    </PROCESSOR>
    <PROCESSOR name="Record Node" insertionPoint="1" pluginName="Record Node" type="0" index="1"
               libraryName="" libraryVersion="" processorType="8" nodeId="{node_id + 1}"/>
  </SIGNALCHAIN>
</SETTINGS>
"""


def _write_probe_stream(
    recording_dir: Path,
    entry: dict,
    traces: np.ndarray,
    extra_channels: Sequence[str],
    sampling_frequency: float,
    first_sample: int,
    chunk_samples: int,
) -> None:
    """A probe stream's ``continuous.dat`` block by block: ``traces`` then ``extra_channels`` carrying a 1 Hz square
    wave; with its sample index files."""
    stream_dir = Path(recording_dir) / "continuous" / str(entry["folder_name"]).strip("/")
    stream_dir.mkdir(parents=True, exist_ok=True)
    n_samples, n_channels = traces.shape
    with open(stream_dir / "continuous.dat", "wb") as handle:
        for start in range(0, n_samples, chunk_samples):
            stop = min(start + chunk_samples, n_samples)
            block = np.zeros((stop - start, n_channels + len(extra_channels)), dtype="<i2")
            block[:, :n_channels] = traces[start:stop]
            square = (((first_sample + np.arange(start, stop)) // int(sampling_frequency // 2)) % 2).astype(np.int16)
            for j, name in enumerate(extra_channels):
                block[:, n_channels + j] = square * (10000 if "ADC" in name.upper() else 1000)
            handle.write(block.tobytes())
    _write_sample_index(stream_dir, first_sample, n_samples, sampling_frequency, legacy=False)


def write_openephys_node(
    folder: Path,
    probes: Sequence[OpenEphysProbe],
    sampling_frequency: float,
    recording_date: dt.date,
    *,
    uv_per_bit: float = DEFAULT_UV_PER_BIT,
    extra_channels: Sequence[str] = ("AUX1", "ADC1"),
    first_sample: int = 30000,
    chunk_samples: int = 65536,
    extra_streams: Sequence[dict] = (),
    record_nodes: Sequence[int] = (101,),
) -> Path:
    """Write an Open Ephys GUI 0.6 binary recording whose Record Node holds one Neuropixels stream per probe;
    return ``folder``.

    Layout: ``folder/<date>_10-00-00/Record Node 101/{settings.xml, experiment1/recording1/...}`` with
    ``structure.oebin``, ``continuous/Neuropix-PXI-100.<probe name>/{continuous.dat, sample_numbers.npy,
    timestamps.npy}`` per probe and ``sync_messages.txt``. Each probe stream holds its ephys channels
    ``CH1..CHn`` (``bit_volts=uv_per_bit``) followed by ``extra_channels`` (AUX/ADC inputs, in volts, carrying a
    1 Hz square wave). ``settings.xml`` has one STREAM and one NP_PROBE per probe (``custom_probe_name`` = its
    name, positions as ``ELECTRODE_XPOS/YPOS``, ``probe_part_number`` when given, e.g. ``PRB_1_4_0480_1`` with
    NP1.0 positions as the plugin writes them). ``extra_streams`` (oebin entries, see ``openephys_stream_entry``:
    an LFP band, an NI-DAQ board…) are recorded too, with random samples as long as the first probe's;
    ``record_nodes`` lists the Record Nodes that each record all of it.
    """
    if not probes or len({p.name for p in probes}) != len(probes):
        raise ValueError(f"probes must have distinct names, got {[p.name for p in probes]}")
    fs = float(sampling_frequency)
    node_dir = Path(folder) / f"{recording_date.isoformat()}_10-00-00" / f"Record Node {record_nodes[0]}"
    recording_dir = node_dir / "experiment1" / "recording1"
    history = "Neuropix-PXI -> Record Node"
    extra_volts = [_NON_EPHYS_BIT_VOLTS["ADC" if "ADC" in n.upper() else "AUX"] for n in extra_channels]
    entries: list[dict] = []
    streams: list[tuple[str, int]] = []
    np_probes: list[str] = []
    sync: list[str] = []
    for k, probe in enumerate(probes):
        _, n_channels, shanks = _check(probe.traces, probe.positions_um, probe.shank_ids)
        channels = openephys_channels([f"CH{i + 1}" for i in range(n_channels)], uv_per_bit, "uV", history)
        channels += openephys_channels(list(extra_channels), extra_volts, "V", history)
        entry = openephys_stream_entry("Neuropix-PXI", 100, probe.name, fs, channels, record_node=record_nodes[0])
        _write_probe_stream(recording_dir, entry, probe.traces, extra_channels, fs, first_sample, chunk_samples)
        entries.append(entry)
        streams.append((probe.name, len(channels)))
        np_probes.append(_np_probe_xml(k, probe.name, np.asarray(probe.positions_um, float), shanks, probe.part_number))
        sync.append(f"Start Time for Neuropix-PXI (100) - {probe.name} @ {fs:g} Hz: {first_sample}\n")
    rng = np.random.default_rng(0)
    n_first = probes[0].traces.shape[0]
    for entry in extra_streams:
        _write_openephys_stream(
            recording_dir, entry, None, first_sample=first_sample, legacy=False, rng=rng, n_samples=n_first
        )
    oebin = {"GUI version": "0.6.7", "continuous": [*entries, *extra_streams], "events": [], "spikes": []}
    (recording_dir / "structure.oebin").write_text(json.dumps(oebin, indent=2) + "\n")
    (recording_dir / "sync_messages.txt").write_text(
        "Software Time (milliseconds since midnight Jan 1st 1970 UTC): 0\n" + "".join(sync)
    )
    (node_dir / "settings.xml").write_text(_settings_xml(recording_date, fs, 100, streams, np_probes))
    for node in record_nodes[1:]:
        shutil.copytree(node_dir, node_dir.parent / f"Record Node {node}")
    return Path(folder)


def write_openephys_session(
    folder: Path,
    traces: np.ndarray,
    sampling_frequency: float,
    positions_um: np.ndarray,
    recording_date: dt.date,
    shank_ids: Sequence | None = None,
    *,
    uv_per_bit: float = DEFAULT_UV_PER_BIT,
    extra_channels: Sequence[str] = ("AUX1", "ADC1"),
    first_sample: int = 30000,
    probe_part_number: str | None = None,
    chunk_samples: int = 65536,
    extra_streams: Sequence[dict] = (),
    record_nodes: Sequence[int] = (101,),
) -> Path:
    """Write an Open Ephys GUI 0.6 binary recording of one probe, ``ProbeA`` (see ``write_openephys_node``);
    return ``folder``."""
    probe = OpenEphysProbe("ProbeA", traces, positions_um, shank_ids, probe_part_number)
    return write_openephys_node(
        folder,
        [probe],
        sampling_frequency,
        recording_date,
        uv_per_bit=uv_per_bit,
        extra_channels=extra_channels,
        first_sample=first_sample,
        chunk_samples=chunk_samples,
        extra_streams=extra_streams,
        record_nodes=record_nodes,
    )


def openephys_channels(
    names: Sequence[str],
    bit_volts: float | Sequence[float],
    units: str | Sequence[str] = "uV",
    history: str = "Record Node",
) -> list[dict]:
    """oebin ``channels`` entries as the GUI writes them (one ``bit_volts``/``units`` for all, or one per channel)."""
    n = len(names)
    volts = [float(bit_volts)] * n if np.isscalar(bit_volts) else [float(v) for v in bit_volts]  # type: ignore[arg-type]
    unit_list = [units] * n if isinstance(units, str) else list(units)
    return [
        {"channel_name": name, "description": "", "identifier": "", "history": history, "bit_volts": v, "units": u}
        for name, v, u in zip(names, volts, unit_list)
    ]


def openephys_stream_entry(
    source: str,
    source_id: int,
    stream: str | None,
    sample_rate: float,
    channels: list[dict],
    *,
    record_node: int = 101,
    sub_idx: int = 0,
) -> dict:
    """One oebin ``continuous`` entry: GUI 0.6+ (``stream`` given: folder ``<source>-<id>.<stream>``) or 0.5.x
    (``stream=None``: folder ``<source>-<id>.<sub_idx>``, ``source_processor_sub_idx``, no stream name)."""
    folder = f"{source.replace(' ', '_')}-{source_id}.{stream if stream is not None else sub_idx}/"
    entry: dict = {
        "folder_name": folder,
        "sample_rate": float(sample_rate),
        "source_processor_name": source,
        "source_processor_id": source_id,
    }
    if stream is None:
        entry["source_processor_sub_idx"] = sub_idx
    else:
        entry["stream_name"] = stream
    entry.update(
        {
            "recorded_processor": "Record Node",
            "recorded_processor_id": record_node,
            "num_channels": len(channels),
            "channels": channels,
        }
    )
    return entry


def _write_openephys_stream(
    recording_dir: Path,
    entry: dict,
    samples: np.ndarray | None,
    *,
    first_sample: int,
    legacy: bool,
    rng: np.random.Generator,
    n_samples: int,
) -> np.ndarray:
    """``continuous/<folder>/continuous.dat`` and its sample index files; random int16 samples unless given."""
    stream_dir = Path(recording_dir) / "continuous" / str(entry["folder_name"]).strip("/")
    stream_dir.mkdir(parents=True, exist_ok=True)
    if samples is None:
        samples = rng.integers(-2000, 2000, size=(n_samples, int(entry["num_channels"])), dtype=np.int16)
    samples = np.ascontiguousarray(samples, dtype="<i2")
    samples.tofile(stream_dir / "continuous.dat")
    _write_sample_index(stream_dir, first_sample, samples.shape[0], float(entry["sample_rate"]), legacy=legacy)
    return samples


def _write_sample_index(
    stream_dir: Path, first_sample: int, n_samples: int, sample_rate: float, *, legacy: bool
) -> None:
    """GUI 0.6+: ``sample_numbers.npy`` (int64) and ``timestamps.npy`` (float64 s); 0.5.x: ``timestamps.npy`` only,
    holding the int64 sample numbers."""
    numbers = np.arange(first_sample, first_sample + n_samples, dtype=np.int64)
    if legacy:
        np.save(stream_dir / "timestamps.npy", numbers)
    else:
        np.save(stream_dir / "sample_numbers.npy", numbers)
        np.save(stream_dir / "timestamps.npy", numbers / float(sample_rate))


def write_openephys_recording(
    recording_dir: Path,
    entries: Sequence[dict],
    *,
    gui_version: str = "0.6.7",
    n_samples: int = 300,
    first_sample: int = 0,
    data: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write ``structure.oebin`` with ``entries`` and each stream's ``continuous.dat`` (``data[folder]`` or random
    int16 ``[n_samples, num_channels]``) with the sample index files that GUI version writes: 0.6+ writes
    ``sample_numbers.npy`` (int64) and ``timestamps.npy`` (float64 s), 0.5.x only ``timestamps.npy`` holding
    the int64 sample numbers. Returns the samples written, by folder name (without the slash)."""
    recording_dir = Path(recording_dir)
    rng = np.random.default_rng(seed)
    legacy = tuple(int(p) for p in re.findall(r"\d+", gui_version)[:2]) < (0, 6)
    written: dict[str, np.ndarray] = {}
    for entry in entries:
        folder = str(entry["folder_name"]).strip("/")
        written[folder] = _write_openephys_stream(
            recording_dir,
            entry,
            (data or {}).get(folder),
            first_sample=first_sample,
            legacy=legacy,
            rng=rng,
            n_samples=n_samples,
        )
    oebin = {"GUI version": gui_version, "continuous": list(entries), "events": [], "spikes": []}
    (recording_dir / "structure.oebin").write_text(json.dumps(oebin, indent=2) + "\n")
    return written


def _legacy_header(
    channel: str, sampling_frequency: float, bit_volts: float, created: dt.datetime, version: str
) -> bytes:
    """The 1024-byte header of a ``.continuous`` file as the GUI's ``OriginalRecording::generateHeader`` writes it."""
    text = (
        "header.format = 'Open Ephys Data Format'; \n"
        f"header.version = {version}; \n"
        "header.header_bytes = 1024;\n"
        "header.description = 'each record contains one 64-bit timestamp, one 16-bit sample count (N), 1 uint16 "
        "recordingNumber, N 16-bit samples, and one 10-byte record marker (0 1 2 3 4 5 6 7 8 255)'; \n"
        f"header.date_created = '{created.strftime('%d-%b-%Y %H%M%S')}';\n"
        f"header.channel = '{channel}';\n"
        "header.channelType = 'Continuous';\n"
        f"header.sampleRate = {sampling_frequency:g};\n"
        "header.blockLength = 1024;\n"
        "header.bufferSize = 1024;\n"
        f"header.bitVolts = {bit_volts:g};\n"
    )
    return text.encode("ascii").ljust(1024, b" ")


def write_openephys_legacy(
    folder: Path,
    traces: np.ndarray,
    sampling_frequency: float,
    recording_date: dt.date,
    *,
    prefix: str = "100",
    uv_per_bit: float = DEFAULT_UV_PER_BIT,
    record_starts: Sequence[int] | None = None,
    recording_numbers: Sequence[int] | None = None,
    first_sample: int = 0,
    experiment: int = 1,
    extra_channels: Sequence[str] = (),
    version: str = "0.4",
    seed: int = 0,
) -> Path:
    """Write one experiment of the Open Ephys legacy format (GUI <= 0.4 "Open Ephys" record engine) into ``folder``:
    ``<prefix>_CH<i>[_<experiment>].continuous`` per channel of int16 ``traces`` ``[samples, channels]`` (zero-padded
    to whole 1024-sample records, as the GUI pads the last record when recording stops), and random samples for
    ``extra_channels`` (``AUX1``, ``ADC1``…, in volts). Record k starts at ``record_starts[k]`` (default: contiguous
    from ``first_sample``) with recording number ``recording_numbers[k]`` (default 0); returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_records = -(-traces.shape[0] // 1024)
    samples = np.zeros((n_records * 1024, traces.shape[1]), dtype=np.int16)
    samples[: traces.shape[0]] = traces
    starts = list(record_starts) if record_starts is not None else [first_sample + 1024 * k for k in range(n_records)]
    numbers = list(recording_numbers) if recording_numbers is not None else [0] * n_records
    if len(starts) != n_records or len(numbers) != n_records:
        raise ValueError(f"{n_records} records need {n_records} record_starts and recording_numbers")
    record = np.dtype(
        [("timestamp", "<i8"), ("nb_sample", "<u2"), ("rec_num", "<u2"), ("samples", ">i2", 1024), ("marker", "u1", 10)]
    )
    created = dt.datetime.combine(recording_date, dt.time(11, 45, 27))
    suffix = f"_{experiment}" if experiment > 1 else ""
    rng = np.random.default_rng(seed)
    extra = rng.integers(-3000, 3000, size=(n_records * 1024, len(extra_channels)), dtype=np.int16)
    channels = [(f"CH{i + 1}", samples[:, i], uv_per_bit) for i in range(samples.shape[1])]
    channels += [
        (name, extra[:, j], _NON_EPHYS_BIT_VOLTS["ADC" if "ADC" in name else "AUX"])
        for j, name in enumerate(extra_channels)
    ]
    for name, column, bit_volts in channels:
        records = np.zeros(n_records, dtype=record)
        records["timestamp"], records["nb_sample"], records["rec_num"] = starts, 1024, numbers
        records["samples"] = column.reshape(n_records, 1024)
        records["marker"] = list(range(9)) + [255]
        with open(folder / f"{prefix}_{name}{suffix}.continuous", "wb") as handle:
            handle.write(_legacy_header(name, sampling_frequency, bit_volts, created, version))
            handle.write(records.tobytes())
    return folder


# --------------------------------------------------------------------------------------------- NWB


def write_nwb_session(
    folder: Path,
    traces: np.ndarray,
    sampling_frequency: float,
    positions_um: np.ndarray,
    recording_date: dt.date,
    shank_ids: Sequence | None = None,
    *,
    uv_per_bit: float = DEFAULT_UV_PER_BIT,
    as_float: bool = False,
    position_columns: tuple[str, str] = ("rel_x", "rel_y"),
    file_name: str = "session.nwb",
    chunk_samples: int = 30000,
) -> Path:
    """Write ``folder/<file_name>`` with pynwb; return ``folder``.

    One ``ElectricalSeries`` ("ElectricalSeries") in acquisition: int16 data with
    ``conversion = uv_per_bit * 1e-6`` (volts per bit), or, with ``as_float``, float32 volts. The electrodes
    table has ``position_columns`` (µm; ``rel_x``/``rel_y`` are positions on the probe, ``x``/``y`` would be brain
    coordinates) and one ``ElectrodeGroup`` per shank. Session start: 10:00 UTC.
    """
    from hdmf.data_utils import GenericDataChunkIterator
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ecephys import ElectricalSeries

    n_samples, n_channels, shanks = _check(traces, positions_um, shank_ids)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    start = dt.datetime.combine(recording_date, dt.time(10, 0, 0), tzinfo=dt.timezone.utc)
    nwbfile = NWBFile(
        session_description="synthetic recording written by ks_platform",
        identifier=f"ks-platform-{recording_date.isoformat()}-{n_channels}ch-{n_samples}",
        session_start_time=start,
    )
    device = nwbfile.create_device(name="probe", description="synthetic probe")
    groups = {}
    for shank in dict.fromkeys(shanks):
        groups[shank] = nwbfile.create_electrode_group(
            name=f"shank{shank}", description=f"shank {shank}", location="unknown", device=device
        )
    cx, cy = position_columns
    positions = np.asarray(positions_um, dtype=float)
    for i in range(n_channels):
        nwbfile.add_electrode(
            group=groups[shanks[i]], location="unknown", **{cx: float(positions[i, 0]), cy: float(positions[i, 1])}
        )
    region = nwbfile.create_electrode_table_region(region=list(range(n_channels)), description="all electrodes")

    scale = np.float32(uv_per_bit * 1e-6)
    dtype = np.dtype(np.float32 if as_float else np.int16)

    class _Traces(GenericDataChunkIterator):
        """Hands pynwb the traces one chunk at a time (float32 volts when ``as_float``)."""

        def _get_data(self, selection: tuple[slice, ...]) -> np.ndarray:
            block = np.asarray(traces[selection])
            return block.astype(np.float32) * scale if as_float else block

        def _get_maxshape(self) -> tuple[int, int]:
            return (n_samples, n_channels)

        def _get_dtype(self) -> np.dtype:
            return dtype

    chunk_shape = (min(chunk_samples, n_samples), n_channels)
    iterator = _Traces(chunk_shape=chunk_shape, buffer_shape=chunk_shape, display_progress=False)
    series = ElectricalSeries(
        name="ElectricalSeries",
        data=iterator,
        electrodes=region,
        rate=float(sampling_frequency),
        starting_time=0.0,
        conversion=1.0 if as_float else float(uv_per_bit) * 1e-6,
        description="raw wideband voltage",
    )
    nwbfile.add_acquisition(series)
    with NWBHDF5IO(str(folder / file_name), mode="w") as io:
        io.write(nwbfile)
    return folder


# --------------------------------------------------------------------------------------------- Plexon


def write_plexon_session(
    folder: Path,
    traces: np.ndarray,
    sampling_frequency: float,
    positions_um: np.ndarray,
    recording_date: dt.date,
    shank_ids: Sequence | None = None,
    *,
    block_samples: int = 4096,
    with_fp: bool = True,
    with_spikes: bool = True,
    write_probe_json: bool = True,
    file_name: str = "session.plx",
    pauses: Sequence[tuple[int, int]] = (),
    start_sample: int = 0,
    ticks_per_sample: int = 1,
    with_wideband: bool = True,
) -> Path:
    """Write ``folder/<file_name>``, a PLX v106 file as OmniPlex lays it out; return ``folder``.

    Slow channels ``WB01..WBnn`` (channel numbers 0..n-1, the int16 traces at ``PLEXON_UV_PER_BIT``), and
    with ``with_fp`` ``FP01..FPnn`` at 1 kHz (traces decimated). Data blocks go in time order: for each
    ``block_samples`` window one continuous block per WB channel, then the FP blocks, then spike snippet
    blocks (type 1, 32 words) and a strobed event (type 4). The timestamp clock (ADFrequency) runs at
    ``ticks_per_sample`` x the sampling rate; the first sample is at ``start_sample`` on it, and each
    ``(at, samples)`` of ``pauses`` stops the recording before trace sample ``at`` for that many samples (the clock
    runs on; a block ends there). ``with_wideband=False`` keeps the WB headers but writes no WB blocks (a file whose
    wideband channels were not recorded). PLX carries no geometry: with ``write_probe_json`` a probeinterface JSON wired to
    the WB channels is written next to it as ``<stem>.probe.json``.
    """
    from ks_platform.core.formats.plexon import (
        BLOCK_HEADER,
        CHANNEL_HEADER,
        EVENT_HEADER,
        FILE_HEADER,
        MAGIC,
        SLOW_CHANNEL_HEADER,
    )

    n_samples, n_channels, shanks = _check(traces, positions_um, shank_ids)
    fs = int(round(sampling_frequency))
    if fs != sampling_frequency or fs <= 0:
        raise ValueError("PLX stores integer sampling rates")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name
    decimation = fs // 1000 if with_fp and fs % 1000 == 0 else 0
    n_fp = n_channels if decimation else 0
    n_dsp = n_channels if with_spikes else 0
    wave_words, pre_threshold = 32, 8
    spike_interval = max(fs // 50, wave_words)

    file_header = np.zeros(1, FILE_HEADER)
    h = file_header[0]
    h["MagicNumber"], h["Version"], h["Comment"] = MAGIC, 106, b"synthetic recording written by ks_platform"

    def clock(sample: int) -> int:
        """The timestamp (ticks) of trace sample ``sample``: its place on the acquisition clock."""
        return (sample + start_sample + sum(length for at, length in pauses if at <= sample)) * ticks_per_sample

    h["ADFrequency"], h["NumDSPChannels"] = fs * ticks_per_sample, n_dsp
    h["NumEventChannels"], h["NumSlowChannels"] = 2, n_channels + n_fp
    h["NumPointsWave"], h["NumPointsPreThr"] = wave_words, pre_threshold
    h["Year"], h["Month"], h["Day"], h["Hour"] = recording_date.year, recording_date.month, recording_date.day, 10
    h["WaveformFreq"], h["LastTimestamp"] = fs, float(clock(n_samples))
    h["Trodalness"], h["DataTrodalness"], h["BitsPerSpikeSample"], h["BitsPerSlowSample"] = 1, 1, 16, 16
    h["SpikeMaxMagnitudeMV"], h["SlowMaxMagnitudeMV"], h["SpikePreAmpGain"] = 5000, 5000, 1000
    h["AcquiringSoftware"], h["ProcessingSoftware"] = b"ks_platform", b"ks_platform"

    dsp = np.zeros(n_dsp, CHANNEL_HEADER)
    for i in range(n_dsp):
        dsp[i]["Name"] = dsp[i]["SIGName"] = f"SPK{i + 1:02d}".encode()
        dsp[i]["Channel"], dsp[i]["SIG"], dsp[i]["WFRate"], dsp[i]["Gain"] = i + 1, i + 1, 10, 1
        dsp[i]["Threshold"], dsp[i]["Method"], dsp[i]["NUnits"], dsp[i]["SortWidth"] = -100, 1, 1, wave_words
        dsp[i]["SrcId"], dsp[i]["ChanId"] = 1, i + 1
    events = np.zeros(2, EVENT_HEADER)
    for k, (name, channel) in enumerate(((b"Strobed", 257), (b"Start", 258))):
        events[k]["Name"], events[k]["Channel"], events[k]["SrcId"], events[k]["ChanId"] = name, channel, 2, channel
    slow = np.zeros(n_channels + n_fp, SLOW_CHANNEL_HEADER)
    for i in range(n_channels + n_fp):
        wideband = i < n_channels
        number = i % n_channels + 1
        slow[i]["Name"] = f"{'WB' if wideband else 'FP'}{number:02d}".encode()
        slow[i]["Channel"], slow[i]["ADFreq"] = i, fs if wideband else 1000
        slow[i]["Gain"], slow[i]["Enabled"], slow[i]["PreAmpGain"], slow[i]["SpikeChannel"] = 1, 1, 1000, number
        slow[i]["SrcId"], slow[i]["ChanId"] = 3 if wideband else 4, number

    def block(kind: int, timestamp: int, channel: int, unit: int, words: np.ndarray) -> bytes:
        head = np.zeros(1, BLOCK_HEADER)
        head["Type"], head["UpperByteOf5ByteTimestamp"], head["TimeStamp"] = (
            kind,
            timestamp >> 32,
            timestamp & 0xFFFFFFFF,
        )
        head["Channel"], head["Unit"] = channel, unit
        head["NumberOfWaveforms"], head["NumberOfWordsInWaveform"] = (1, words.size) if words.size else (0, 0)
        return head.tobytes() + np.ascontiguousarray(words, dtype="<i2").tobytes()

    counts = {"ts": np.zeros(650, np.int64), "ev": np.zeros(512, np.int64)}
    with open(path, "wb") as handle:
        handle.write(b"\x00" * FILE_HEADER.itemsize)
        handle.write(dsp.tobytes() + events.tobytes() + slow.tobytes())
        handle.write(block(4, clock(0), 258, 0, np.zeros(0, np.int16)))
        counts["ev"][258] += 1
        edges = sorted({*range(0, n_samples, block_samples), *(at for at, _ in pauses if 0 < at < n_samples)})
        for k, (s0, s1) in enumerate(zip(edges, [*edges[1:], n_samples])):
            window = np.asarray(traces[s0:s1])
            for c in range(n_channels if with_wideband else 0):
                handle.write(block(5, clock(s0), c, 0, window[:, c]))
            if decimation:
                j0, j1 = -(-s0 // decimation), -(-s1 // decimation)
                if j1 > j0:
                    picks = np.asarray(traces[j0 * decimation : (j1 - 1) * decimation + 1 : decimation])
                    for c in range(n_channels):
                        handle.write(block(5, clock(j0 * decimation), n_channels + c, 0, picks[:, c]))
            for t in range(-(-max(s0, pre_threshold) // spike_interval) * spike_interval, s1, spike_interval):
                if n_dsp and t + wave_words - pre_threshold <= n_samples:
                    channel = (t // spike_interval) % n_dsp
                    snippet = np.asarray(traces[t - pre_threshold : t - pre_threshold + wave_words, channel])
                    handle.write(block(1, clock(t), channel + 1, 1, snippet))
                    if channel + 1 < 130:
                        counts["ts"][(channel + 1) * 5 + 1] += 1
            handle.write(block(4, clock(s0), 257, k & 0x7FFF, np.zeros(0, np.int16)))
            counts["ev"][257] += 1
        for i in range(n_channels + n_fp):  # Plexon keeps continuous sample counts from EVCounts[300]
            if 300 + i < 512:
                total = (n_samples if with_wideband else 0) if i < n_channels else len(range(0, n_samples, decimation))
                counts["ev"][300 + i] = total
        h["TSCounts"], h["WFCounts"], h["EVCounts"] = counts["ts"], counts["ts"], counts["ev"]
        handle.seek(0)
        handle.write(file_header.tobytes())
    if write_probe_json:
        _write_probe_json(
            path.with_suffix(".probe.json"), np.asarray(positions_um, float), list(range(n_channels)), shanks
        )
    return folder


def _write_probe_json(path: Path, positions: np.ndarray, channels: list[int], shanks: list[str]) -> None:
    import probeinterface as pi

    probe = pi.Probe(ndim=2, si_units="um")
    probe.set_contacts(positions=positions, shapes="square", shape_params={"width": 12})
    probe.set_device_channel_indices(np.asarray(channels))
    if len(set(shanks)) > 1:
        probe.set_shank_ids(np.asarray(shanks, dtype=str))
    pi.write_probeinterface(path, probe)

"""Open Ephys binary format: ``structure.oebin`` + ``continuous/<stream>/continuous.dat``.

Nesting as the GUI writes it (any level may be the session folder)::

    <YYYY-MM-DD_HH-MM-SS>/Record Node 101/settings.xml            (settings_<E>.xml for experiment E > 1)
                         /Record Node 101/experiment<E>/recording<R>/structure.oebin
                                                                  /continuous/<stream>/continuous.dat

``continuous.dat`` is interleaved int16 over all channels of the stream; ``bit_volts`` (µV per bit for
ephys channels) comes from the oebin. Which streams are probes (one partition each):

* Each wideband ephys stream is a probe: a Neuropixels AP stream (GUI 0.6+/1.0 ``ProbeA-AP`` or ``ProbeA``
  is named ``ProbeA``: ``-AP`` stripped), a Quad Base shank stream (``ProbeC-1``), an acquisition board /
  Intan stream. GUI 0.5.x writes no stream names: the probe is named by its folder (``Neuropix-PXI-100.0``).
  Its AP/LFP streams are told apart by rate; the Neuropix-PXI plugin numbers sub-processors probe after
  probe, AP then LFP for parts with an LFP band (NP1.0 family; NP2.0: AP only), so ``.0``/``.1`` are probe
  0's AP/LFP for NP1.0 but probes 0 and 1 for NP2.0. The probes' parts in settings.xml give the mapping to
  probeinterface's probe ``<nodeId>.<k>`` (without settings.xml: the rank among the AP streams).
* An acquisition-board stream whose ephys channels carry several headstage prefixes (``A1-CH1``,
  ``B1-CH1``; see ``HEADSTAGE_PREFIX``) is one probe per headstage: ``<stream>-A1``, ``<stream>-B1``.
* NI-DAQ, ADC / analog-input, LFP, sync-only and slow (< 10 kHz) streams are skipped and listed in
  ``ProbeListing.skipped`` with the reason. ADC/AUX/SYNC channels inside a probe stream are not sorted.

Record Nodes are recognised by their content, not by a spelling: the folder holding ``experiment<E>/`` is a
Record Node when its oebin says a Record Node recorded the streams (``recorded_processor``) or its name is one the
GUI wrote (``Record Node 103``; ``RecordNode103`` in GUI 0.5.x; ``Record_Node_101`` in copies); its id is the
name's number, else the oebin's ``recorded_processor_id``. Without either it is a GUI <= 0.4 run folder. When
several Record Nodes hold the same stream (same ``folder_name``), their copies are never mixed: the lowest-numbered
node whose data files are present is used, the others are listed as skipped with why (and the copy's processing
history when it differs, e.g. after a bandpass filter); ``details["record_node"]`` names the one used.

Experiments and recordings follow SpikeInterface's model (experiment = block, recording = segment):
the recordings of one experiment are one probe partition, concatenated in ``recording<R>`` order (the
GUI starts a new recording when recording is toggled with acquisition running, so the probe, its settings
and the channel list are unchanged; a mismatch is refused). Each experiment (acquisition restarted,
possibly with other settings) is its own partition; when the folder holds more than one experiment, every
probe name gets ``-e<E>`` (``ProbeA-e1``, ``ProbeA-e2``; ``-<run folder>-e<E>`` when the session folder holds
several GUI run folders). Several recordings are read chunk by chunk across the files (``zero_copy_path`` is
None then); they are laid out on the acquisition clock by their first sample numbers (``sample_numbers.npy``, or
GUI 0.5.x's integer ``timestamps.npy``): a gap is zero-filled up to ``max_gap_fill_s`` (longer: refused with the
fix), an overlap skipped, a recording wholly inside the one before (a duplicate) refused (core/timeline.py). With
``"split_segments": true`` each recording is its own partition instead, ``<probe>-r<R>`` after its
``recording<R>`` folder (``ProbeA-r1``, ``ProbeA-r2``; ``ProbeA-e2-r1`` in experiment 2).

Geometry comes from the experiment's settings.xml: probeinterface's ``read_openephys_neuropixels`` (the
catalogue probe sliced to the recorded electrodes, Channel Map and channel subsets applied, as SpikeInterface
does). Where probeinterface cannot match the plugin's per-channel ``ELECTRODE_XPOS``/``ELECTRODE_YPOS`` to the
catalogue of a part it knows (the plugin 0.6.x wrote NP1100 rows 48 µm apart instead of 6 µm, so probeinterface
refuses it), the electrodes are read on the plugin's own grid and placed at the catalogue's positions;
``details["probe_geometry_disagreement"]`` says what disagreed. Only a part outside the catalogue keeps the
plugin's positions. A channel without an electrode in settings.xml (an NP1.0 reference channel such as CH191) is
not sorted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from probeinterface import Probe

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats.base import (
    HeaderFiles,
    MissingDate,
    ProbeListing,
    ReadOptions,
    RecordingPartitions,
    RecordingSource,
    timeline_reader,
)
from ks_platform.core.timeline import FilePlacement, lay_out

FORMAT = "openephys"
#: Channel-name markers of non-ephys channels (Intan aux/ADC inputs, Neuropixels sync line).
NON_EPHYS_MARKERS = ("ADC", "AUX", "SYNC")
#: Headstage prefix of acquisition-board channel names (``A1-CH1``, ``B2_CH7``, ``C1-5``).
HEADSTAGE_PREFIX = re.compile(r"^([A-H][1-2])[-_]")
#: Streams sampled slower than this (Neuropixels LFP at 2.5 kHz, IMU, memory monitor) are not sorted.
MIN_WIDEBAND_RATE = 10_000.0
_UNIT_TO_UV = {"": 1.0, "uv": 1.0, "µv": 1.0, "microvolts": 1.0, "mv": 1e3, "millivolts": 1e3, "v": 1e6, "volts": 1e6}
_SETTINGS_DATE_FORMATS = ("%d %b %Y %H:%M:%S", "%d %B %Y %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")
_FOLDER_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})_\d{2}-\d{2}-\d{2}")
#: A Record Node folder name in any spelling the GUI used: ``Record Node 103``, ``RecordNode103``, ``Record_Node_101``.
NODE_NAME = re.compile(r"^record[ _-]*node[ _-]*(\d+)", re.IGNORECASE)
_NUMBERED = {"experiment": re.compile(r"^experiment(\d+)$"), "recording": re.compile(r"^recording(\d+)$")}
_RESTORE = "restore the structure.oebin the GUI wrote"

_ADC_STREAM = re.compile(r"(^|[-_. ])ADC\b|ANALOGIN|ANALOGIO")
_LFP_STREAM = re.compile(r"LFP|-LF\b")
_AUX_STREAM = re.compile(r"DIGITAL|MEMORYMONITOR|BNO055|TTL")


def _label(entry: dict) -> str:
    """Stream name, folder and source processor, upper case (what the skip rules look at)."""
    return f"{entry.get('stream_name', '')} {entry.get('folder_name', '')} {entry.get('source_processor_name', '')}".upper()


def _stream_text(entry: dict) -> str:
    return str(entry.get("stream_name") or entry.get("folder_name", "")).upper()


def _rate_or_none(entry: dict) -> float | None:
    try:
        rate = float(entry.get("sample_rate"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return rate if math.isfinite(rate) else None


def _sync_only(entry: dict) -> bool:
    channels = _channel_list(entry)
    return bool(channels) and not any(is_ephys_channel(c) for c in channels)


#: ``(test, why)`` for streams that are not probes, checked in order; the first match names the reason. A stream
#: with an invalid rate or no channels is not skipped: open_recording reports the bad value.
SKIP_RULES: tuple[tuple[Callable[[dict], bool], str], ...] = (
    (lambda e: "NI-DAQ" in _label(e), "NI-DAQ analog inputs, not a probe"),
    (lambda e: _ADC_STREAM.search(_stream_text(e)) is not None, "ADC / analog inputs, not a probe"),
    (lambda e: _LFP_STREAM.search(_label(e)) is not None, "LFP band, not sorted"),
    (lambda e: _AUX_STREAM.search(_label(e)) is not None, "digital / auxiliary data, not a probe"),
    (_sync_only, "sync / ADC / AUX channels only, not a probe"),
    (
        lambda e: 0 < (_rate_or_none(e) or 0) < MIN_WIDEBAND_RATE,
        "sampled below 10 kHz (LFP band or slow data), not sorted",
    ),
)


def find_files(session_dir: Path) -> list[Path]:
    """The ``structure.oebin`` files under the session folder (one per recording)."""
    return sorted(p for p in session_dir.rglob("structure.oebin") if p.is_file())


def is_ephys_channel(channel: dict) -> bool:
    """Neural channels: not named ADC/AUX/SYNC and not in volts."""
    name = str(channel.get("channel_name", "")).upper()
    units = str(channel.get("units", "")).strip().lower()
    return not any(marker in name for marker in NON_EPHYS_MARKERS) and units not in ("v", "volts")


def _channel_list(entry: dict) -> list[dict]:
    channels = entry.get("channels")
    return [c for c in channels if isinstance(c, dict)] if isinstance(channels, list) else []


def _load_oebin(path: Path, headers: HeaderFiles | None = None) -> dict:
    try:
        payload = json.loads((headers.read(path) if headers is not None else path.read_bytes()).decode("utf-8"))
    except PermissionError:
        raise  # reported by formats.open_recording with the permission fix
    except json.JSONDecodeError as exc:
        raise SessionInputError(
            path,
            f"structure.oebin is not valid JSON ({exc.msg} at line {exc.lineno})",
            "copy structure.oebin again from the acquisition computer",
        ) from None
    except UnicodeDecodeError as exc:
        raise SessionInputError(
            path,
            f"structure.oebin is not UTF-8 text ({exc.reason} at byte {exc.start})",
            "copy structure.oebin again from the acquisition computer",
        ) from None
    except RecursionError:
        raise SessionInputError(
            path,
            "structure.oebin is JSON nested too deeply to be an Open Ephys structure file",
            "copy structure.oebin again from the acquisition computer",
        ) from None
    except OSError as exc:
        raise SessionInputError(
            path,
            f"cannot read structure.oebin ({exc.strerror or exc})",
            "check the file's permissions and copy it again",
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("continuous"), list):
        raise SessionInputError(
            path,
            "structure.oebin has no 'continuous' stream list",
            "copy structure.oebin again from the acquisition computer",
        )
    return payload


# --------------------------------------------------------------------------------------------- folder scan


@dataclass(frozen=True)
class _Segment:
    """One stream of one recording: an oebin ``continuous`` entry and where it lies."""

    oebin: Path
    index: int
    entry: dict = field(compare=False, repr=False)
    #: Every ``continuous`` entry of the same oebin (the stream's siblings), as read once.
    siblings: tuple = field(compare=False, repr=False)
    gui_version: str
    node: str
    node_id: int
    run: str
    experiment: int
    recording: int

    @property
    def folder(self) -> str:
        return str(self.entry.get("folder_name", "")).strip("/")

    @property
    def data_path(self) -> Path:
        return self.oebin.parent / "continuous" / self.folder / "continuous.dat"

    @property
    def where(self) -> str:
        return "/".join(p for p in (self.node, f"experiment{self.experiment}", f"recording{self.recording}") if p)


@dataclass
class _Plan:
    """A probe: its segments (recordings of one experiment, in order) and its channels when a headstage group."""

    segments: list[_Segment]
    group: str = ""
    group_channels: tuple[int, ...] | None = None
    other_nodes: tuple[str, ...] = ()


def _number(path: Path, kind: str) -> int:
    match = _NUMBERED[kind].match(path.name)
    return int(match.group(1)) if match else 1


def names_record_node(folder: Path, headers: HeaderFiles | None = None) -> bool:
    """Whether ``folder/settings.xml`` has a Record Node processor (GUI >= 0.5; GUI <= 0.4 recorded without them)."""
    settings = folder / "settings.xml"
    try:
        root = _parse_settings(settings, headers) if settings.is_file() else None
    except (ET.ParseError, OSError):
        return False
    return root is not None and any(
        p.attrib.get("name", "").endswith("Record Node") or p.attrib.get("pluginName") == "Record Node"
        for p in root.iter("PROCESSOR")
    )


def node_id(name: str) -> int | None:
    """The number of a Record Node folder named in any spelling the GUI used (None: not named like one)."""
    match = NODE_NAME.match(name)
    return int(match.group(1)) if match else None


def _node_folder(container: Path, entries: list, headers: HeaderFiles | None = None) -> tuple[str, int] | None:
    """``(name, id)`` when ``container`` (the folder holding ``experiment<E>/``) is a Record Node, recognised by its
    content: the oebin says a Record Node recorded the streams (``recorded_processor``), its settings.xml has a
    Record Node processor, or it is named like one in any spelling the GUI used (``Record Node 103``,
    ``RecordNode103`` of GUI 0.5.x, ``Record_Node_101``). The id is the folder name's number, else the oebin's
    ``recorded_processor_id`` (-1 without either). None: a GUI <= 0.4 run folder (experiments without Record
    Nodes)."""
    recorded = [
        e for e in entries if isinstance(e, dict) and "record node" in str(e.get("recorded_processor", "")).lower()
    ]
    named = node_id(container.name)
    if named is not None:
        return container.name, named
    if not recorded and not names_record_node(container, headers):
        return None
    ids = {e.get("recorded_processor_id") for e in recorded}
    only = next(iter(ids)) if len(ids) == 1 else None
    return container.name, only if isinstance(only, int) and not isinstance(only, bool) else -1


def _segments(session_dir: Path, headers: HeaderFiles | None = None) -> list[_Segment]:
    segments = []
    for oebin in find_files(session_dir):
        payload = _load_oebin(oebin, headers)
        recording_dir, experiment_dir = oebin.parent, oebin.parent.parent
        container = experiment_dir.parent if _NUMBERED["experiment"].match(experiment_dir.name) else None
        node = _node_folder(container, payload["continuous"], headers) if container is not None else None
        run_dir = (container.parent if node is not None else container) if container is not None else None
        run = (
            str(run_dir.relative_to(session_dir))
            if run_dir is not None and (run_dir == session_dir or session_dir in run_dir.parents)
            else ""
        )
        for index, entry in enumerate(payload["continuous"]):
            if isinstance(entry, dict):
                segments.append(
                    _Segment(
                        oebin=oebin,
                        index=index,
                        entry=entry,
                        siblings=tuple(e for e in payload["continuous"] if isinstance(e, dict)),
                        gui_version=str(payload.get("GUI version", "")),
                        node=node[0] if node is not None else "",
                        node_id=node[1] if node is not None else -1,
                        run="" if run == "." else run,
                        experiment=_number(experiment_dir, "experiment"),
                        recording=_number(recording_dir, "recording"),
                    )
                )
    return segments


def skip_reason(entry: dict) -> str | None:
    """Why an oebin ``continuous`` entry is not a probe (None: it is one)."""
    return next((why for test, why in SKIP_RULES if test(entry)), None)


def stream_probe_name(entry: dict) -> str:
    """``ProbeA`` for ``ProbeA-AP``/``ProbeA``; the folder name when the GUI (0.5.x) wrote no stream name."""
    name = str(entry.get("stream_name") or "").strip()
    if not name:
        return str(entry.get("folder_name", "")).strip("/") or "probe"
    return re.sub(r"-AP$", "", name) or name


def headstage_groups(channels: list[dict]) -> dict[str, tuple[int, ...]]:
    """Ephys channel indices by headstage prefix (``A1``, ``B1``…); empty unless every ephys channel has one."""
    groups: dict[str, list[int]] = {}
    for i, channel in enumerate(channels):
        if is_ephys_channel(channel):
            match = HEADSTAGE_PREFIX.match(str(channel.get("channel_name", "")))
            if match is None:
                return {}
            groups.setdefault(match.group(1), []).append(i)
    return {prefix: tuple(idx) for prefix, idx in groups.items()}


def _has_data(segments: list[_Segment]) -> bool:
    return all(s.data_path.is_file() for s in segments)


def _scan(session_dir: Path, headers: HeaderFiles | None = None) -> tuple[dict[str, _Plan], tuple[str, ...]]:
    """Probe plans by name and the skipped streams (see the module docstring for the rules)."""
    skipped: dict[str, None] = {}
    by_stream: dict[tuple[str, int, str], dict[tuple[int, str], list[_Segment]]] = {}
    for segment in _segments(session_dir, headers):
        why = skip_reason(segment.entry)
        if why is not None:
            skipped[f"{segment.folder or segment.oebin}: {why}"] = None
            continue
        key = (segment.run, segment.experiment, segment.folder)
        by_stream.setdefault(key, {}).setdefault((segment.node_id, segment.node), []).append(segment)
    chosen: dict[tuple[str, int, str], _Plan] = {}
    for key, nodes in by_stream.items():
        ordered = sorted(nodes)
        used = next((n for n in ordered if _has_data(nodes[n])), ordered[0])
        others = [node for node in ordered if node != used]
        for other in others:
            why = f"also recorded by {used[1]}, which is used (the lowest-numbered Record Node with the data)"
            skipped[f"{other[1]}/{key[2]}: {why}{_history_note(nodes[other][0], nodes[used][0])}"] = None
        plan_segments = sorted(nodes[used], key=lambda s: (s.recording, str(s.oebin)))
        chosen[key] = _Plan(plan_segments, other_nodes=tuple(name for _, name in others))
    return _name_plans(chosen), tuple(skipped)


def _history_note(copy: _Segment, used: _Segment) -> str:
    """How the skipped copy was processed, when its channels' ``history`` differs from the used one's."""

    def history(segment: _Segment) -> str:
        return str((_channel_list(segment.entry) or [{}])[0].get("history") or "")

    return f" (this copy's history: {history(copy)})" if history(copy) not in ("", history(used)) else ""


def _name_plans(chosen: dict[tuple[str, int, str], _Plan]) -> dict[str, _Plan]:
    """Probe names: the stream's (folder on a clash within an experiment), ``-e<E>`` when there are several."""
    blocks = sorted({(run, experiment) for run, experiment, _ in chosen})
    runs = {run for run, _ in blocks}
    plans: dict[str, _Plan] = {}
    for run, experiment in blocks:
        block = {folder: plan for (r, e, folder), plan in chosen.items() if (r, e) == (run, experiment)}
        base = {folder: stream_probe_name(plan.segments[0].entry) for folder, plan in block.items()}
        for folder, plan in sorted(block.items()):
            name = folder if list(base.values()).count(base[folder]) > 1 else base[folder]
            if len(blocks) > 1:
                name += f"-e{experiment}" if len(runs) == 1 else f"-{Path(run).name}-e{experiment}"
            groups = headstage_groups(_channel_list(plan.segments[0].entry))
            if len(groups) < 2:
                plans[name] = plan
                continue
            for prefix, channels in groups.items():
                plans[f"{name}-{prefix}"] = _Plan(plan.segments, prefix, channels, plan.other_nodes)
    return plans


# --------------------------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class _Facts:
    """Validated facts of one segment."""

    n_channels: int
    n_samples: int
    sampling_frequency: float
    channel_names: tuple[str, ...]
    first_sample: int | None
    count_file: Path | None


def _bad(path: Path, problem: str) -> SessionInputError:
    return SessionInputError(path, problem, _RESTORE)


def _positive_number(value: object, path: Path, key: str) -> float:
    """``value`` as a finite number > 0, else an error naming ``path`` and ``key``."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _bad(path, f"{key}={value!r} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise _bad(path, f"{key}={value!r} must be a finite number > 0")
    return number


def _entry_key(segment: _Segment, key: str) -> str:
    return f"continuous[{segment.index}] ({segment.folder or '?'}) {key}"


def _check_entry(segment: _Segment) -> tuple[list[dict], float]:
    entry, path = segment.entry, segment.oebin
    if not segment.folder:
        raise _bad(path, f"{_entry_key(segment, 'folder_name')} is empty")
    channels = _channel_list(entry)
    if not channels:
        raise _bad(path, f"{_entry_key(segment, 'channels')} lists no channels")
    declared = entry.get("num_channels", len(channels))
    if (
        isinstance(declared, bool)
        or not isinstance(declared, (int, float, str))
        or str(declared).strip() != str(len(channels))
    ):
        raise _bad(path, f"{_entry_key(segment, 'num_channels')}={declared!r} but {len(channels)} channels are listed")
    if "sample_rate" not in entry:
        raise _bad(path, f"{_entry_key(segment, 'sample_rate')} is missing")
    return channels, _positive_number(entry["sample_rate"], path, _entry_key(segment, "sample_rate"))


def _check_data(segment: _Segment, n_channels: int) -> tuple[int, int | None, Path | None]:
    data_path = segment.data_path
    if not data_path.is_file():
        raise SessionInputError(
            data_path,
            "the continuous data file is missing",
            "copy the whole recording folder (continuous/<stream>/continuous.dat) from the acquisition computer",
        )
    size = data_path.stat().st_size
    if size == 0:
        raise SessionInputError(
            data_path, "the data file is empty (0 bytes)", "copy the recording again from the acquisition computer"
        )
    frame = 2 * n_channels
    if size % frame:
        raise SessionInputError(
            data_path,
            f"size {size} bytes is not a multiple of {n_channels} channels x 2 bytes (truncated copy, or structure.oebin lists the wrong channels)",
            "copy continuous.dat again completely, or use the structure.oebin that belongs to it",
        )
    n_samples = size // frame
    count_file = next(
        (data_path.parent / n for n in ("sample_numbers.npy", "timestamps.npy") if (data_path.parent / n).is_file()),
        None,
    )
    first = None
    if count_file is not None:
        try:
            numbers = np.load(count_file, mmap_mode="r")
            listed = int(numbers.shape[0])
            first = int(numbers[0]) if listed and numbers.dtype.kind in "iu" else None
        except (ValueError, OSError, IndexError) as exc:
            raise SessionInputError(
                count_file, f"cannot read the sample index ({exc})", "copy the recording folder again"
            ) from None
        if listed != n_samples:
            raise SessionInputError(
                data_path,
                f"holds {n_samples} samples of the {n_channels} channels listed in structure.oebin, but {count_file.name} lists {listed} samples (truncated copy, or the oebin's channel list does not match the data)",
                "copy continuous.dat again completely, or use the structure.oebin that belongs to it",
            )
    return n_samples, first, count_file


def _segment_facts(segment: _Segment) -> _Facts:
    channels, fs = _check_entry(segment)
    n_samples, first, count_file = _check_data(segment, len(channels))
    names = tuple(str(c.get("channel_name", "")) for c in channels)
    return _Facts(len(channels), n_samples, fs, names, first, count_file)


def _stream_scale(segment: _Segment, channels: list[dict], sorting: tuple[int, ...]) -> float:
    """µV per bit of the sorted channels (one value: Kilosort takes one gain)."""
    values = []
    for i in sorting:
        channel = channels[i]
        units = str(channel.get("units", "")).strip().lower()
        key = _entry_key(segment, f"channels[{i}] ({channel.get('channel_name')!r})")
        if units not in _UNIT_TO_UV:
            raise _bad(segment.oebin, f"{key} units={units!r} is not a known unit (µV, mV, V)")
        values.append(
            _positive_number(channel.get("bit_volts"), segment.oebin, f"{key} bit_volts") * _UNIT_TO_UV[units]
        )
    if not np.allclose(values, values[0], rtol=1e-6):
        raise SessionInputError(
            segment.oebin,
            f"the ephys channels of {segment.folder} have different bit_volts ({min(values):g}..{max(values):g} µV)",
            "record all ephys channels of the stream with one gain",
        )
    return float(values[0])


def _check_same(first: _Segment, facts0: _Facts, segment: _Segment, facts: _Facts) -> None:
    differs = [
        what
        for what, same in (
            ("sample_rate", facts.sampling_frequency == facts0.sampling_frequency),
            ("channels", facts.channel_names == facts0.channel_names),
        )
        if not same
    ]
    if differs:
        raise SessionInputError(
            segment.oebin,
            f"{segment.where} of {segment.folder} differs from {first.where} in {', '.join(differs)}, so the recordings cannot be sorted as one",
            "move the differing recording folder to a session folder of its own",
        )


# --------------------------------------------------------------------------------------------- settings.xml


def _settings_file(segment: _Segment, session_dir: Path) -> Path | None:
    """``settings.xml`` (experiment 1) or ``settings_<E>.xml`` in the Record Node folder (else settings.xml),
    when that folder lies inside the session folder."""
    node_dir = segment.oebin.parent.parent.parent
    if node_dir != session_dir and session_dir not in node_dir.parents:
        return None
    names = ["settings.xml"] if segment.experiment == 1 else [f"settings_{segment.experiment}.xml", "settings.xml"]
    return next((node_dir / n for n in names if (node_dir / n).is_file()), None)


def _parse_settings(path: Path, headers: HeaderFiles | None = None) -> ET.Element:
    """settings.xml's root element, its bytes read through ``headers`` when given (once per scan)."""
    try:
        return ET.fromstring(headers.read(path)) if headers is not None else ET.parse(path).getroot()
    except PermissionError:
        raise  # reported by formats.open_recording with the permission fix
    except (ET.ParseError, OSError) as exc:
        raise SessionInputError(
            path,
            f"settings.xml is not readable XML ({exc})",
            "copy settings.xml again from the acquisition computer, or remove it (the probe must then come from a probe file)",
        ) from None


def _settings_date(root: ET.Element) -> dt.date | None:
    text = (root.findtext("INFO/DATE") or "").strip()
    for fmt in _SETTINGS_DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def _recording_date(
    root: ET.Element | None, recording_dir: Path, session_dir: Path
) -> tuple[dt.date | None, str, MissingDate | None]:
    """Date from settings.xml ``<INFO><DATE>``, else the GUI's ``YYYY-MM-DD_HH-MM-SS`` folder; never a file's
    modification time (None and why otherwise: the session config may give it)."""
    if root is not None and (date := _settings_date(root)) is not None:
        return date, "settings.xml INFO/DATE", None
    for folder in (recording_dir, *recording_dir.parents):
        if folder == session_dir.parent:
            break
        match = _FOLDER_DATE.match(folder.name)
        if match:
            try:
                return dt.date.fromisoformat(match.group(1)), f"folder name {folder.name!r}", None
            except ValueError:
                pass
    missing = MissingDate(
        recording_dir / "structure.oebin",
        "no settings.xml with <INFO><DATE>, no YYYY-MM-DD_hh-mm-ss folder of the Open Ephys GUI",
        "copy the settings.xml the GUI wrote next to the experiment folders (or keep its dated recording folder)",
    )
    return None, "ks_session.json recording_date", missing


def has_lf_band(part_number: str) -> bool:
    """Whether a Neuropixels part has a separate LFP band (probeinterface's catalogue; NP1.0 family otherwise)."""
    try:
        from probeinterface.neuropixels_tools import _load_np_probe_features

        features = _load_np_probe_features()["neuropixels_probes"].get(part_number)
    except Exception:  # noqa: BLE001 - a private probeinterface helper: fall back to the part-number rule
        features = None
    if features is not None:
        return float(features.get("lf_sample_frequency_hz") or 0) > 0
    return part_number.startswith(("PRB_1", "NP1"))


def _sub_idx(entry: dict) -> int | None:
    sub = entry.get("source_processor_sub_idx")
    if isinstance(sub, int) and not isinstance(sub, bool):
        return sub
    match = re.search(r"\.(\d+)/?$", str(entry.get("folder_name", "")))
    return int(match.group(1)) if match else None


def _legacy_ap_subprocessors(root: ET.Element) -> dict[int, int]:
    """GUI 0.5.x Neuropix-PXI: AP sub-processor index -> probe index. The plugin numbers each enabled probe's
    AP band, then its LFP band when the part has one (NP1.0 family), probe after probe."""
    table: dict[int, int] = {}
    counter = 0
    for k, probe in enumerate(p for p in root.iter("NP_PROBE") if p.attrib.get("isEnabled", "1") != "0"):
        table[counter] = k
        part = probe.attrib.get("probe_part_number") or probe.attrib.get("probePartNumber") or ""
        counter += 2 if has_lf_band(part) else 1
    return table


def legacy_probe_index(segment: _Segment, siblings: list[dict], root: ET.Element | None = None) -> int | None:
    """GUI 0.5.x: which probe of its processor this AP stream is (probeinterface's ``<nodeId>.<k>``): from the
    sub-processor index and the probes in settings.xml, else its rank among the processor's AP streams."""
    if segment.entry.get("stream_name"):
        return None
    sub = _sub_idx(segment.entry)
    table = _legacy_ap_subprocessors(root) if root is not None else {}
    if sub is not None and sub in table:
        return table[sub]
    processor = segment.entry.get("source_processor_id")
    ap = [e for e in siblings if e.get("source_processor_id") == processor and skip_reason(e) is None]
    ap.sort(key=lambda e: (_sub_idx(e) if _sub_idx(e) is not None else 1 << 30, str(e.get("folder_name"))))
    folders = [str(e.get("folder_name")) for e in ap]
    folder = str(segment.entry.get("folder_name"))
    return folders.index(folder) if folder in folders else None


def _contact_probe(positions: np.ndarray, channels: tuple[int, ...], shank_ids: list[str] | None, name: str) -> Probe:
    probe = Probe(ndim=2, si_units="um", name=name)
    probe.set_contacts(positions=np.asarray(positions, dtype=float), shapes="square", shape_params={"width": 12})
    probe.set_device_channel_indices(np.asarray(channels, dtype=int))
    if shank_ids is not None and len(set(shank_ids)) > 1:
        probe.set_shank_ids(np.asarray(shank_ids, dtype=str))
    return probe


def _np_probe_element(root: ET.Element, probe_key: str, legacy_index: int | None) -> ET.Element | None:
    """The enabled ``NP_PROBE`` of the stream: the only one, by custom name, or by the order of its streams."""
    probes = [p for p in root.iter("NP_PROBE") if p.attrib.get("isEnabled", "1") != "0"]
    if len(probes) <= 1:
        return probes[0] if probes else None
    if legacy_index is not None:
        return probes[legacy_index] if legacy_index < len(probes) else None
    for probe in probes:
        if probe_key and probe_key in (probe.attrib.get("custom_probe_name"), probe.attrib.get("probe_serial_number")):
            return probe
    for processor in root.iter("PROCESSOR"):
        if probes[0] in list(processor.iter("NP_PROBE")):
            streams: list[str] = []
            for stream in processor.findall("STREAM"):
                name = re.sub(r"-(AP|LFP)$", "", stream.attrib.get("name", ""))
                if "ADC" not in name and name not in streams:
                    streams.append(name)
            if probe_key in streams and streams.index(probe_key) < len(probes):
                return probes[streams.index(probe_key)]
    return None


def _finite_attr(element: ET.Element, key: str, settings: Path) -> float:
    value = element.attrib[key]
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise SessionInputError(
            settings,
            f"NP_PROBE {element.tag} {key}={value!r} is not a finite number",
            "copy settings.xml again from the acquisition computer",
        )
    return number


def _positions_from_np_probe(
    element: ET.Element, settings: Path
) -> tuple[np.ndarray, list[str] | None, list[str]] | None:
    """Per-channel ``ELECTRODE_XPOS``/``ELECTRODE_YPOS`` (µm), shank ids from ``CHANNELS`` ("bank:shank"), keys."""
    xpos, ypos = element.find("ELECTRODE_XPOS"), element.find("ELECTRODE_YPOS")
    if xpos is None or ypos is None:
        return None
    keys = sorted((k for k in xpos.attrib if re.fullmatch(r"CH\d+", k)), key=lambda k: int(k[2:]))
    if not keys or any(k not in ypos.attrib for k in keys):
        return None
    positions = np.array([[_finite_attr(xpos, k, settings), _finite_attr(ypos, k, settings)] for k in keys])
    channels = element.find("CHANNELS")
    shanks = None
    if channels is not None and all(":" in channels.attrib.get(k, "") for k in keys):
        shanks = [channels.attrib[k].split(":")[1] for k in keys]
    return positions, shanks, keys


def _probeinterface_probe(settings: Path, folder: str, legacy_index: int | None, processor_id: object) -> Probe | None:
    """probeinterface's probe for the stream (as SpikeInterface selects it), or None where it cannot say."""
    import probeinterface as pi

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if legacy_index is not None:
                return pi.read_openephys_neuropixels(
                    settings, probe_name=f"{processor_id}.{legacy_index}", raise_error=False
                )
            if not pi.has_neuropixels_probes(settings, stream_name=folder):
                return None
            return pi.read_openephys_neuropixels(settings, stream_name=folder, raise_error=False)
    except Exception:  # noqa: BLE001 - probeinterface raises many kinds on files it does not know; use the plugin's positions
        return None


def wire_contacts(n_contacts: int, keys: object, ephys: tuple[int, ...]) -> tuple[int, ...] | None:
    """The stored channel of each contact: the ephys channels in order when the counts agree; else, when
    settings.xml lists fewer electrodes than channels (an NP1.0 reference channel such as CH191 has none), the
    ephys channel each ``CH<i>`` key names. None when neither applies."""
    if n_contacts == len(ephys):
        return ephys
    if keys is None or len(keys) != n_contacts or n_contacts > len(ephys):  # type: ignore[arg-type]
        return None
    numbers = [int(k[2:]) if re.fullmatch(r"CH\d+", str(k)) else -1 for k in keys]  # type: ignore[union-attr]
    if len(set(numbers)) != len(numbers) or not all(0 <= i < len(ephys) for i in numbers):
        return None
    return tuple(ephys[i] for i in numbers)


def _catalogue_features(part_number: str) -> dict | None:
    """probeinterface's catalogue entry of a Neuropixels part (None when it is not in the catalogue)."""
    try:
        from probeinterface.neuropixels_tools import _load_np_probe_features

        return _load_np_probe_features()["neuropixels_probes"].get(part_number)
    except Exception:  # noqa: BLE001 - a private probeinterface helper: no catalogue then
        return None


def _grid_unit(values: np.ndarray) -> float:
    """The largest step (µm, to 0.001) that every value is a whole multiple of (0 when all are 0)."""
    return math.gcd(*(int(round(abs(v) * 1000)) for v in values)) / 1000 if len(values) else 0.0


def _stagger(features: dict) -> float:
    """How far even rows sit right of odd rows (µm; NP1.0: 16)."""
    return float(features["even_row_horz_offset_left_edge_to_leftmost_electrode_center_um"]) - float(
        features["odd_row_horz_offset_left_edge_to_leftmost_electrode_center_um"]
    )


def _electrode_ids(
    positions: np.ndarray, shank_ids: np.ndarray | None, features: dict, scale: tuple[float, float]
) -> list[int] | None:
    """probeinterface's rule (``_parse_openephys_settings``) for the electrode under each plugin position, with the
    plugin's grid divided by ``scale`` (x, y) first; None when a position is off the catalogue's grid."""
    x_pitch, y_pitch = float(features["electrode_pitch_horz_um"]), float(features["electrode_pitch_vert_um"])
    columns, rows = int(features["cols_per_shank"]), int(features["rows_per_shank"])
    shank_pitch, stagger = float(features["shank_pitch_um"]), _stagger(features)
    shanks = shank_ids if shank_ids is not None else np.zeros(len(positions), dtype=int)
    ids = []
    for (x, y), shank in zip(positions / np.asarray(scale), shanks):
        row = y / y_pitch
        column = 0.0 if x_pitch == 0 else (x - (stagger if row % 2 == 0 else 0.0) - shank_pitch * shank) / x_pitch
        if scale == (1.0, 1.0):  # probeinterface's own rule truncates
            electrode = int(column + columns * row)
        elif not (math.isclose(row, round(row), abs_tol=1e-6) and math.isclose(column, round(column), abs_tol=1e-6)):
            return None
        else:
            electrode = int(round(column)) + columns * int(round(row))
        if not 0 <= column < max(columns, 1) or not 0 <= row < rows:
            return None
        ids.append(electrode)
    return ids


def catalogue_probe(
    element: ET.Element, settings: Path, root: ET.Element, ephys: tuple[int, ...]
) -> tuple[Probe, tuple[int, ...], str] | None:
    """The catalogue probe of an ``NP_PROBE`` whose part number probeinterface knows, from the plugin's
    ``ELECTRODE_XPOS/YPOS`` read on the plugin's own grid when they disagree with the catalogue (the Neuropix-PXI
    plugin 0.6.x wrote NP1100 rows 48 µm apart instead of 6 µm: probeinterface refuses it, issue 407): the contacts,
    wired to the stored channels, the channels to sort and what disagreed. None when it cannot be said."""
    part = element.attrib.get("probe_part_number") or element.attrib.get("probePartNumber") or ""
    features = _catalogue_features(part)
    parsed = _positions_from_np_probe(element, settings)
    if features is None or parsed is None:
        return None
    positions, shanks, keys = parsed
    positions = positions.copy()
    shank_ids = np.asarray([int(s) for s in shanks]) if shanks is not None else None
    shank_pitch = float(features["shank_pitch_um"])
    version = tuple(int(p) for p in re.findall(r"\d+", root.findtext("INFO/VERSION") or "")[:2])
    if shank_ids is not None and version and version < (0, 6):  # GUI 0.5.x added the shank pitch to y
        positions[:, 1] -= shank_pitch * shank_ids
    positions[:, 0] -= positions[:, 0].min() - (shank_pitch * shank_ids.min() if shank_ids is not None else 0.0)
    y_pitch = float(features["electrode_pitch_vert_um"])
    x_pitch = float(features["electrode_pitch_horz_um"])
    within = positions[:, 0] - (shank_pitch * shank_ids if shank_ids is not None else 0.0)
    plugin_x, plugin_y = _grid_unit(within - within.min()), _grid_unit(positions[:, 1])
    scales = [(1.0, 1.0)]
    if plugin_y and plugin_y != y_pitch:  # the plugin's rows on another pitch: read its grid in its own units
        staggered = _stagger(features) != 0
        scales.append((plugin_x / x_pitch if x_pitch and plugin_x and not staggered else 1.0, plugin_y / y_pitch))
    from probeinterface.neuropixels_tools import build_neuropixels_probe

    full = build_neuropixels_probe(part)
    index = {str(cid): i for i, cid in enumerate(full.contact_ids)}
    for scale in scales:
        ids = _electrode_ids(positions, shank_ids, features, scale)
        if ids is None:
            continue
        contact_ids = [
            f"s{s}e{e}" if shank_ids is not None and int(features["num_shanks"]) > 1 else f"e{e}"
            for s, e in zip(shank_ids if shank_ids is not None else [0] * len(ids), ids)
        ]
        if len(set(contact_ids)) != len(contact_ids) or not all(c in index for c in contact_ids):
            continue
        wired = wire_contacts(len(contact_ids), keys, ephys)
        if wired is None:
            return None
        probe = full.get_slice(np.asarray([index[c] for c in contact_ids]))
        probe.set_device_channel_indices(np.asarray(wired, dtype=int))
        probe.annotate(part_number=part)
        if scale == (1.0, 1.0):
            return probe, tuple(sorted(wired)), ""
        span = np.ptp(positions, axis=0)
        true_span = np.ptp(probe.contact_positions, axis=0)
        disagreement = (
            f"{settings.name} NP_PROBE {element.attrib.get('custom_probe_name') or part} ({part}): ELECTRODE_XPOS/YPOS "
            f"span {span[0]:g} x {span[1]:g} µm with rows {plugin_y:g} µm apart, probeinterface's {part} catalogue "
            f"{true_span[0]:g} x {true_span[1]:g} µm with rows {y_pitch:g} µm apart: the catalogue positions of the "
            "same electrodes are used"
        )
        return probe, tuple(sorted(wired)), disagreement
    return None


def probe_from_settings(
    settings: Path, root: ET.Element, segment: _Segment, ephys: tuple[int, ...], siblings: list[dict]
) -> tuple[Probe | None, str, tuple[int, ...], str]:
    """Probe geometry of the stream from settings.xml wired to stored channel indices, the note, the channels to sort
    (``ephys`` less any channel without an electrode) and what the plugin's positions disagreed with in
    probeinterface's catalogue ("" when nothing); ``(None, why, ephys, "")`` without geometry."""
    legacy = legacy_probe_index(segment, siblings, root)
    probe = _probeinterface_probe(settings, segment.folder, legacy, segment.entry.get("source_processor_id"))
    if probe is not None:
        wired = wire_contacts(probe.get_contact_count(), probe.contact_annotations.get("settings_channel_key"), ephys)
        if wired is not None:
            probe.set_device_channel_indices(np.asarray(wired, dtype=int))
            return probe, f"{settings.name} (probeinterface Neuropixels catalogue)", tuple(sorted(wired)), ""
    element = _np_probe_element(root, stream_probe_name(segment.entry), legacy)
    if element is None:
        return None, f"{settings.name} has no Neuropixels probe geometry for this stream", ephys, ""
    catalogue = catalogue_probe(element, settings, root, ephys)
    if catalogue is not None:
        probe, wired, disagreement = catalogue
        part = probe.annotations["part_number"]
        note = f"{settings.name} NP_PROBE electrodes at probeinterface's {part} catalogue positions"
        return (
            probe,
            note + (" (the plugin's ELECTRODE_XPOS/YPOS disagree)" if disagreement else ""),
            wired,
            disagreement,
        )
    parsed = _positions_from_np_probe(element, settings)
    if parsed is None:
        return None, f"{settings.name} NP_PROBE has no ELECTRODE_XPOS/ELECTRODE_YPOS", ephys, ""
    positions, shanks, keys = parsed
    wired = wire_contacts(len(positions), keys, ephys)
    if wired is None:
        return (
            None,
            f"{settings.name} lists {len(positions)} electrode positions for {len(ephys)} ephys channels",
            ephys,
            "",
        )
    name = element.attrib.get("custom_probe_name") or element.attrib.get("probe_name") or segment.folder
    return (
        _contact_probe(positions, wired, shanks, name),
        f"{settings.name} NP_PROBE ELECTRODE_XPOS/YPOS",
        tuple(sorted(wired)),
        "",
    )


# --------------------------------------------------------------------------------------------- reading


def _checked(plan: _Plan) -> tuple[list[_Facts], tuple[int, ...], float]:
    """Validate every segment and that they agree; the ephys channels to sort and their µV per bit."""
    first = plan.segments[0]
    facts = [_segment_facts(s) for s in plan.segments]
    for segment, fact in zip(plan.segments[1:], facts[1:]):
        _check_same(first, facts[0], segment, fact)
    channels = _channel_list(first.entry)
    ephys = tuple(i for i, c in enumerate(channels) if is_ephys_channel(c))
    sorting = tuple(i for i in ephys if plan.group_channels is None or i in plan.group_channels)
    scales = [_stream_scale(s, _channel_list(s.entry), sorting) for s in plan.segments]
    for segment, scale in zip(plan.segments[1:], scales[1:]):
        if not math.isclose(scale, scales[0], rel_tol=1e-6):
            raise SessionInputError(
                segment.oebin,
                f"{segment.where} of {first.folder} has bit_volts {scale:g} µV, {first.where} {scales[0]:g} µV, so the recordings cannot be sorted as one",
                "move the differing recording folder to a session folder of its own",
            )
    return facts, sorting, scales[0]


class Reading(RecordingPartitions):
    """One read of an Open Ephys session folder: every structure.oebin and settings.xml parsed once, the probe streams
    listed (see the module docstring) and each one opened from what was read."""

    def __init__(self, session_dir: Path) -> None:
        self.folder = session_dir
        self.headers = HeaderFiles()
        self.plans, skipped = _scan(session_dir, self.headers)
        probes = {name: tuple(s.data_path for s in plan.segments) for name, plan in self.plans.items()}
        self.listing = ProbeListing(probes, skipped)
        self._settings: dict[Path, ET.Element] = {}

    def settings_root(self, path: Path) -> ET.Element:
        if path not in self._settings:
            self._settings[path] = _parse_settings(path, self.headers)
        return self._settings[path]

    def _parts(self, probe: str) -> dict[str, _Plan]:
        plan = self.plans[probe]
        return {f"{probe}-r{s.recording}": dataclasses.replace(plan, segments=[s]) for s in plan.segments}

    def split(self, probe: str) -> dict[str, tuple[Path, ...]]:
        """One partition per recording of ``probe``, named ``<probe>-r<R>`` after its ``recording<R>`` folder
        (``ProbeA-r1``, ``ProbeA-r2``; ``ProbeA-e2-r1`` in experiment 2), each on its own first sample; for a session
        config that sets ``split_segments``."""
        return {name: (part.segments[0].data_path,) for name, part in self._parts(probe).items()}

    def open(self, name: str, options: ReadOptions = ReadOptions()) -> RecordingSource:
        """Describe one probe stream (or one recording of it, ``ProbeA-r2``): its recordings laid out on the
        acquisition clock by their first sample numbers."""
        base = self.base_probe(name) if name not in self.plans else None
        plan = self._parts(base)[name] if base is not None else self.plans[name]
        first = plan.segments[0]
        facts, sorting, uv_per_bit = _checked(plan)
        settings = _settings_file(first, self.folder)
        root = self.settings_root(settings) if settings is not None else None
        probe_obj, probe_note, disagreement = None, "no settings.xml", ""
        if settings is not None and root is not None:
            probe_obj, probe_note, sorting, disagreement = probe_from_settings(
                settings, root, first, sorting, list(first.siblings)
            )
        date, date_note, missing = _recording_date(root, first.oebin.parent, self.folder)
        placements = [
            FilePlacement(s.where, s.data_path, f.first_sample, f.n_samples) for s, f in zip(plan.segments, facts)
        ]
        timeline = tuple(lay_out(placements, facts[0].sampling_frequency, options.max_gap_fill_s))
        files = (p for s, f in zip(plan.segments, facts) for p in (s.data_path, s.oebin, f.count_file, settings))
        common: dict = {
            "format": FORMAT,
            "session_dir": self.folder,
            "data_files": tuple(dict.fromkeys(p for p in files if p is not None)),
            "sampling_frequency": facts[0].sampling_frequency,
            "recording_date": date,
            "missing_date": missing,
            "uv_per_bit": uv_per_bit,
            "probe": probe_obj,
            "probe_file": None,
            "scaling_note": f"bit_volts {uv_per_bit:g} µV/bit from structure.oebin ({first.folder}); probe: "
            f"{probe_note}; date: {date_note}",
            "probe_name": name,
            "timeline": timeline,
            "headers": self.headers,
            "details": _details(plan, self.listing.skipped, probe_note, disagreement),
        }
        n_channels = facts[0].n_channels
        if len(plan.segments) == 1:
            return RecordingSource.interleaved_int16(first.data_path, n_channels, facts[0].n_samples, sorting, **common)
        parts = [(s.data_path, n_channels, f.n_samples) for s, f in zip(plan.segments, facts)]
        return RecordingSource(
            **common,
            n_channels=n_channels,
            n_samples=timeline[-1].binary_start + timeline[-1].n_samples,
            source_dtype="int16",
            sorting_channels=sorting,
            read_chunk=timeline_reader(parts, timeline, sorting),
        )


def scan(session_dir: Path) -> Reading:
    """Read the folder's Open Ephys headers once."""
    return Reading(session_dir)


def list_probes(session_dir: Path) -> ProbeListing:
    """The folder's probe streams (reader only: no session config applied)."""
    return scan(session_dir).listing


def open_recording(
    session_dir: Path, probe: str | None = None, options: ReadOptions = ReadOptions()
) -> RecordingSource:
    """One probe stream as the files say (reader only: no session config applied; use formats.scan_session)."""
    reading = scan(session_dir)
    return reading.open(reading.listing.pick(probe, session_dir), options)


def _details(plan: _Plan, skipped: tuple[str, ...], probe_note: str, disagreement: str = "") -> dict[str, object]:
    first = plan.segments[0]
    details: dict[str, object] = {
        "openephys_stream": first.folder,
        "record_node": first.node,
        "experiment": first.experiment,
        "gui_version": first.gui_version,
        "recordings": [s.where for s in plan.segments],
        "skipped_streams": list(skipped),
        "probe_geometry": probe_note,
    }
    if disagreement:
        details["probe_geometry_disagreement"] = disagreement
    if plan.other_nodes:
        details["unused_record_nodes"] = list(plan.other_nodes)
    if plan.group:
        details["headstage"] = plan.group
    return details

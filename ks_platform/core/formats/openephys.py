"""Open Ephys binary format: ``structure.oebin`` + ``continuous/<stream>/continuous.dat``.

Expected nesting (as the GUI writes it, any level may be the session folder)::

    <YYYY-MM-DD_HH-MM-SS>/Record Node 101/settings.xml
                                         /experiment1/recording1/structure.oebin
                                                                /continuous/<stream>/continuous.dat
                                                                /continuous/<stream>/sample_numbers.npy

``continuous.dat`` is interleaved int16 over all channels of the stream, so Kilosort reads it in place.
Channel scaling (``bit_volts``, µV per bit for ephys channels) comes from the oebin; ADC/AUX/SYNC channels
are not sorted. Probe geometry comes from ``settings.xml`` when the Neuropixels-PXI plugin wrote it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from probeinterface import Probe

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats.base import ProbeListing, RecordingSource

FORMAT = "openephys"
#: Channel-name markers of non-ephys channels (Intan aux/ADC inputs, Neuropixels sync line).
NON_EPHYS_MARKERS = ("ADC", "AUX", "SYNC")
_UNIT_TO_UV = {"": 1.0, "uv": 1.0, "µv": 1.0, "microvolts": 1.0, "mv": 1e3, "millivolts": 1e3, "v": 1e6, "volts": 1e6}
_SETTINGS_DATE_FORMATS = ("%d %b %Y %H:%M:%S", "%d %B %Y %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")
#: Streams sampled slower than this (e.g. Neuropixels LFP at 2.5 kHz) are not sorted when a faster one exists.
MIN_WIDEBAND_RATE = 10_000.0
_FOLDER_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})_\d{2}-\d{2}-\d{2}")


def find_files(session_dir: Path) -> list[Path]:
    """The ``structure.oebin`` files under the session folder (one per recording)."""
    return sorted(p for p in session_dir.rglob("structure.oebin") if p.is_file())


def _load_oebin(path: Path) -> dict:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except PermissionError:
        raise  # reported by formats.open_recording with the permission fix
    except json.JSONDecodeError as exc:
        raise SessionInputError(path, f"structure.oebin is not valid JSON ({exc.msg} at line {exc.lineno})", "copy structure.oebin again from the acquisition computer") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SessionInputError(path, f"cannot read structure.oebin ({exc})", "check the file's permissions and copy it again") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("continuous"), list):
        raise SessionInputError(path, "structure.oebin has no 'continuous' stream list", "copy structure.oebin again from the acquisition computer")
    return payload


def is_ephys_channel(channel: dict) -> bool:
    """Neural channels: not named ADC/AUX/SYNC and not in volts."""
    name = str(channel.get("channel_name", "")).upper()
    units = str(channel.get("units", "")).strip().lower()
    return not any(marker in name for marker in NON_EPHYS_MARKERS) and units not in ("v", "volts")


def _rate(stream: dict) -> float:
    try:
        return float(stream.get("sample_rate", 0))
    except (TypeError, ValueError):
        return 0.0


def _is_lfp(stream: dict) -> bool:
    label = f"{stream.get('stream_name', '')} {stream.get('folder_name', '')}".upper()
    return "LFP" in label or "-LF" in label


def _select_stream(oebin: dict, path: Path) -> dict:
    streams = [s for s in oebin["continuous"] if isinstance(s, dict)]
    candidates = [s for s in streams if not _is_lfp(s) and any(is_ephys_channel(c) for c in s.get("channels", []) if isinstance(c, dict))]
    wideband = [s for s in candidates if _rate(s) >= MIN_WIDEBAND_RATE]
    candidates = wideband or candidates  # GUI 0.5 names Neuropixels AP/LFP streams only ".0"/".1"
    if not candidates:
        names = ", ".join(str(s.get("folder_name", "?")) for s in streams) or "none"
        raise SessionInputError(path, f"no continuous stream with ephys channels (streams: {names})", "record the wideband/AP stream of the probe")
    if len(candidates) > 1:
        names = ", ".join(str(s.get("folder_name", "?")).strip("/") for s in candidates)
        raise SessionInputError(path, f"the recording has several ephys streams ({names})", "put one probe per session folder (record each probe in its own Record Node or session)")
    return candidates[0]


def _settings_file(recording_dir: Path) -> Path | None:
    """``settings.xml`` (experiment1) or ``settings_<n>.xml`` in the Record Node folder."""
    experiment_dir = recording_dir.parent
    node_dir = experiment_dir.parent
    match = re.fullmatch(r"experiment(\d+)", experiment_dir.name)
    names = ["settings.xml"] if not match or match.group(1) == "1" else [f"settings_{match.group(1)}.xml", "settings.xml"]
    for name in names:
        if (node_dir / name).is_file():
            return node_dir / name
    return None


def _parse_settings(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except PermissionError:
        raise  # reported by formats.open_recording with the permission fix
    except (ET.ParseError, OSError) as exc:
        raise SessionInputError(path, f"settings.xml is not readable XML ({exc})", "copy settings.xml again from the acquisition computer, or remove it (the probe must then come from a probe file)") from None


def _settings_date(root: ET.Element) -> dt.date | None:
    text = (root.findtext("INFO/DATE") or "").strip()
    for fmt in _SETTINGS_DATE_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def _recording_date(root: ET.Element | None, recording_dir: Path, session_dir: Path, data_path: Path) -> tuple[dt.date, str]:
    """Date from settings.xml ``<INFO><DATE>``, else the GUI's ``YYYY-MM-DD_HH-MM-SS`` folder, else file time."""
    if root is not None and (date := _settings_date(root)) is not None:
        return date, "settings.xml INFO/DATE"
    for folder in (recording_dir, *recording_dir.parents):
        if folder == session_dir.parent:
            break
        match = _FOLDER_DATE.match(folder.name)
        if match:
            try:
                return dt.date.fromisoformat(match.group(1)), f"folder name {folder.name!r}"
            except ValueError:
                pass
    return dt.date.fromtimestamp(data_path.stat().st_mtime), "file modification time"


def _contact_probe(positions: np.ndarray, channels: list[int], shank_ids: list[str] | None, name: str) -> Probe:
    probe = Probe(ndim=2, si_units="um", name=name)
    probe.set_contacts(positions=np.asarray(positions, dtype=float), shapes="square", shape_params={"width": 12})
    probe.set_device_channel_indices(np.asarray(channels, dtype=int))
    if shank_ids is not None and len(set(shank_ids)) > 1:
        probe.set_shank_ids(np.asarray(shank_ids, dtype=str))
    return probe


def _np_probe_element(root: ET.Element, stream_name: str) -> ET.Element | None:
    """The ``NP_PROBE`` element of the stream's probe (the only one, or matched by name/order)."""
    probes = [p for p in root.iter("NP_PROBE") if p.attrib.get("isEnabled", "1") != "0"]
    if len(probes) <= 1:
        return probes[0] if probes else None
    base = re.sub(r"-(AP|LFP)$", "", stream_name)
    for probe in probes:
        if base and base in (probe.attrib.get("custom_probe_name"), probe.attrib.get("probe_serial_number")):
            return probe
    streams: list[str] = []
    for processor in root.iter("PROCESSOR"):
        if probes[0] in list(processor.iter("NP_PROBE")):
            for stream in processor.findall("STREAM"):
                probe_name = re.sub(r"-(AP|LFP)$", "", stream.attrib.get("name", ""))
                if "ADC" not in probe_name and probe_name not in streams:
                    streams.append(probe_name)
    return probes[streams.index(base)] if base in streams and streams.index(base) < len(probes) else None


def _positions_from_np_probe(element: ET.Element) -> tuple[np.ndarray, list[str] | None] | None:
    """Per-channel ``ELECTRODE_XPOS``/``ELECTRODE_YPOS`` (µm) and shank ids from ``CHANNELS`` ("bank:shank")."""
    xpos, ypos = element.find("ELECTRODE_XPOS"), element.find("ELECTRODE_YPOS")
    if xpos is None or ypos is None:
        return None
    keys = sorted((k for k in xpos.attrib if re.fullmatch(r"CH\d+", k)), key=lambda k: int(k[2:]))
    if not keys or any(k not in ypos.attrib for k in keys):
        return None
    try:
        positions = np.array([[float(xpos.attrib[k]), float(ypos.attrib[k])] for k in keys])
    except ValueError:
        return None
    shanks = None
    channels = element.find("CHANNELS")
    if channels is not None and all(":" in channels.attrib.get(k, "") for k in keys):
        shanks = [channels.attrib[k].split(":")[1] for k in keys]
    return positions, shanks


def probe_from_settings(settings: Path, root: ET.Element, stream_name: str, ephys_channels: list[int]) -> tuple[Probe | None, str]:
    """Probe geometry of the stream from settings.xml, wired to ``ephys_channels``; ``(None, why)`` if absent.

    Tries probeinterface's Open Ephys Neuropixels reader (catalogue probes, all plugin versions), then the
    per-channel ``ELECTRODE_XPOS``/``ELECTRODE_YPOS`` the Neuropixels-PXI plugin writes.
    """
    import probeinterface as pi

    n = len(ephys_channels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = pi.read_openephys_neuropixels(settings, stream_name=stream_name or None, raise_error=False)
    except Exception:  # probeinterface raises many kinds on files it does not know; fall back below
        probe = None
    if probe is not None and probe.get_contact_count() == n:
        probe.set_device_channel_indices(np.asarray(ephys_channels, dtype=int))
        return probe, "settings.xml (probeinterface Neuropixels catalogue)"
    element = _np_probe_element(root, stream_name)
    if element is None:
        return None, "settings.xml has no Neuropixels probe geometry"
    parsed = _positions_from_np_probe(element)
    if parsed is None:
        return None, "settings.xml NP_PROBE has no ELECTRODE_XPOS/ELECTRODE_YPOS"
    positions, shanks = parsed
    if len(positions) != n:
        return None, f"settings.xml lists {len(positions)} electrode positions for {n} ephys channels"
    name = element.attrib.get("custom_probe_name") or element.attrib.get("probe_name") or stream_name
    return _contact_probe(positions, ephys_channels, shanks, name), "settings.xml NP_PROBE ELECTRODE_XPOS/YPOS"


def _stream_scale(channels: list[dict], ephys: list[int], oebin_path: Path) -> float:
    values = []
    for i in ephys:
        channel = channels[i]
        units = str(channel.get("units", "")).strip().lower()
        if units not in _UNIT_TO_UV:
            raise SessionInputError(oebin_path, f"channel {channel.get('channel_name')!r} has unknown units {units!r}", "restore the structure.oebin the GUI wrote")
        try:
            bit_volts = float(channel["bit_volts"])
        except (KeyError, TypeError, ValueError):
            raise SessionInputError(oebin_path, f"channel {channel.get('channel_name')!r} has no numeric bit_volts", "restore the structure.oebin the GUI wrote") from None
        values.append(bit_volts * _UNIT_TO_UV[units])
    if min(values) <= 0:
        raise SessionInputError(oebin_path, "an ephys channel has bit_volts <= 0", "restore the structure.oebin the GUI wrote")
    if not np.allclose(values, values[0], rtol=1e-6):
        raise SessionInputError(oebin_path, f"the ephys channels have different bit_volts ({min(values):g}..{max(values):g} µV)", "record all ephys channels of the stream with one gain")
    return float(values[0])


def _sample_count_file(stream_dir: Path) -> Path | None:
    for name in ("sample_numbers.npy", "timestamps.npy"):
        if (stream_dir / name).is_file():
            return stream_dir / name
    return None


def list_probes(session_dir: Path) -> ProbeListing:
    """The probe stream of the single Open Ephys recording under ``session_dir``."""
    oebins = find_files(session_dir)
    if len(oebins) != 1:
        raise SessionInputError(
            session_dir,
            f"expected one Open Ephys recording (structure.oebin), found {len(oebins)}",
            "put one recording (one Record Node / experiment / recording) per session folder",
        )
    stream = _select_stream(_load_oebin(oebins[0]), oebins[0])
    return ProbeListing({_probe_name(stream): (oebins[0],)})


def _probe_name(stream: dict) -> str:
    name = str(stream.get("stream_name") or stream.get("folder_name", "")).strip("/")
    return re.sub(r"-AP$", "", name) or "probe"


def open_recording(session_dir: Path, probe: str | None = None) -> RecordingSource:
    """Describe one probe stream of the Open Ephys binary recording under ``session_dir``."""
    listing = list_probes(session_dir)
    oebin_path = listing.probes[listing.pick(probe, session_dir)][0]
    recording_dir = oebin_path.parent
    oebin = _load_oebin(oebin_path)
    stream = _select_stream(oebin, oebin_path)
    channels = [c for c in stream.get("channels", []) if isinstance(c, dict)]
    folder = str(stream.get("folder_name", "")).strip("/")
    if not folder:
        raise SessionInputError(oebin_path, "the continuous stream has no folder_name", "restore the structure.oebin the GUI wrote")
    stream_dir = recording_dir / "continuous" / folder
    data_path = stream_dir / "continuous.dat"
    if not data_path.is_file():
        raise SessionInputError(data_path, "the continuous data file is missing", "copy the whole recording folder (continuous/<stream>/continuous.dat) from the acquisition computer")
    n_channels = len(channels)
    declared = stream.get("num_channels", n_channels)
    if str(declared) != str(n_channels):
        raise SessionInputError(oebin_path, f"num_channels={declared} but {n_channels} channels are listed for {folder}", "restore the structure.oebin the GUI wrote")
    try:
        fs = float(stream["sample_rate"])
    except (KeyError, TypeError, ValueError):
        raise SessionInputError(oebin_path, f"the stream {folder} has no numeric sample_rate", "restore the structure.oebin the GUI wrote") from None
    if fs <= 0 or n_channels == 0:
        raise SessionInputError(oebin_path, f"the stream {folder} has sample_rate={fs} and {n_channels} channels", "restore the structure.oebin the GUI wrote")
    size = data_path.stat().st_size
    if size == 0:
        raise SessionInputError(data_path, "the data file is empty (0 bytes)", "copy the recording again from the acquisition computer")
    frame = 2 * n_channels
    if size % frame:
        raise SessionInputError(
            data_path,
            f"size {size} bytes is not a multiple of {n_channels} channels x 2 bytes (truncated copy, or structure.oebin lists the wrong channels)",
            "copy continuous.dat again completely, or use the structure.oebin that belongs to it",
        )
    n_samples = size // frame
    count_file = _sample_count_file(stream_dir)
    if count_file is not None:
        try:
            listed = int(np.load(count_file, mmap_mode="r").shape[0])
        except (ValueError, OSError, IndexError) as exc:
            raise SessionInputError(count_file, f"cannot read the sample index ({exc})", "copy the recording folder again") from None
        if listed != n_samples:
            raise SessionInputError(
                data_path,
                f"holds {n_samples} samples of the {n_channels} channels listed in structure.oebin, but {count_file.name} lists {listed} samples (truncated copy, or the oebin's channel list does not match the data)",
                "copy continuous.dat again completely, or use the structure.oebin that belongs to it",
            )
    ephys = [i for i, c in enumerate(channels) if is_ephys_channel(c)]
    uv_per_bit = _stream_scale(channels, ephys, oebin_path)
    settings = _settings_file(recording_dir)
    root = _parse_settings(settings) if settings is not None else None
    stream_name = str(stream.get("stream_name") or folder.split(".", 1)[-1])
    if settings is not None and root is not None:
        probe, probe_note = probe_from_settings(settings, root, stream_name, ephys)
    else:
        probe, probe_note = None, "no settings.xml"
    date, date_note = _recording_date(root, recording_dir, session_dir, data_path)
    sorting = tuple(ephys)
    data_files = tuple(p for p in (data_path, oebin_path, count_file, settings) if p is not None)
    return RecordingSource.interleaved_int16(
        data_path,
        n_channels,
        n_samples,
        sorting,
        format=FORMAT,
        session_dir=session_dir,
        data_files=data_files,
        sampling_frequency=fs,
        recording_date=date,
        uv_per_bit=uv_per_bit,
        probe=probe,
        probe_file=None,
        scaling_note=f"bit_volts {uv_per_bit:g} µV/bit from structure.oebin ({folder}); probe: {probe_note}; date: {date_note}",
        probe_name=_probe_name(stream),
    )

"""A hostile corpus (issue #14): over 60 broken or hostile session inputs, generated here, through every entry point.

Each entry builds one session folder from scratch (small: 0.2 s × 32 channels) and damages it. The folders all
sit in ONE landing root next to two good sessions, and each entry point meets the whole root at once:

* ``ks-platform convert <folder> --out <dir>`` (in-process ``main(argv)`` for all, a few as real subprocesses):
  exit 2 with the platform's own message (file + ``Fix:`` + an action), no traceback, nothing in ``--out``;
* ``ks-platform register`` and ``ks-platform backfill --dry-run`` (real subprocesses, embedded instance): exit 0,
  the good sessions registered / listed, every bad folder reported with its file and fix, the skip count said;
* one ``new_session_sensor`` tick: the good partitions requested, every bad folder warned about, no exception;
* Dagster runs of the ingest assets (and of ``sorted_units`` for the Kilosort-settings entries, which fail
  before Kilosort starts) for the entries that do get a partition: one failure message, nothing in the store.

What "phase" an entry fails in is part of its expectation: ``found`` = refused when the folder is read (no
partition), ``ingest`` = gets a partition and fails in an ingest step, ``sort`` = gets a partition and fails
when the sort step validates its settings, ``good`` = a hostile-looking folder that is a valid session.
Landing roots that are missing / a file / badly named, a hand-made partition key with traversal and a
read-only store (a real read-only mount: the tests run as root, whom ``chmod`` does not stop) are tested below.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import h5py
import numpy as np
import probeinterface as pi
import pytest

from ks_platform.core.discovery import discover
from ks_platform.core.formats import plexon
from ks_platform.core.names import CATALOG_DIR
from ks_platform.core.session_plan import SHOWN
from ks_platform.core.synthetic import spikeglx_meta
from ks_platform.defs import sensors
from ks_platform.defs.resources import PlatformResource
from ks_platform_tests.cli_support import TRACEBACK, run_cli
from ks_platform_tests.conftest import Workspace, failure_messages, leftovers
from ks_platform_tests.formats import synthetic as syn
from ks_platform_tests.sensor_support import tick
from ks_platform_tests.writers import write_nwb_session, write_openephys_session, write_plexon_session

ROOT = "rig1"
DATE = dt.date(2026, 3, 2)
N_SAMPLES = 6000
INGEST = ["raw_recording", "probe_map", "recording_binary"]
REPO = Path(__file__).resolve().parent.parent
GOOD = ("good_glx", "good_raw")


# ------------------------------------------------------------------------------------------ builders
def _traces(n_channels: int = syn.N_CHANNELS) -> np.ndarray:
    return syn.traces(n_samples=N_SAMPLES)[:, :n_channels]


def _glx(folder: Path) -> Path:
    """A SpikeGLX NP1.0 run (32 AP channels + sync) written directly: the .bin and its .meta."""
    folder.mkdir(parents=True)
    data = np.concatenate([_traces(), np.zeros((N_SAMPLES, 1), np.int16)], axis=1)
    path = folder / "run_g0_t0.imec0.ap.bin"
    data.tofile(path)
    path.with_suffix(".meta").write_text(spikeglx_meta(syn.N_CHANNELS, N_SAMPLES, syn.FS, DATE, file_name=path.name))
    return folder


def _probe_group() -> pi.ProbeGroup:
    probe = pi.Probe(ndim=2, si_units="um")
    probe.set_contacts(positions=syn.positions(), shapes="square", shape_params={"width": 12})
    probe.set_device_channel_indices(np.arange(syn.N_CHANNELS))
    group = pi.ProbeGroup()
    group.add_probe(probe)
    return group


def _raw(folder: Path) -> Path:
    """Raw int16 binary + JSON sidecar + probeinterface probe file."""
    folder.mkdir(parents=True)
    _traces().tofile(folder / "rec.bin")
    pi.write_probeinterface(folder / "probe.json", _probe_group())
    sidecar = {
        "sampling_frequency": syn.FS,
        "n_channels": syn.N_CHANNELS,
        "dtype": "int16",
        "probe_file": "probe.json",
        "recording_date": DATE.isoformat(),
    }
    (folder / "rec.json").write_text(json.dumps(sidecar))
    return folder


def _openephys(folder: Path) -> Path:
    return write_openephys_session(folder, _traces(), syn.FS, syn.positions(), DATE, syn.shank_ids())


def _nwb(folder: Path) -> Path:
    return write_nwb_session(folder, _traces(), syn.FS, syn.positions(), DATE, syn.shank_ids())


def _plexon(folder: Path) -> Path:
    write_plexon_session(folder, _traces(), syn.FS, syn.positions(), DATE, syn.shank_ids())
    return folder


# ------------------------------------------------------------------------------------------ damage
def _one(folder: Path, pattern: str) -> Path:
    [path] = sorted(folder.rglob(pattern))
    return path


def _meta(key: str, value: str) -> Callable[[Path], Path]:
    """Set (or add) one ``key=value`` line of the SpikeGLX meta."""

    def damage(folder: Path) -> Path:
        meta = _one(folder, "*.ap.meta")
        lines = meta.read_text().splitlines()
        keyed = [line for line in lines if line.lstrip("~").split("=", 1)[0] == key]
        prefix = "~" if keyed and keyed[0].startswith("~") else ""
        lines = [f"{prefix}{key}={value}" if line in keyed else line for line in lines]
        lines += [] if keyed else [f"{key}={value}"]
        meta.write_text("\n".join(lines) + "\n")
        return meta

    return damage


def _write(pattern: str, content: bytes | str) -> Callable[[Path], Path]:
    """Replace a file's content (bytes as they are)."""

    def damage(folder: Path) -> Path:
        path = _one(folder, pattern)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    return damage


def _create(name: str, content: bytes | str) -> Callable[[Path], Path]:
    def damage(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    return damage


def _into_dir(pattern: str) -> Callable[[Path], Path]:
    """The file becomes a folder of the same name."""

    def damage(folder: Path) -> Path:
        path = _one(folder, pattern)
        path.unlink()
        path.mkdir()
        (path / "inside.txt").write_text("x")
        return path

    return damage


def _ks(text: str) -> Callable[[Path], Path]:
    """A ``kilosort4-settings.json`` with ``text``."""
    return _create("kilosort4-settings.json", text)


def _cfg(text: str) -> Callable[[Path], Path]:
    """A ``ks_session.json`` with ``text``."""
    return _create("ks_session.json", text)


def _mkdir(name: str) -> Callable[[Path], Path]:
    """A folder where a config file is looked for."""

    def damage(folder: Path) -> Path:
        (folder / name).mkdir()
        return folder / name

    return damage


def _truncate(pattern: str, size: int | None = None) -> Callable[[Path], Path]:
    def damage(folder: Path) -> Path:
        path = _one(folder, pattern)
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size - 3 if size is None else size)
        return path

    return damage


def _dangling(pattern: str) -> Callable[[Path], Path]:
    def damage(folder: Path) -> Path:
        path = _one(folder, pattern)
        path.unlink()
        os.symlink(folder / "no_such_file.bin", path)
        return path

    return damage


def _linked_outside(pattern: str) -> Callable[[Path], Path]:
    """Move the file beside the landing root and link it back."""

    def damage(folder: Path) -> Path:
        path = _one(folder, pattern)
        outside = folder.parent.parent / "outside" / folder.name
        outside.mkdir(parents=True)
        shutil.move(path, outside / path.name)
        os.symlink(outside / path.name, path)
        return path

    return damage


def _sidecar(**changes: object) -> Callable[[Path], Path]:
    def damage(folder: Path) -> Path:
        path = folder / "rec.json"
        payload = json.loads(path.read_text())
        payload.update(changes)
        path.write_text(json.dumps(payload))  # NaN / Infinity are written as JSON's common extensions
        return path

    return damage


def _deep(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def _deep_object(depth: int = 100_000) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def _oebin(edit: Callable[[dict], None]) -> Callable[[Path], Path]:
    def damage(folder: Path) -> Path:
        path = _one(folder, "structure.oebin")
        payload = json.loads(path.read_text())
        edit(payload)
        path.write_text(json.dumps(payload))
        return path

    return damage


def _oe_rate_zero(oebin: dict) -> None:
    oebin["continuous"][0]["sample_rate"] = 0


def _oe_more_channels(oebin: dict) -> None:
    stream = oebin["continuous"][0]
    stream["num_channels"] = len(stream["channels"]) + 3


def _missing(pattern: str) -> Callable[[Path], Path]:
    def damage(folder: Path) -> Path:
        path = _one(folder, pattern)
        path.unlink()
        return path

    return damage


def _nwb_without_series(folder: Path) -> Path:
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    shutil.rmtree(folder)
    folder.mkdir()
    start = dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc)
    nwbfile = NWBFile(session_description="behaviour only", identifier="no-ephys", session_start_time=start)
    nwbfile.add_acquisition(TimeSeries(name="running_speed", data=np.zeros(100), unit="m/s", rate=10.0))
    with NWBHDF5IO(str(folder / "behaviour.nwb"), mode="w") as io:
        io.write(nwbfile)
    return folder / "behaviour.nwb"


def _nwb_rate(value: float) -> Callable[[Path], Path]:
    def damage(folder: Path) -> Path:
        path = _one(folder, "*.nwb")
        with h5py.File(path, "r+") as handle:
            [series] = [obj for obj in handle["acquisition"].values() if isinstance(obj, h5py.Group) and "data" in obj]
            series["starting_time"].attrs["rate"] = value
        return path

    return damage


def _plx_magic(folder: Path) -> Path:
    path = _one(folder, "*.plx")
    with open(path, "r+b") as handle:
        handle.write(b"XXXX")
    return path


def _plx_field(field: str, value: int) -> Callable[[Path], Path]:
    def damage(folder: Path) -> Path:
        path = _one(folder, "*.plx")
        header = np.fromfile(path, dtype=plexon.FILE_HEADER, count=1)
        header[0][field] = value
        with open(path, "r+b") as handle:
            handle.write(header.tobytes())
        return path

    return damage


def _probe_outside(folder: Path) -> Path:
    outside = folder.parent.parent / "outside" / folder.name
    outside.mkdir(parents=True)
    shutil.copy(folder / "probe.json", outside / "probe.json")
    return _sidecar(probe_file=f"../../outside/{folder.name}/probe.json")(folder)


def _probe_nan(folder: Path) -> Path:
    """Two contacts of the probeinterface file at NaN (JSON's common extension, as Python writes it)."""
    path = folder / "probe.json"
    payload = json.loads(path.read_text())
    positions = payload["probes"][0]["contact_positions"]
    positions[3] = [float("nan"), positions[3][1]]
    positions[7] = [positions[7][0], float("nan")]
    path.write_text(json.dumps(payload))
    return path


def _probe_dir(folder: Path) -> Path:
    (folder / "probe.json").unlink()
    (folder / "probe.json").mkdir()
    return _sidecar(probe_file="probe.json")(folder)


def _mixed(folder: Path) -> Path:
    _raw(folder / "tmp_raw")
    for name in ("rec.bin", "rec.json", "probe.json"):
        shutil.move(folder / "tmp_raw" / name, folder / name)
    shutil.rmtree(folder / "tmp_raw")
    return folder


def _only(name: str, content: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        folder.mkdir(parents=True)
        if name:
            (folder / name).write_text(content)
        return folder

    return build


def _then(*steps: Callable[[Path], Path]) -> Callable[[Path], Path]:
    """Apply damages in order; the last one names the file."""

    def damage(folder: Path) -> Path:
        named = folder
        for step in steps:
            named = step(folder)
        return named

    return damage


def _fifo(pattern: str) -> Callable[[Path], Path]:
    """The file becomes a named pipe (reading it would block forever)."""

    def damage(folder: Path) -> Path:
        path = _one(folder, pattern)
        path.unlink()
        os.mkfifo(path)
        return path

    return damage


def _fifo_named(name: str) -> Callable[[Path], Path]:
    def damage(folder: Path) -> Path:
        os.mkfifo(folder / name)
        return folder / name

    return damage


def _symlink_loop(folder: Path) -> Path:
    os.symlink(folder / "loop", folder / "loop")
    return folder / "loop"


def _link_to_itself(folder: Path) -> Path:
    os.symlink(".", folder / "again")
    return folder


def _folder_linked_outside(folder: Path) -> Path:
    """The session folder itself is a symlink to a folder beside the landing root."""
    outside = folder.parent.parent / "outside" / folder.name
    outside.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(folder, outside)
    os.symlink(outside, folder)
    return folder


def _same(folder: Path) -> Path:
    return folder


# ------------------------------------------------------------------------------------------ the corpus
@dataclass(frozen=True)
class Hostile:
    """One hostile input: how to build and damage it, what its message must say, and when it fails."""

    kind: str
    build: Callable[[Path], Path]
    damage: Callable[[Path], Path]  # (session folder) -> the file or folder every message must name
    fix_hint: str  # must appear after "Fix:"
    #: found: refused when read (no partition) · ingest: partition, an ingest step fails · sort: partition, the
    #: sort step refuses the settings · good: a valid session (hostile-looking name)
    phase: str = "found"
    #: ``convert`` succeeds all the same: the bad part is the probe map, or it only matters inside a landing root
    #: (convert is given the folder itself).
    converts: bool = False
    folder: str = ""  # the folder's name in the landing root (default: derived from the kind)

    @property
    def name(self) -> str:
        return self.folder or "bad_" + "".join(c if c.isalnum() else "_" for c in self.kind.lower())[:60]


_NOT_UTF8 = b"\xff\xfe\x00bad\xc3\x28 bytes\n"

CORPUS: list[Hostile] = [
    # SpikeGLX meta values
    Hostile("glx imMaxInt=0", _glx, _meta("imMaxInt", "0"), "meta"),
    Hostile("glx imSampRate=0", _glx, _meta("imSampRate", "0"), "meta"),
    Hostile("glx imSampRate=nan", _glx, _meta("imSampRate", "nan"), "meta"),
    Hostile("glx imSampRate=inf", _glx, _meta("imSampRate", "inf"), "meta"),
    Hostile("glx imSampRate=-30000", _glx, _meta("imSampRate", "-30000"), "meta"),
    Hostile("glx imSampRate text", _glx, _meta("imSampRate", "thirty-thousand"), "meta"),
    Hostile("glx nSavedChans text", _glx, _meta("nSavedChans", "thirty-three"), "meta"),
    Hostile("glx nSavedChans negative", _glx, _meta("nSavedChans", "-33"), "meta"),
    Hostile("glx nSavedChans huge", _glx, _meta("nSavedChans", "99999999999999999999"), "meta"),
    Hostile("glx imAiRangeMax=0", _glx, _meta("imAiRangeMax", "0"), "meta"),
    Hostile("glx imAiRangeMax nan", _glx, _meta("imAiRangeMax", "nan"), "meta"),
    # snsChanMap is only SpikeGLX's display order (channel ids come from snsSaveChanSubset): a broken one is harmless
    Hostile("glx snsChanMap broken", _glx, _meta("snsChanMap", "(384,0,1)(AP0;0:0)(AP1;zz"), "", phase="good"),
    Hostile("glx snsSaveChanSubset garbage", _glx, _meta("snsSaveChanSubset", "0:banana"), "meta"),
    Hostile("glx imroTbl garbage", _glx, _meta("imroTbl", "(0,384)(nonsense)"), "meta"),
    Hostile("glx fileCreateTime garbage", _glx, _meta("fileCreateTime", "yesterday-ish"), "YYYY-MM-DD"),
    Hostile("glx meta not UTF-8", _glx, _write("*.ap.meta", _NOT_UTF8), "meta"),
    Hostile("glx meta empty", _glx, _write("*.ap.meta", b""), "meta"),
    Hostile("glx meta lines without =", _glx, _write("*.ap.meta", "just some text\nno pairs\n"), "meta"),
    Hostile("glx meta with NUL bytes", _glx, _write("*.ap.meta", b"\0" * 512), "meta"),
    Hostile("glx meta is a directory", _glx, _into_dir("*.ap.meta"), "meta"),
    Hostile("glx meta missing", _glx, _missing("*.ap.meta"), "meta"),
    Hostile("glx bin empty", _glx, _truncate("*.ap.bin", 0), "copy"),
    Hostile("glx bin truncated", _glx, _truncate("*.ap.bin"), "copy"),
    Hostile("glx bin is a directory", _glx, _into_dir("*.ap.bin"), "itself"),
    Hostile("glx bin dangling symlink", _glx, _dangling("*.ap.bin"), "itself"),
    Hostile("glx bin linked outside", _glx, _linked_outside("*.ap.bin"), "inside"),
    Hostile("glx meta linked outside", _glx, _linked_outside("*.ap.meta"), "inside"),
    # raw binary + sidecar
    Hostile("raw n_channels text", _raw, _sidecar(n_channels="thirty-two"), "n_channels"),
    Hostile("raw n_channels 0", _raw, _sidecar(n_channels=0), "n_channels"),
    Hostile("raw n_channels -1", _raw, _sidecar(n_channels=-1), "n_channels"),
    Hostile("raw n_channels 1.5", _raw, _sidecar(n_channels=1.5), "n_channels"),
    Hostile("raw n_channels huge", _raw, _sidecar(n_channels=10**15), "n_channels"),
    Hostile("raw sampling_frequency NaN", _raw, _sidecar(sampling_frequency=float("nan")), "sampling_frequency"),
    Hostile("raw sampling_frequency inf", _raw, _sidecar(sampling_frequency=float("inf")), "sampling_frequency"),
    Hostile("raw sampling_frequency 0", _raw, _sidecar(sampling_frequency=0), "sampling_frequency"),
    Hostile("raw sampling_frequency negative", _raw, _sidecar(sampling_frequency=-30000), "sampling_frequency"),
    Hostile("raw sampling_frequency text", _raw, _sidecar(sampling_frequency="fast"), "sampling_frequency"),
    Hostile("raw dtype float128", _raw, _sidecar(dtype="float128"), "int16"),
    Hostile("raw dtype unknown", _raw, _sidecar(dtype="int17"), "int16"),
    Hostile("raw dtype not a string", _raw, _sidecar(dtype=16), "int16"),
    Hostile("raw data not a multiple of the frame", _raw, _truncate("rec.bin"), "copy"),
    Hostile("raw data empty", _raw, _truncate("rec.bin", 0), "copy"),
    Hostile("raw recording_date a number", _raw, _sidecar(recording_date=20260302), "recording_date"),
    Hostile("raw recording_date garbage", _raw, _sidecar(recording_date="the day before"), "YYYY-MM-DD"),
    Hostile("raw probe_file missing", _raw, _then(_missing("probe.json"), lambda f: f / "rec.json"), "probe"),
    Hostile("raw probe_file outside the session", _raw, _probe_outside, "into the session folder"),
    Hostile("raw probe_file a directory", _raw, _probe_dir, "probe"),
    Hostile("raw probe_file a number", _raw, _sidecar(probe_file=7), "probe"),
    Hostile("raw sidecar not JSON", _raw, _write("rec.json", '{"n_channels": 32,'), "JSON"),
    Hostile("raw sidecar not an object", _raw, _write("rec.json", "[1, 2, 3]"), "JSON object"),
    Hostile("raw sidecar nested 100k deep", _raw, _write("rec.json", _deep_object()), "JSON"),
    Hostile("raw sidecar not UTF-8", _raw, _write("rec.json", _NOT_UTF8), "UTF-8"),
    Hostile("raw sidecar empty", _raw, _write("rec.json", b""), "JSON"),
    Hostile("raw sidecar without n_channels", _raw, _write("rec.json", '{"sampling_frequency": 3e4}'), "n_channels"),
    Hostile("raw probe file not JSON", _raw, _write("probe.json", "{not json"), "probe", phase="ingest", converts=True),
    Hostile("raw probe file empty object", _raw, _write("probe.json", "{}"), "probe", phase="ingest", converts=True),
    Hostile("raw probe positions NaN", _raw, _probe_nan, "finite (x, y) position", phase="ingest", converts=True),
    # Open Ephys
    Hostile("openephys oebin not JSON", _openephys, _write("structure.oebin", "{oops"), "structure.oebin"),
    Hostile("openephys oebin not UTF-8", _openephys, _write("structure.oebin", _NOT_UTF8), "structure.oebin"),
    Hostile("openephys oebin nested 100k deep", _openephys, _write("structure.oebin", _deep()), "structure.oebin"),
    Hostile("openephys oebin empty object", _openephys, _write("structure.oebin", "{}"), "structure.oebin"),
    Hostile("openephys missing continuous.dat", _openephys, _missing("continuous.dat"), "copy the whole recording"),
    Hostile("openephys sample_rate 0", _openephys, _oebin(_oe_rate_zero), "structure.oebin"),
    Hostile("openephys num_channels mismatch", _openephys, _oebin(_oe_more_channels), "structure.oebin"),
    Hostile("openephys settings.xml garbage", _openephys, _write("settings.xml", "<<<not xml"), "settings.xml"),
    Hostile("openephys settings.xml not UTF-8", _openephys, _write("settings.xml", _NOT_UTF8), "settings.xml"),
    # NWB
    Hostile("nwb not HDF5", _nwb, _write("*.nwb", b"this is not an HDF5 file" * 100), "copy"),
    Hostile("nwb empty file", _nwb, _truncate("*.nwb", 0), "copy"),
    Hostile("nwb without ElectricalSeries", _nwb, _nwb_without_series, "ElectricalSeries"),
    Hostile("nwb rate NaN", _nwb, _nwb_rate(float("nan")), "rate"),
    Hostile("nwb rate 0", _nwb, _nwb_rate(0.0), "rate"),
    # Plexon
    Hostile("plexon corrupt magic", _plexon, _plx_magic, "copy the .plx again"),
    Hostile("plexon truncated", _plexon, _truncate("*.plx", 3000), "copy the .plx again"),
    Hostile("plexon impossible channel counts", _plexon, _plx_field("NumDSPChannels", -7), "copy the .plx again"),
    # session config files
    Hostile("ks_session.json not JSON", _glx, _cfg('{"kilosort": '), "JSON"),
    Hostile("ks_session.json not UTF-8", _glx, _cfg(_NOT_UTF8), "UTF-8"),
    Hostile("ks_session.json nested 100k deep", _glx, _cfg(_deep_object()), "JSON object"),
    Hostile("ks_session.json a directory", _glx, _mkdir("ks_session.json"), "JSON file"),
    Hostile("ks_session.json unknown keys", _glx, _cfg('{"kilosrot": {}}'), "use only"),
    Hostile("ks_session.json unknown probe", _glx, _cfg('{"probes": {"imec7": {}}}'), "imec0"),
    Hostile("ks_session.json recording_date garbage", _glx, _cfg('{"recording_date": "soon"}'), "recording_date"),
    Hostile("ks_session.json probe_file outside", _glx, _cfg('{"probe_file": "../../etc/passwd"}'), "probe file"),
    Hostile("kilosort4-settings.json not JSON", _glx, _ks("{"), "JSON"),
    Hostile("kilosort4-settings.json not UTF-8", _glx, _ks(_NOT_UTF8), "UTF-8"),
    Hostile("kilosort4-settings.json nested 100k deep", _glx, _ks(_deep()), "JSON object"),
    Hostile("kilosort4-settings.json a directory", _glx, _mkdir("kilosort4-settings.json"), "JSON file"),
    Hostile("settings unknown key", _glx, _ks('{"batch_sise": 60000}'), "rename or remove", phase="sort"),
    Hostile("settings batch_size 0", _glx, _ks('{"batch_size": 0}'), "batch_size", phase="sort"),
    Hostile("settings batch_size -5", _glx, _ks('{"batch_size": -5}'), "batch_size", phase="sort"),
    Hostile("settings batch_size x", _glx, _ks('{"batch_size": "x"}'), "batch_size", phase="sort"),
    Hostile("settings batch_size 1e12", _glx, _ks('{"batch_size": 1e12}'), "batch_size", phase="sort"),
    Hostile("settings nblocks two", _glx, _ks('{"nblocks": "two"}'), "nblocks", phase="sort"),
    Hostile("ks_session kilosort not an object", _glx, _cfg('{"kilosort": [1, 2]}'), "setting", phase="sort"),
    # folders
    Hostile("empty folder", _only("", ""), _same, "add the recording files"),
    Hostile("folder with only notes", _only("notes.txt", "no data here"), _same, "add the recording files"),
    Hostile("mixed formats", _glx, _mixed, "one recording format"),
    Hostile("glx bin is a named pipe", _glx, _fifo("*.ap.bin"), "real file"),
    Hostile("glx meta is a named pipe", _glx, _fifo("*.ap.meta"), "real file"),
    Hostile("raw bin is a named pipe", _raw, _fifo("rec.bin"), "real file"),
    Hostile("raw sidecar is a named pipe", _raw, _fifo("rec.json"), "real file"),
    Hostile("ks_session.json a named pipe", _glx, _fifo_named("ks_session.json"), "real file"),
    Hostile("symlink loop in the folder", _glx, _symlink_loop, "link"),
    Hostile("session folder linked from outside the root", _glx, _folder_linked_outside, "inside", converts=True),
    Hostile("settings Th_universal NaN", _glx, _ks('{"Th_universal": NaN}'), "Th_universal", "sort"),
    Hostile("raw uv_per_bit 0", _raw, _sidecar(uv_per_bit=0), "uv_per_bit"),
    Hostile("raw float units unknown", _raw, _sidecar(dtype="float32", n_channels=16, units="furlongs"), "uV"),
    Hostile("raw sorting_channels out of range", _raw, _sidecar(sorting_channels=[0, 99]), "sorting_channels"),
    Hostile("folder linking to itself", _glx, _link_to_itself, "", phase="good"),
    Hostile("unsafe name with newline", _glx, _same, "", phase="good", folder="new\nline"),
    Hostile("unsafe name emoji only", _glx, _same, "", phase="good", folder="🐭🐭"),
    Hostile("unsafe name with space", _glx, _same, "", phase="good", folder="Mouse 9 day 2"),
    Hostile("unsafe name unicode", _glx, _same, "", phase="good", folder="ünïcode_mäus"),
    Hostile("unsafe name with __", _glx, _same, "", phase="good", folder="a__b"),
    Hostile("unsafe name with ..", _glx, _same, "", phase="good", folder="up..down"),
    # issue #25: names whose keys were wrong (a newline kept in the key; a literal name equal to another's derived key)
    Hostile("unsafe name ending in a newline", _glx, _same, "", phase="good", folder="trailing_newline\n"),
    Hostile("unsafe name with control characters", _glx, _same, "", phase="good", folder="ctl\x1b[31m\x07\tname"),
    Hostile("unsafe name whose derived key is a literal name", _glx, _same, "", phase="good", folder="mouse7 day3"),
    Hostile("literal name equal to a derived key", _glx, _same, "", phase="good", folder="mouse7-day3-hcf373c60"),
]

BAD = [c for c in CORPUS if c.phase != "good"]
FOUND = [c for c in CORPUS if c.phase == "found"]
REGISTERED = [c for c in CORPUS if c.phase != "found"]
[EMPTY] = [c for c in CORPUS if c.kind == "empty folder"]


def test_the_corpus_is_large_and_names_are_unique():
    assert len(CORPUS) >= 60
    assert len({c.name for c in CORPUS}) == len(CORPUS) and len({c.kind for c in CORPUS}) == len(CORPUS)


# ------------------------------------------------------------------------------------------ the landing root
@dataclass
class Corpus:
    """The landing root with every corpus entry + the good sessions, and what each entry's message must name."""

    base: Path
    landing: Path
    named: dict[str, Path]  # kind -> the path its messages must name

    def folder(self, case: Hostile) -> Path:
        return self.landing / case.name

    @property
    def platform(self) -> PlatformResource:
        return PlatformResource(store_root=str(self.store), landing_roots=f"{ROOT}={self.landing}", backend="cpu")

    @property
    def store(self) -> Path:
        return self.base / "store"

    @property
    def env(self) -> dict[str, str]:
        """The ``KS_PLATFORM_*`` environment of the command line over this landing root."""
        return {"KS_PLATFORM_STORE": str(self.store), "KS_PLATFORM_LANDING": f"{ROOT}={self.landing}"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    base = tmp_path_factory.mktemp("hostile")
    landing = base / "landing"
    landing.mkdir()
    _glx(landing / GOOD[0])
    _raw(landing / GOOD[1])
    named = {}
    for case in CORPUS:
        folder = case.build(landing / case.name)
        named[case.kind] = case.damage(folder)
    return Corpus(base, landing, named)


@pytest.fixture(scope="module")
def discovered(corpus) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(folder name -> keys, folder name -> rejection reason) from ``discover``."""
    found, rejected = discover({ROOT: corpus.landing})
    keys: dict[str, list[str]] = {}
    for item in found:
        keys.setdefault(item.folder.name, []).append(item.ref.key)
    return keys, {r.folder.name: r.reason for r in rejected}


# ------------------------------------------------------------------------------------------ message checks
def assert_says_file_and_fix(message: str, named: Path, fix_hint: str) -> None:
    """The platform's own message: names the file, has "Fix:" followed by an action, no traceback, no catch-all."""
    assert TRACEBACK not in message, message
    assert str(named) in message, f"the message does not name {named}: {message}"
    assert "Fix:" in message, message
    fix = message.split("Fix:", 1)[1]
    action = fix.replace(str(named), " ").replace(named.name, " ").strip()
    is_action = len(action) >= 12 and any(w.isalpha() and len(w) >= 3 for w in action.split())
    assert is_action, f"the fix is not an action: {fix!r}"
    assert fix_hint in fix, f"expected {fix_hint!r} in the fix: {message}"
    assert "unexpected" not in message, f"a catch-all, not the platform's own check: {message}"


def run_cli_subprocess(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real ``ks-platform`` console command (the venv's entry-point script)."""
    script = Path(sys.executable).parent / "ks-platform"
    fallback = [sys.executable, "-c", "import sys; from ks_platform.cli import main; sys.exit(main())"]
    command = [str(script)] if script.is_file() else fallback
    environment = {**os.environ, **(env or {})}
    return subprocess.run([*command, *argv], capture_output=True, text=True, timeout=300, cwd=REPO, env=environment)


# ------------------------------------------------------------------------------------------ (a) convert
@pytest.mark.parametrize("case", CORPUS, ids=[c.kind for c in CORPUS])
def test_convert(case, corpus, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["convert", str(corpus.folder(case)), "--out", str(out), "--quiet"])
    assert TRACEBACK not in stdout + stderr
    if case.phase in ("good", "sort") or case.converts:
        assert code == 0, stderr
        assert (out / "binary" / "binary.json").is_file()
        return
    assert code == 2, (code, stdout, stderr)
    assert_says_file_and_fix(stderr, corpus.named[case.kind], case.fix_hint)
    assert not out.exists() or list(out.rglob("*")) == [], f"convert left {list(out.rglob('*'))}"


SUBPROCESS_KINDS = [
    "glx meta not UTF-8",
    "raw sidecar nested 100k deep",
    "openephys oebin nested 100k deep",
    "nwb not HDF5",
    "plexon truncated",
    "kilosort4-settings.json a directory",
]


@pytest.mark.parametrize("kind", SUBPROCESS_KINDS)
def test_convert_through_the_real_command(kind, corpus, tmp_path):
    [case] = [c for c in CORPUS if c.kind == kind]
    out = tmp_path / "out"
    done = run_cli_subprocess(["convert", str(corpus.folder(case)), "--out", str(out), "--quiet"])
    assert TRACEBACK not in done.stdout + done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert_says_file_and_fix(done.stderr, corpus.named[case.kind], case.fix_hint)
    assert not out.exists() or list(out.rglob("*")) == []


# ------------------------------------------------------------------------------------------ discovery
@pytest.mark.parametrize("case", CORPUS, ids=[c.kind for c in CORPUS])
def test_discovery(case, corpus, discovered):
    keys, reasons = discovered
    assert set(GOOD) <= set(keys), reasons
    if case.phase == "found":
        assert case.name not in keys
        assert_says_file_and_fix(reasons[case.name], corpus.named[case.kind], case.fix_hint)
    else:
        assert case.name not in reasons, reasons.get(case.name)
        assert len(keys[case.name]) == 1


# ------------------------------------------------------------------------------------------ (b) register, (c) backfill
@pytest.fixture(scope="module")
def dagster_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


@pytest.fixture(scope="module")
def registered(corpus, dagster_home) -> subprocess.CompletedProcess:
    return run_cli_subprocess(["register"], {"DAGSTER_HOME": str(dagster_home), **corpus.env})


def _check_batch_report(stderr: str, corpus: Corpus) -> None:
    assert TRACEBACK not in stderr
    for case in FOUND:
        lines = [line for line in stderr.splitlines() if line.startswith(f"skipped {corpus.folder(case)}:")]
        assert len(lines) == 1, f"{case.kind}: {lines or stderr[-3000:]}"
        assert_says_file_and_fix(lines[0], corpus.named[case.kind], case.fix_hint)
    assert f"skipped {len(FOUND)} landing folder(s)" in stderr, stderr[-2000:]


def test_register_over_the_whole_corpus(registered, corpus, discovered):
    assert registered.returncode == 0, registered.stderr[-4000:]
    assert TRACEBACK not in registered.stdout
    _check_batch_report(registered.stderr, corpus)
    keys, _ = discovered
    expected = sorted(k for name in (*GOOD, *(c.name for c in REGISTERED)) for k in keys[name])
    assert sorted(registered.stdout.split()) == expected
    written = [p for p in corpus.store.rglob("*") if CATALOG_DIR not in p.relative_to(corpus.store).parts]
    assert written == [], "register wrote session outputs into the store (only the landing catalog belongs there)"


def test_backfill_dry_run_over_the_whole_corpus(corpus, discovered, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    argv = ["backfill", "--start", DATE.isoformat(), "--end", DATE.isoformat(), "--dry-run"]
    done = run_cli_subprocess(argv, {"DAGSTER_HOME": str(home), **corpus.env})
    assert done.returncode == 0, done.stderr[-4000:]
    assert TRACEBACK not in done.stdout
    _check_batch_report(done.stderr, corpus)
    keys, _ = discovered
    listed = [line.strip() for line in done.stdout.splitlines() if line.startswith("  ")]
    assert sorted(listed) == sorted(k for name in (*GOOD, *(c.name for c in REGISTERED)) for k in keys[name])
    assert "dry run: no backfill launched" in done.stdout


# ------------------------------------------------------------------------------------------ (d) sensor
def test_one_sensor_tick_over_the_whole_corpus(corpus, discovered, dagster_instance, monkeypatch):
    for name, value in corpus.env.items():
        monkeypatch.setenv(name, value)
    sensor = sensors.build_new_session_sensor(settle_seconds=0, marker_name="", max_sessions_per_tick=None)
    logs: list[logging.LogRecord] = []
    result = tick(sensor, dagster_instance, corpus.platform, logs=logs)
    keys, _ = discovered
    expected = sorted(k for name in (*GOOD, *(c.name for c in REGISTERED)) for k in keys[name])
    assert sorted(r.partition_key for r in result.run_requests) == expected
    warnings = [r.getMessage() for r in logs if r.levelno >= logging.WARNING]
    # An empty folder is a copy that has not started: it waits (said in the tick's debug log), it is not refused.
    waiting = [r.getMessage() for r in logs if r.getMessage().startswith("not complete yet:")]
    assert len(waiting) == 1 and f"{ROOT}/{EMPTY.name} (the folder is empty)" in waiting[0], waiting
    # The log is bounded: the first SHOWN refused folders in full, the rest counted by reason in one line.
    refused = [c for c in FOUND if c is not EMPTY]
    by_name = {c.name: c for c in refused}
    shown = [w for w in warnings if w.startswith("skipped landing folder ")]
    assert len(shown) == SHOWN and len(warnings) == SHOWN + 1, warnings
    for line in shown:
        case = by_name[line.removeprefix(f"skipped landing folder {ROOT}/").split(": /", 1)[0]]
        assert_says_file_and_fix(line, corpus.named[case.kind], case.fix_hint)
    [summary] = [w for w in warnings if w.startswith(f"skipped {len(refused) - SHOWN} more landing folder(s) ")]
    assert "`ks-platform sessions --skipped` lists each" in summary and " × " in summary
    # Every refused folder's own report (file and fix) is in the catalog, as `sessions --skipped` lists it.
    code, out, err = run_cli(["sessions", "--skipped", "--json"])
    assert code == 0 and TRACEBACK not in err, err
    reasons = {Path(row["folder"]).name: row["reason"] for row in json.loads(out)}
    for case in refused:
        assert_says_file_and_fix(reasons[case.name], corpus.named[case.kind], case.fix_hint)


# ------------------------------------------------------------------------------------------ (e) Dagster runs
@pytest.fixture(scope="module")
def runs(corpus, discovered) -> Iterator[dict[str, object]]:
    """Ingest (and for ``sort`` entries, sort) runs of every registered corpus entry + one good session after."""
    keys, _ = discovered
    with dg.instance_for_test() as instance:
        ws = Workspace(corpus.landing, corpus.base / "run_store", instance)
        results: dict[str, object] = {}
        for case in REGISTERED:
            [key] = keys[case.name]
            assets = INGEST + (["sorted_units"] if case.phase == "sort" else [])
            results[case.kind] = (key, ws.run_assets(key, assets))
        [good_key] = keys[GOOD[1]]
        results["good"] = (good_key, ws.run_assets(good_key, INGEST))
        yield {"ws": ws, "results": results}


RUN_CASES = [c for c in REGISTERED if c.phase != "good"]


@pytest.mark.parametrize("case", RUN_CASES, ids=[c.kind for c in RUN_CASES])
def test_dagster_run(case, runs, corpus):
    key, result = runs["results"][case.kind]
    assert not result.success
    [message] = failure_messages(result)
    assert_says_file_and_fix(message, corpus.named[case.kind], case.fix_hint)
    store = runs["ws"].store(key)
    failed = {"sort": ["sorting", "phy", "metrics"], "ingest": ["probe", "sorting"]}[case.phase]
    assert not any((store.dir / name).exists() for name in failed), sorted(p.name for p in store.dir.iterdir())
    assert leftovers(store.dir) == []
    good_key, good = runs["results"]["good"]
    assert good.success and good.asset_materializations_for_node("recording_binary") != []


GOOD_CASES = [c for c in REGISTERED if c.phase == "good"]


@pytest.mark.parametrize("case", GOOD_CASES, ids=[c.kind for c in GOOD_CASES])
def test_dagster_run_of_a_hostile_looking_good_session(case, runs):
    key, result = runs["results"][case.kind]
    assert result.success, failure_messages(result)
    store = runs["ws"].store(key)
    assert (store.binary_dir / "binary.json").is_file() and (store.probe_dir / "probe_map.json").is_file()
    assert store.dir.parent == (runs["ws"].store_root / "sessions").resolve() and leftovers(store.dir) == []


# ------------------------------------------------------------------------------------------ landing roots
def _root_cases(base: Path) -> tuple[str, dict[str, Path]]:
    """KS_PLATFORM_LANDING with one good root and three bad ones: missing, a file, a name with ``__``."""
    good, badly_named = base / "roots" / "ok", base / "roots" / "named"
    _glx(good / "good_glx")
    _glx(badly_named / "session_in_bad_root")
    (base / "roots" / "a_file").write_text("not a folder")
    roots = {"ok": good, "gone": base / "roots" / "missing", "afile": base / "roots" / "a_file", "a__b": badly_named}
    return ",".join(f"{name}={path}" for name, path in roots.items()), roots


def _root_warnings_ok(lines: list[str], roots: dict[str, Path]) -> None:
    for name in ("gone", "afile", "a__b"):
        mine = [line for line in lines if f"landing root {name}={roots[name]}" in line]
        assert len(mine) == 1, (name, lines)
        assert "Fix:" in mine[0] and TRACEBACK not in mine[0], mine[0]
    assert any("does not exist" in line and "create it" in line for line in lines)
    assert any("is a file" in line and "KS_PLATFORM_LANDING" in line.split("Fix:")[1] for line in lines)
    assert any("a__b" in line and "rename it" in line.split("Fix:")[1] for line in lines)


def test_bad_landing_roots_are_reported_by_register_and_the_others_registered(tmp_path, monkeypatch):
    spec, roots = _root_cases(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("KS_PLATFORM_LANDING", spec)
    monkeypatch.setenv("KS_PLATFORM_STORE", str(tmp_path / "store"))
    code, stdout, stderr = run_cli(["register"])
    assert code == 0, stderr
    assert stdout.split() == [f"{DATE}__ok__good_glx__imec0"]
    assert TRACEBACK not in stdout + stderr
    _root_warnings_ok([line for line in stderr.splitlines() if line.startswith("warning:")], roots)
    in_bad_root = roots["a__b"] / "session_in_bad_root"
    [skipped] = [line for line in stderr.splitlines() if line.startswith(f"skipped {in_bad_root}:")]
    assert "Fix:" in skipped and "landing root" in skipped


def test_bad_landing_roots_are_warned_about_by_the_sensor_and_the_others_requested(tmp_path, dagster_instance):
    spec, roots = _root_cases(tmp_path)
    platform = PlatformResource(store_root=str(tmp_path / "store"), landing_roots=spec, backend="cpu")
    logs: list[logging.LogRecord] = []
    sensor = sensors.build_new_session_sensor(settle_seconds=0, marker_name="")
    result = tick(sensor, dagster_instance, platform, logs=logs)
    assert [r.partition_key for r in result.run_requests] == [f"{DATE}__ok__good_glx__imec0"]
    _root_warnings_ok([r.getMessage() for r in logs if r.levelno >= logging.WARNING], roots)


def test_a_malformed_landing_setting_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("KS_PLATFORM_LANDING", "rig1")
    code, stdout, stderr = run_cli(["register"])
    assert code == 2 and TRACEBACK not in stdout + stderr
    assert "KS_PLATFORM_LANDING" in stderr and "Fix: write it as name=path" in stderr, stderr


# ------------------------------------------------------------------------------------------ hand-made partition keys
TRAVERSAL_KEYS = [
    "2026-03-02__rig1__x/../../../../elsewhere/pwned__imec0",
    "2026-03-02__rig1__x/../../../../elsewhere/pwned",
    "2026-03-02__rig1__..__imec0",
    "../../elsewhere__rig1__good_glx__imec0",
]


@pytest.mark.parametrize("key", TRAVERSAL_KEYS)
def test_a_partition_key_with_traversal_is_refused_and_writes_nothing(key, corpus, tmp_path):
    with dg.instance_for_test() as instance:
        ws = Workspace(corpus.landing, tmp_path / "store", instance)
        result = ws.run_assets(key, INGEST)
    assert not result.success
    messages = failure_messages(result)
    assert len(messages) == 1, messages
    [message] = messages
    assert TRACEBACK not in message and "not a partition key of this platform" in message and "Fix:" in message, message
    assert not (tmp_path / "store").exists() or list((tmp_path / "store").rglob("*")) == []
    assert not list(corpus.base.rglob("pwned")) and not list(tmp_path.rglob("pwned"))
    assert not (corpus.base / "elsewhere").exists() and not (tmp_path / "elsewhere").exists()


# ------------------------------------------------------------------------------------------ read-only store
@pytest.fixture
def read_only_store(tmp_path) -> Iterator[Path]:
    """A real read-only filesystem (tmpfs remounted ro): root's capabilities do not get around it."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.fail("this test mounts a read-only tmpfs: run it as root (CI does)")
    store = tmp_path / "ro_store"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(store)], check=True)
    try:
        (store / "sessions").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(store)], check=True)
        with pytest.raises(OSError):
            (store / "probe").write_text("x")
        yield store
    finally:
        subprocess.run(["umount", str(store)], check=False)


def test_a_read_only_store_fails_the_step_with_the_store_and_the_fix(read_only_store, corpus, discovered):
    keys, _ = discovered
    [key] = keys[GOOD[0]]
    with dg.instance_for_test() as instance:
        ws = Workspace(corpus.landing, read_only_store, instance)
        result = ws.run_assets(key, INGEST)
    assert not result.success
    messages = failure_messages(result)
    assert len(messages) == 1, messages
    [message] = messages
    assert TRACEBACK not in message and "PermissionError" not in message and "Errno" not in message, message
    assert str(read_only_store) in message and "store cannot be written" in message, message
    assert "KS_PLATFORM_STORE" in message.split("Fix:", 1)[1], message
    assert list(read_only_store.rglob("*")) == [read_only_store / "sessions"]


def test_convert_into_a_read_only_folder_says_so(read_only_store, corpus):
    out = read_only_store / "out"
    code, stdout, stderr = run_cli(["convert", str(corpus.landing / GOOD[1]), "--out", str(out), "--quiet"])
    assert code == 2 and TRACEBACK not in stdout + stderr, stderr
    assert str(read_only_store) in stderr and "store cannot be written" in stderr and "Fix:" in stderr, stderr


# ------------------------------------------------------------------------------------------ NaN probe through `sort`
def test_sort_refuses_a_probe_with_nan_positions_before_kilosort(corpus, tmp_path):
    [case] = [c for c in CORPUS if c.kind == "raw probe positions NaN"]
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["sort", str(corpus.folder(case)), "--out", str(out), "--quiet"])
    assert code == 2 and TRACEBACK not in stdout + stderr, stderr
    assert_says_file_and_fix(stderr, corpus.named[case.kind], case.fix_hint)
    assert not (out / "probe").exists() and not (out / "sorting").exists()


def test_every_folder_of_the_corpus_gets_keys_of_its_own(discovered):
    keys, _ = discovered
    every = [key for folder_keys in keys.values() for key in folder_keys]
    assert len(every) == len(set(every)), "two folders share a partition key"
    assert all(key.isprintable() and "\n" not in key for key in every)


# ------------------------------------------------------------------------------------------ landing catalog hazards
# Issue #25: what the store, the catalog or the landing root can do to the catalog. Each hazard is applied to a small
# landing root (four sessions, one retired, one folder that is not a session) whose store is a real tmpfs, then
# `register`, `sessions`, `backfill --dry-run` and a sensor tick run while it lasts: no traceback, exit 0 or one
# "error:" line with its fix; then the hazard is undone and nothing the catalog held is lost.
HAZARD_SESSIONS = ("h0_g0", "h1_g0", "h2_g0", "h3_g0")
CATALOG_WAIT = "1"


@dataclass
class HazardLab:
    base: Path
    landing: Path
    store: Path
    env: dict[str, str]

    @property
    def catalog(self) -> Path:
        return self.store / CATALOG_DIR / "sessions.sqlite"

    @property
    def platform(self) -> PlatformResource:
        return PlatformResource(store_root=str(self.store), landing_roots=f"{ROOT}={self.landing}", backend="cpu")

    def session(self, name: str, salt: int) -> Path:
        folder = _glx(self.landing / name)
        with open(next(folder.glob("*.ap.bin")), "r+b") as handle:
            handle.write(salt.to_bytes(2, "little") * 16)  # each its own fingerprint
        return folder

    def listing(self) -> dict[str, dict]:
        code, out, err = run_cli(["sessions", "--json"])
        assert code == 0 and TRACEBACK not in err, err
        return {row["key"]: row for row in json.loads(out)}


def _fill(lab: HazardLab) -> Callable[[], None]:
    with open(lab.store / "filler", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return lambda: (lab.store / "filler").unlink()


def _read_only(lab: HazardLab) -> Callable[[], None]:
    subprocess.run(["mount", "-o", "remount,ro", str(lab.store)], check=True)
    return lambda: subprocess.run(["mount", "-o", "remount,rw", str(lab.store)], check=True)


def _holding(script: str) -> Callable[[HazardLab], Callable[[], None]]:
    def apply(lab: HazardLab) -> Callable[[], None]:
        process = subprocess.Popen([sys.executable, "-c", script, str(lab.catalog)], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "held"
        return lambda: (process.kill(), process.wait())

    return apply


_SQLITE_LOCK = (
    "import sqlite3, sys, time\ndb = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "db.execute('BEGIN IMMEDIATE')\nprint('held', flush=True)\ntime.sleep(120)\n"
)
_REFRESH_LOCK = (
    "import fcntl, os, sys, time\nhandle = open(os.path.join(os.path.dirname(sys.argv[1]), '.lock'), 'a+')\n"
    "fcntl.flock(handle.fileno(), fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(120)\n"
)


def _damage(keep: int) -> Callable[[HazardLab], None]:
    """Overwrite the catalog after its first ``keep`` bytes (0: the header too)."""

    def apply(lab: HazardLab) -> None:
        data = lab.catalog.read_bytes()
        lab.catalog.write_bytes(data[:keep] + b"\xa5" * (len(data) - keep))

    return apply


def _moved_away(names: Callable[[HazardLab], list[str]]) -> Callable[[HazardLab], Callable[[], None]]:
    def apply(lab: HazardLab) -> Callable[[], None]:
        aside = lab.base / "aside"
        aside.mkdir()
        moved = names(lab)
        for name in moved:
            shutil.move(lab.landing / name, aside / name)
        return lambda: [shutil.move(aside / name, lab.landing / name) for name in moved]

    return apply


def _root_renamed(lab: HazardLab) -> Callable[[], None]:
    lab.landing.rename(lab.base / "unmounted")
    return lambda: (lab.base / "unmounted").rename(lab.landing)


def _added(build: Callable[[HazardLab], list[Path]]) -> Callable[[HazardLab], Callable[[], None]]:
    def apply(lab: HazardLab) -> Callable[[], None]:
        made = build(lab)
        return lambda: [p.unlink() if p.is_symlink() else shutil.rmtree(p) for p in made]

    return apply


def _link_inside(lab: HazardLab) -> list[Path]:
    link = lab.landing / "alias_g0"
    os.symlink(lab.landing / HAZARD_SESSIONS[0], link)
    return [link]


def _colliding_names(lab: HazardLab) -> list[Path]:
    return [lab.session("rec) '^g0", 11), lab.session("rec)~)[g0", 12)]  # one derived key name (8 hex digits)


def _junk(lab: HazardLab) -> list[Path]:
    made = []
    for index in range(500):
        folder = lab.landing / f"junk{index:04d}"
        folder.mkdir()
        if index % 2:
            (folder / "notes.txt").write_text("not a recording")
        made.append(folder)
    return made


def _future_file(lab: HazardLab) -> None:
    os.utime(next((lab.landing / HAZARD_SESSIONS[1]).glob("*.meta")), (4102444800, 4102444800))


def _schema_1(lab: HazardLab) -> None:
    """The catalog as the previous version wrote it (schema 1: no absence times, no first-seen times)."""
    import sqlite3

    db = sqlite3.connect(lab.catalog, isolation_level=None)
    try:
        db.execute("ALTER TABLE folders DROP COLUMN absent_since")
        db.execute("DROP TABLE pending")
        db.execute("UPDATE meta SET value='1' WHERE name='schema'")
    finally:
        db.close()


@dataclass(frozen=True)
class Hazard:
    kind: str
    apply: Callable[[HazardLab], Callable[[], None] | None]  # returns what undoes it (None: nothing to undo)
    #: the catalog cannot be written while it lasts: register and backfill say so in one line
    blocks_writers: bool = False
    #: the catalog cannot be read either while it lasts (damaged): sessions says so in one line
    blocks_readers: bool = False


HAZARDS = [
    Hazard("store full", _fill, blocks_writers=True),
    Hazard("store read-only", _read_only, blocks_writers=True),
    Hazard("catalog locked by SQLite", _holding(_SQLITE_LOCK), blocks_writers=True),
    Hazard("catalog locked by a stuck refresh", _holding(_REFRESH_LOCK), blocks_writers=True),
    Hazard("catalog header damaged", _damage(0), blocks_readers=True),
    Hazard("catalog pages damaged", _damage(4096), blocks_readers=True),
    Hazard("catalog of the previous schema", _schema_1),
    Hazard("landing root empty (unplugged)", _moved_away(lambda lab: list(HAZARD_SESSIONS) + ["notes_only"])),
    Hazard("landing root gone (unmounted)", _root_renamed),
    Hazard("landing root lost most folders", _moved_away(lambda lab: list(HAZARD_SESSIONS[1:]) + ["notes_only"])),
    Hazard("session folder linked inside the root", _added(_link_inside)),
    Hazard("two names with one derived key", _added(_colliding_names)),
    Hazard("500 junk folders", _added(_junk)),
    Hazard("a file dated in 2100", _future_file),
]


@pytest.fixture
def hazard_lab(tmp_path, monkeypatch) -> Iterator[HazardLab]:
    """Four sessions and a notes-only folder registered, a fifth session retired; the store on its own tmpfs."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.fail("these tests mount a tmpfs store: run them as root (CI does)")
    store = tmp_path / "store"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(store)], check=True)
    try:
        home = tmp_path / "home"
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        env = {
            "DAGSTER_HOME": str(home),
            "KS_PLATFORM_STORE": str(store),
            "KS_PLATFORM_LANDING": f"{ROOT}={tmp_path / 'landing'}",
            "KS_PLATFORM_CATALOG_WAIT_SECONDS": CATALOG_WAIT,
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        lab = HazardLab(tmp_path, tmp_path / "landing", store, env)
        for salt, name in enumerate((*HAZARD_SESSIONS, "gone_g0"), start=1):
            lab.session(name, salt)
        _only("notes.txt", "not a recording")(lab.landing / "notes_only")
        assert run_cli(["register"])[0] == 0
        shutil.rmtree(lab.landing / "gone_g0")
        monkeypatch.setenv("KS_PLATFORM_RETIRE_AFTER_SECONDS", "0")
        assert run_cli(["register"])[0] == 0
        monkeypatch.delenv("KS_PLATFORM_RETIRE_AFTER_SECONDS")
        yield lab
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(store)], check=False)
        if subprocess.run(["umount", str(store)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(store)], check=False)  # a handle left open by a failed check


def _said_once(code: int, err: str, blocked: bool) -> None:
    assert TRACEBACK not in err, err
    if not blocked:
        assert code == 0, err
        return
    assert code == 2, err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Fix:" in line and str(Path(line.split(": ", 2)[1])).startswith("/"), line


@pytest.mark.parametrize("hazard", HAZARDS, ids=[h.kind for h in HAZARDS])
def test_a_catalog_hazard_is_no_traceback_and_loses_nothing(hazard, hazard_lab):
    lab = hazard_lab
    before = lab.listing()
    assert [row["state"] for row in before.values()].count("retired") == 1 and len(before) == 5
    undo = hazard.apply(lab)
    try:
        code, out, err = run_cli(["sessions", "--json"])
        _said_once(code, err, hazard.blocks_readers)
        if not hazard.blocks_readers:
            assert {row["key"]: row for row in json.loads(out)} == before
        code, _, err = run_cli(["register"])
        _said_once(code, err, hazard.blocks_writers)
        code, _, err = run_cli(["backfill", "--start", DATE.isoformat(), "--end", DATE.isoformat(), "--dry-run"])
        _said_once(code, err, hazard.blocks_writers)
        with dg.instance_for_test() as instance:
            logs: list[logging.LogRecord] = []
            result = tick(
                sensors.build_new_session_sensor(settle_seconds=0, marker_name=""), instance, lab.platform, logs=logs
            )
        assert not any(TRACEBACK in r.getMessage() for r in logs)
        if hazard.blocks_writers:
            assert result.run_requests == [] and "Fix:" in result.skip_reason.skip_message
    finally:
        if undo is not None:
            undo()
    code, _, err = run_cli(["register"])
    assert code == 0 and TRACEBACK not in err, err
    after = lab.listing()
    for key, row in before.items():  # nothing lost: every key is still there, as it was
        assert key in after, key
        assert after[key]["state"] == row["state"] and after[key]["cause"] == row["cause"], (key, after[key])
        if row["state"] == "retired":
            assert after[key] == row, key

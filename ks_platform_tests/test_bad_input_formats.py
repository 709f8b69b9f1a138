"""Bad input in every format, through the real Dagster job's ingest steps (issue #3's "Bad input" list).

``test_bad_input_matrix.py`` covers the SpikeGLX / raw-float / probe.json / NWB-without-series / .plx-magic
cases. This table adds the same kinds of failure for the other formats (Open Ephys, NWB, Plexon, raw binary,
.prb and Kilosort .mat probes), a missing header file per format, and **unreadable permissions**.

Each case: the bad session's run fails with ONE message naming the file and containing ``Fix:``; the store
holds nothing of it (no manifest, no probe map, no binary, no temporary or swapped-out paths); and a good
session materialized next, with the same definitions and instance, gets its ``recording_binary``.

Permissions: the tests run as root, and root's CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH ignore permission bits.
So the permission cases run the Dagster job in a child process whose capability bounding set has both
dropped before it execs Python (``prctl(PR_CAPBSET_DROP)``): the child is uid 0 without those capabilities, so
the kernel applies the mode bits and ``open`` of a ``chmod 000`` file really fails with EACCES. The child
checks that first and refuses to report anything if it could still read such a file. Run as a non-root user,
the child needs no dropping: the mode bits already apply.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import h5py
import numpy as np
import probeinterface as pi
import pytest

from ks_platform.core.formats import plexon
from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session
from ks_platform_tests.conftest import TEST_SPEC, failure_messages, leftovers
from ks_platform_tests.formats import synthetic as syn
from ks_platform_tests.writers import write_nwb_session, write_openephys_session, write_plexon_session

DATE = TEST_SPEC.recording_date
INGEST = ["raw_recording", "probe_map", "recording_binary"]
N_SAMPLES = 6000  # 0.2 s × 32 channels: the ingest steps take a second or two


# ------------------------------------------------------------------------------------------ builders
def _traces() -> np.ndarray:
    return syn.traces(n_samples=N_SAMPLES)


def _openephys(folder: Path) -> Path:
    return write_openephys_session(folder, _traces(), syn.FS, syn.positions(), DATE, syn.shank_ids())


def _nwb(folder: Path, as_float: bool = False) -> Path:
    return write_nwb_session(folder, _traces(), syn.FS, syn.positions(), DATE, syn.shank_ids(), as_float=as_float)


def _plexon(folder: Path) -> Path:
    return write_plexon_session(folder, _traces(), syn.FS, syn.positions(), DATE, syn.shank_ids())


def _spikeglx(folder: Path) -> Path:
    return make_spikeglx_session(folder, DemoSessionSpec(duration_s=0.2, n_units=2, seed=5, recording_date=DATE))


def _raw(folder: Path, probe_name: str = "probe.json", n_channels: int = syn.N_CHANNELS) -> Path:
    folder.mkdir(parents=True)
    _traces()[:, :n_channels].tofile(folder / "rec.bin")
    probe = pi.Probe(ndim=2, si_units="um")
    probe.set_contacts(positions=syn.positions(), shapes="square", shape_params={"width": 12})
    probe.set_device_channel_indices(np.arange(syn.N_CHANNELS))
    probe.set_shank_ids([str(s) for s in syn.shank_ids()])
    group = pi.ProbeGroup()
    group.add_probe(probe)
    if probe_name.endswith(".prb"):
        pi.write_prb(folder / probe_name, group)
    elif probe_name.endswith(".mat"):
        from scipy.io import savemat

        savemat(
            folder / probe_name,
            {
                "chanMap": np.arange(1, 33.0),
                "chanMap0ind": np.arange(32.0),
                "xcoords": syn.positions()[:, 0],
                "ycoords": syn.positions()[:, 1],
                "kcoords": np.asarray(syn.shank_ids(), float) + 1,
                "connected": np.ones(32),
                "fs": syn.FS,
            },
        )
    else:
        pi.write_probeinterface(folder / probe_name, group)
    sidecar = {
        "sampling_frequency": syn.FS,
        "n_channels": n_channels,
        "dtype": "int16",
        "probe_file": probe_name,
        "recording_date": DATE.isoformat(),
    }
    (folder / "rec.json").write_text(json.dumps(sidecar))
    return folder


# ------------------------------------------------------------------------------------------ damage
def _truncate(path: Path, size: int | None = None) -> Path:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 3 if size is None else size)
    return path


def _oe_file(folder: Path, name: str) -> Path:
    return next(folder.rglob(name))


def _edit_json(path: Path, edit: Callable[[dict], None]) -> Path:
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload))
    return path


def _oebin_num_channels(folder: Path) -> Path:
    def edit(oebin: dict) -> None:
        stream = oebin["continuous"][0]
        stream["channels"].append(dict(stream["channels"][0], channel_name="CH33"))
        stream["num_channels"] = len(stream["channels"])

    _edit_json(_oe_file(folder, "structure.oebin"), edit)
    return _oe_file(folder, "continuous.dat")  # named, with structure.oebin as the other suspect


def _nwb_poke(folder: Path, value: float) -> Path:
    path = folder / "session.nwb"
    with h5py.File(path, "r+") as handle:
        series = [obj for obj in handle["acquisition"].values() if isinstance(obj, h5py.Group) and "data" in obj]
        series[0]["data"][1234, 5] = value
    return path


def _nwb_fewer_electrodes(folder: Path) -> Path:
    path = folder / "session.nwb"
    with h5py.File(path, "r+") as handle:
        [group] = [obj for obj in handle["acquisition"].values() if isinstance(obj, h5py.Group) and "electrodes" in obj]
        region = group["electrodes"]
        attributes = dict(region.attrs)
        del group["electrodes"]
        shorter = group.create_dataset("electrodes", data=np.arange(syn.N_CHANNELS - 1))
        for key, value in attributes.items():
            shorter.attrs[key] = value
    return path


def _plx_header(field: str, value: int) -> Callable[[Path], Path]:
    def damage(folder: Path) -> Path:
        path = folder / "session.plx"
        header = np.fromfile(path, dtype=plexon.FILE_HEADER, count=1)
        header[0][field] = value
        with open(path, "r+b") as handle:
            handle.write(header.tobytes())
        return path

    return damage


def _sidecar(**changes) -> Callable[[Path], Path]:
    """Edit the sidecar; the size check names the data file (and the sidecar as the other suspect)."""
    return lambda folder: (
        _edit_json(folder / "rec.json", lambda payload: payload.update(changes)),
        folder / "rec.bin",
    )[1]


def _prb_duplicate_channel(folder: Path) -> Path:
    """A hand-written .prb (as labs keep them) whose third contact repeats channel 1."""
    channels = list(range(syn.N_CHANNELS))
    channels[2] = 1
    geometry = {c: tuple(xy) for c, xy in zip(range(syn.N_CHANNELS), syn.positions().tolist())}
    path = folder / "probe.prb"
    path.write_text(
        f"channel_groups = {{\n    0: {{\n        'channels': {channels},\n        'geometry': {geometry},\n    }}\n}}\n"
    )
    return path


def _chmod(relative: str | Callable[[Path], Path], mode: int = 0) -> Callable[[Path], Path]:
    def damage(folder: Path) -> Path:
        target = relative(folder) if callable(relative) else next(folder.rglob(relative))
        target.chmod(mode)
        return target

    return damage


def _mixed_openephys_and_nwb(folder: Path) -> Path:
    _nwb(folder / "extra_nwb")
    shutil.move(folder / "extra_nwb" / "session.nwb", folder / "session.nwb")
    shutil.rmtree(folder / "extra_nwb")
    return folder


# ------------------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class BadInput:
    """One bad input: build a session, damage it, and what its one failure message must contain."""

    kind: str
    build: Callable[[Path], Path]
    damage: Callable[[Path], Path]  # (session folder) -> the file or folder the message must name
    fix_hint: str
    problem_hint: str = ""
    #: The first output the failing step would write: it and every later ingest output must be absent
    #: (outputs of earlier steps that succeeded are complete and may stay).
    failed_output: str = "raw_recording.json"


CASES = [
    # truncated / zero-length data files
    BadInput(
        "openephys truncated continuous.dat",
        _openephys,
        lambda f: _truncate(_oe_file(f, "continuous.dat")),
        "copy continuous.dat again",
        "not a multiple",
    ),
    BadInput(
        "openephys zero-length continuous.dat",
        _openephys,
        lambda f: _truncate(_oe_file(f, "continuous.dat"), 0),
        "copy the recording again",
        "empty",
    ),
    BadInput("raw truncated .bin", _raw, lambda f: _truncate(f / "rec.bin"), "copy the file again", "not a multiple"),
    BadInput("raw zero-length .bin", _raw, lambda f: _truncate(f / "rec.bin", 0), "copy the recording again", "empty"),
    BadInput(
        "nwb truncated file",
        _nwb,
        lambda f: _truncate(f / "session.nwb", (f / "session.nwb").stat().st_size // 2),
        "copy the file again",
        "cannot read the NWB file",
    ),
    BadInput("nwb zero-length file", _nwb, lambda f: _truncate(f / "session.nwb", 0), "copy the file again", "empty"),
    BadInput(
        "plexon truncated .plx",
        _plexon,
        lambda f: _truncate(f / "session.plx", (f / "session.plx").stat().st_size - 5000),
        "copy the .plx again",
        "truncated",
    ),
    BadInput(
        "plexon zero-length .plx",
        _plexon,
        lambda f: _truncate(f / "session.plx", 0),
        "copy the .plx again",
        "7504-byte",
    ),
    # header channel count / sampling rate disagreeing with the data
    BadInput(
        "openephys oebin lists more channels than stored",
        _openephys,
        _oebin_num_channels,
        "structure.oebin that belongs to it",
        "35 channels",
    ),
    BadInput(
        "raw sidecar channel count disagrees with the size",
        _raw,
        _sidecar(n_channels=31),
        "correct the sidecar",
        "31 channels",
    ),
    BadInput(
        "raw sidecar dtype disagrees with the size",
        _raw,
        _sidecar(dtype="float32", n_channels=7),
        "correct the sidecar",
        "7 channels x 4 bytes",
    ),
    BadInput(
        "nwb electrodes region disagrees with the data columns",
        _nwb,
        _nwb_fewer_electrodes,
        "one electrodes-table row per data column",
        "31",
    ),
    BadInput(
        "plexon header slow-channel count disagrees with the data",
        _plexon,
        _plx_header("NumSlowChannels", 2 * syn.N_CHANNELS - 1),
        "copy the .plx again",
        "corrupt data block",
    ),
    # missing meta / header files
    BadInput(
        "openephys missing structure.oebin",
        _openephys,
        lambda f: (_oe_file(f, "structure.oebin").unlink(), next(f.rglob("continuous")).parent / "structure.oebin")[1],
        "structure.oebin",
        "missing",
    ),
    BadInput(
        "raw missing sidecar",
        _raw,
        lambda f: ((f / "rec.json").unlink(), f / "rec.bin")[1],
        "add rec.json",
        "no sidecar",
    ),
    BadInput(
        "raw sidecar names a missing probe file",
        _raw,
        lambda f: ((f / "probe.json").unlink(), f / "rec.json")[1],
        "put the probe file",
        "probe.json",
    ),
    # mixed formats
    BadInput(
        "openephys and nwb in one folder",
        _openephys,
        _mixed_openephys_and_nwb,
        "one recording format per session folder",
        "openephys, nwb",
    ),
    # NaN / inf in float sources
    BadInput(
        "nwb float with NaN",
        lambda f: _nwb(f, as_float=True),
        lambda f: _nwb_poke(f, float("nan")),
        "without NaN/inf",
        "sample 1234",
        "binary",
    ),
    BadInput(
        "nwb float with inf",
        lambda f: _nwb(f, as_float=True),
        lambda f: _nwb_poke(f, float("-inf")),
        "without NaN/inf",
        "sample 1234",
        "binary",
    ),
    # probes
    BadInput(
        ".prb with a duplicate channel",
        lambda f: _raw(f, "probe.prb"),
        _prb_duplicate_channel,
        "its own channel index",
        "share a channel",
        "probe",
    ),
    BadInput(
        "kilosort .mat with more channels than the data",
        lambda f: _raw(f, "chanMap.mat", n_channels=16),
        lambda f: f / "chanMap.mat",
        "probe file that matches",
        "only 16 channels",
        "probe",
    ),
    # corrupt .plx header
    BadInput(
        "plexon impossible channel counts in the header",
        _plexon,
        _plx_header("NumDSPChannels", -7),
        "copy the .plx again",
        "impossible channel counts",
    ),
    BadInput(
        "plexon unsupported version in the header",
        _plexon,
        _plx_header("Version", 3),
        "re-save the file as .plx",
        "version 3",
    ),
]

#: Unreadable files and folders: run without root's permission override (see the module docstring).
PERMISSION_CASES = [
    BadInput("unreadable spikeglx .ap.bin", _spikeglx, _chmod("*.ap.bin"), "chmod a+r", "permission denied"),
    BadInput("unreadable spikeglx .ap.meta", _spikeglx, _chmod("*.ap.meta"), "chmod a+r", "permission denied"),
    BadInput(
        "unreadable openephys continuous.dat", _openephys, _chmod("continuous.dat"), "chmod a+r", "permission denied"
    ),
    BadInput(
        "unreadable openephys structure.oebin", _openephys, _chmod("structure.oebin"), "chmod a+r", "permission denied"
    ),
    BadInput(
        "unlistable openephys record node folder",
        _openephys,
        _chmod("Record Node 101"),
        "chmod a+r",
        "permission denied",
    ),
    BadInput("unreadable nwb file", _nwb, _chmod("session.nwb"), "chmod a+r", "permission denied"),
    BadInput("unreadable .plx", _plexon, _chmod("session.plx"), "chmod a+r", "permission denied"),
    BadInput("unreadable raw sidecar", _raw, _chmod("rec.json"), "chmod a+r", "permission denied"),
    BadInput("unreadable raw .bin", _raw, _chmod("rec.bin"), "chmod a+r", "permission denied"),
    BadInput("unreadable probe file", _raw, _chmod("probe.json"), "chmod a+r", "permission denied"),
]


# ------------------------------------------------------------------------------------------ running
def _prepare(case: BadInput, landing: Path) -> tuple[Path, Path, Path]:
    """Build the bad and the good session in ``landing``; return (bad folder, named path, good folder)."""
    bad = case.build(landing / "bad_session")
    named = case.damage(bad)
    good = _spikeglx(landing / "good_session")
    return bad, named, good


def _check_outcome(case: BadInput, named: Path, messages: list[str], store_dir: Path, good_ok: bool) -> None:
    assert len(messages) == 1, messages
    [message] = messages
    assert str(named) in message, f"the message does not name {named}: {message}"
    assert "Fix:" in message and case.fix_hint in message.split("Fix:", 1)[1] and case.problem_hint in message, message
    outputs = ["raw_recording.json", "probe", "binary"]
    for output in outputs[outputs.index(case.failed_output) :] if case.failed_output != "probe" else ["probe"]:
        assert not (store_dir / output).exists(), f"{output} of the bad session left in the store"
    assert leftovers(store_dir) == []
    assert good_ok, "the good session of the same batch did not get its recording_binary"


def _ingest(workspace_like, key: str):
    return workspace_like.run_assets(key, INGEST)


@pytest.mark.parametrize("case", CASES, ids=[c.kind for c in CASES])
def test_bad_input_in_every_format(case, workspace):
    bad, named, good = _prepare(case, workspace.landing)
    result = _ingest(workspace, workspace.key(bad, DATE))
    assert not result.success
    good_result = _ingest(workspace, workspace.key(good, DATE))
    good_ok = good_result.success and good_result.asset_materializations_for_node("recording_binary") != []
    _check_outcome(case, named, failure_messages(result), workspace.store(workspace.key(bad, DATE)).dir, good_ok)


# --- permissions: one child process without CAP_DAC_OVERRIDE runs every case (imports paid once)
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _drop_permission_override() -> None:
    """preexec_fn: drop the two capabilities that let root ignore mode bits; exec then keeps them dropped."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@pytest.fixture(scope="module")
def permission_outcomes(tmp_path_factory) -> dict[str, dict]:
    """Build every permission case, run them all in one unprivileged child, return its per-case report."""
    base = tmp_path_factory.mktemp("permissions")
    jobs = []
    for number, case in enumerate(PERMISSION_CASES):
        landing = base / f"case{number}" / "landing"
        landing.mkdir(parents=True)
        bad, named, good = _prepare(case, landing)
        jobs.append(
            {
                "kind": case.kind,
                "landing": str(landing),
                "store": str(base / f"case{number}" / "store"),
                "bad": bad.name,
                "good": good.name,
                "named": str(named),
            }
        )
    canary = base / "canary"
    canary.write_text("must not be readable in the child")
    canary.chmod(0)
    request = base / "request.json"
    request.write_text(json.dumps({"jobs": jobs, "canary": str(canary), "date": DATE.isoformat()}))
    child = subprocess.run(
        [sys.executable, "-m", "ks_platform_tests.test_bad_input_formats", str(request)],
        preexec_fn=_drop_permission_override,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parent.parent,
    )
    try:
        for path in base.rglob("*"):  # let pytest clean up
            path.chmod(0o755 if path.is_dir() else 0o644)
    except OSError:
        pass
    assert child.returncode == 0, child.stderr[-4000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    return {entry["kind"]: entry for entry in report}


@pytest.mark.parametrize("case", PERMISSION_CASES, ids=[c.kind for c in PERMISSION_CASES])
def test_unreadable_input_in_every_format(case, permission_outcomes):
    outcome = permission_outcomes[case.kind]
    assert not outcome["bad_success"]
    _check_outcome(case, Path(outcome["named"]), outcome["messages"], Path(outcome["store_dir"]), outcome["good_ok"])


def _child_main(request_path: str) -> int:
    """Run in the child: refuse to go on if mode bits are ignored, then run each case's bad and good session."""
    from ks_platform_tests.conftest import Workspace

    request = json.loads(Path(request_path).read_text())
    try:
        Path(request["canary"]).read_text()
    except PermissionError:
        pass
    else:
        print(
            "the child can read a chmod 000 file: permission bits are not enforced, the test would prove nothing",
            file=sys.stderr,
        )
        return 3
    date = dt.date.fromisoformat(request["date"])
    report = []
    with dg.instance_for_test() as instance:
        for job in request["jobs"]:
            ws = Workspace(Path(job["landing"]), Path(job["store"]), instance)
            bad_key, good_key = ws.key(ws.landing / job["bad"], date), ws.key(ws.landing / job["good"], date)
            result = _ingest(ws, bad_key)
            good = _ingest(ws, good_key)
            report.append(
                {
                    "kind": job["kind"],
                    "named": job["named"],
                    "bad_success": result.success,
                    "messages": failure_messages(result),
                    "store_dir": str(ws.store(bad_key).dir),
                    "good_ok": good.success and good.asset_materializations_for_node("recording_binary") != [],
                }
            )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))

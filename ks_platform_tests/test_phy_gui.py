"""Phy itself opens the Phy folders the platform writes (issue #15): the template GUI, headless under Xvfb.

Each folder is opened as ``phy template-gui PARAMS`` opens it (``load_model`` → ``TemplateController`` → the GUI
with every default view, shown on a real X display with Mesa's OpenGL) by ``phy_gui_probe.py`` in its own process,
which reports what the views read. Checked here against the files themselves: the cluster view lists exactly the
bundle's clusters; ``dat_path`` resolves to the recording's binary; the trace view's samples for a window and the
waveform view's spikes equal that binary's samples. Cases: the demo sorting, from another working directory, after
the store was moved, both probes of a two-probe run, and a sort run by hand in the cpu image then opened on the host.

Xvfb, not ``QT_QPA_PLATFORM=offscreen``: under offscreen Phy swaps its OpenGL canvases for widgets that never paint
(phy/gui/qt.py), so nothing would be drawn. Screenshots go to ``test-artifacts/phy/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ks_platform.core.conversion import hash_file, load_recording_binary
from ks_platform.core.store import read_json
from ks_platform_tests import docker_support
from ks_platform_tests.conftest import failure_messages
from ks_platform_tests.curation_support import xvfb

REPO = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "phy_gui_probe.py"
ARTIFACTS = REPO / "test-artifacts" / "phy"
#: What Phy adds to a folder it opens (cache, log); removed again so shared fixtures stay as the pipeline left them.
PHY_LEFTOVERS = (".phy", "phy.log")


@pytest.fixture(scope="module")
def xvfb_display() -> Iterator[str]:
    """A private Xvfb server on a display it picks itself (``-displayfd``): ``":N"``."""
    with xvfb() as display:
        yield display


@dataclass
class PhyView:
    """What Phy's template GUI showed for one folder (``phy_gui_probe.py``'s report and arrays)."""

    dat_path: Path
    views: list[str]
    trace_view_colors: int
    data: dict[str, np.ndarray]


def open_in_phy(params: str | Path, cwd: Path, display: str, scratch: Path, screenshot: str) -> PhyView:
    """Open ``params`` (relative to ``cwd`` or absolute) in Phy's template GUI from ``cwd``; screenshot to
    ``test-artifacts/phy/<screenshot>.png``. Phy's cache and log are removed from the folder afterwards."""
    phy_dir = (cwd / params).resolve().parent
    existed = {name for name in PHY_LEFTOVERS if (phy_dir / name).exists()}
    scratch.mkdir(parents=True, exist_ok=True)
    out = scratch / f"{screenshot}.npz"
    env = {**os.environ, "DISPLAY": display, "XDG_RUNTIME_DIR": str(scratch)}
    env.pop("QT_QPA_PLATFORM", None)
    command = [sys.executable, str(PROBE), str(params), str(out), "--config-dir", str(scratch / "phy-config"),
               "--screenshot", str(ARTIFACTS / f"{screenshot}.png")]  # fmt: skip
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    finally:
        for name in set(PHY_LEFTOVERS) - existed:
            shutil.rmtree(phy_dir / name, ignore_errors=True) if name == ".phy" else (phy_dir / name).unlink(True)
    assert done.returncode == 0, f"Phy could not open {params}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    with np.load(out) as arrays:
        data = {name: arrays[name] for name in arrays.files}
    return PhyView(Path(report["dat_path"]), report["views"], report["trace_view_colors"], data)


def assert_phy_shows(view: PhyView, phy_dir: Path, binary: Path, n_channels: int) -> None:
    """The GUI lists the bundle's clusters, has its trace and waveform views, and both read ``binary``'s samples."""
    assert {"ClusterView", "TraceView", "WaveformView"} <= set(view.views), view.views
    assert view.trace_view_colors > 20, "OpenGL drew nothing in the trace view"
    clusters = np.unique(np.load(phy_dir / "spike_clusters.npy"))
    listed = view.data["listed_clusters"]
    assert len(listed) == len(clusters) > 0 and np.array_equal(np.sort(listed), clusters), (listed, clusters)
    assert view.dat_path == binary.resolve(), f"Phy reads {view.dat_path}, not {binary.resolve()}"
    samples = np.memmap(binary, dtype=np.int16, mode="r").reshape(-1, n_channels)
    channel_map = np.load(phy_dir / "channel_map.npy").ravel()  # Phy shows these binary columns (no sync channel)
    start, window = int(view.data["trace_start_sample"]), view.data["trace_window"]
    assert window.shape == (1500, len(channel_map)) and window.std() > 0
    shown = samples[start : start + len(window)][:, channel_map]
    assert np.array_equal(window, shown), "the trace view shows other samples than the binary's"
    nsw = int(view.data["n_samples_waveforms"])
    columns, raw = channel_map[view.data["waveform_channels"]], view.data["waveform_raw"]
    starts = view.data["waveform_samples"] - nsw // 2  # phylib's window: nsw // 2 samples before the spike
    padded = np.pad(samples[:, columns], ((nsw, nsw), (0, 0)))  # phylib zero-pads a window past either end
    expected = np.stack([padded[start + nsw : start + 2 * nsw] for start in starts])
    assert raw.shape[0] > 0 and np.array_equal(raw, expected), "the waveform view read other samples"
    assert np.allclose(view.data["waveform_shown"], raw - np.median(raw, axis=1, keepdims=True))


def _channels(store_dir: Path) -> int:
    return int(read_json(store_dir / "binary" / "binary.json")["n_chan_bin"])


@pytest.fixture(scope="module")
def demo(sorted_workspace):
    """The demo sorting's session folder in the store and the landing file its zero-copy binary links to."""
    ws, key, result = sorted_workspace
    assert result.success, failure_messages(result)
    store = ws.store(key)
    [raw] = ws.landing.glob("*/*.ap.bin")
    link = store.binary_dir / "recording.bin"
    assert link.is_symlink() and link.resolve() == raw.resolve()  # zero-copy: Phy must read the landing file
    return ws, store, raw


@pytest.mark.slow
def test_phy_opens_the_demo_sorting(demo, xvfb_display, tmp_path):
    """As a lab opens it: ``cd phy; phy template-gui params.py``."""
    _, store, raw = demo
    view = open_in_phy("params.py", store.phy_dir, xvfb_display, tmp_path, "demo_template_gui")
    assert_phy_shows(view, store.phy_dir, raw, _channels(store.dir))
    assert (ARTIFACTS / "demo_template_gui.png").is_file()


@pytest.mark.slow
def test_phy_opens_it_from_another_working_directory(demo, xvfb_display, tmp_path):
    """``dat_path`` is relative to params.py's folder, not to where Phy is started (here via ``../..`` paths)."""
    _, store, raw = demo
    elsewhere = tmp_path / "home" / "lab"
    elsewhere.mkdir(parents=True)
    params = os.path.relpath(store.phy_dir / "params.py", elsewhere)
    view = open_in_phy(params, elsewhere, xvfb_display, tmp_path, "demo_from_elsewhere")
    assert_phy_shows(view, store.phy_dir, raw, _channels(store.dir))


@pytest.mark.slow
def test_phy_opens_it_after_the_store_moved(demo, xvfb_display, tmp_path):
    """The whole store moved to another path (a new disk): phy/ and binary/ move together, so ``../binary`` still
    resolves; the zero-copy link is absolute, so the landing file must stay where it was (docker/README.md)."""
    ws, store, raw = demo
    moved_root = tmp_path / "new_disk" / "store"
    moved_root.parent.mkdir()
    os.rename(ws.store_root, moved_root)
    try:
        assert not store.dir.exists()
        moved = moved_root / store.dir.relative_to(ws.store_root.resolve())
        view = open_in_phy(moved / "phy" / "params.py", tmp_path, xvfb_display, tmp_path, "demo_store_moved")
        assert_phy_shows(view, moved / "phy", raw, _channels(moved))
    finally:
        os.rename(moved_root, ws.store_root)


@pytest.mark.slow
@pytest.mark.parametrize("probe", ["imec0", "imec1"])
def test_phy_opens_each_probe_of_a_two_probe_run(two_probe_run, probe, xvfb_display, tmp_path):
    """Each partition's own folder (a converted binary: both gates concatenated, sync channel dropped)."""
    ws, _, _, results = two_probe_run
    key, result = results[probe]
    assert result.success, failure_messages(result)
    store = ws.store(key)
    binary = load_recording_binary(store.binary_dir)
    assert not binary.zero_copy and binary.n_chan_bin == 32
    view = open_in_phy(store.phy_dir / "params.py", tmp_path, xvfb_display, tmp_path, f"two_probe_{probe}")
    assert_phy_shows(view, store.phy_dir, store.binary_dir / "recording.bin", 32)


@pytest.mark.parametrize("relative", [False, True])
def test_zero_copy_link_survives_the_moves_its_kind_allows(generated_session, tmp_path, relative):
    """Absolute (Dagster's): the output folder moves alone. Relative (``ks-platform sort`` in an image): landing and
    output move together. Either way the link resolves to the raw file with the same bytes."""
    from ks_platform.core.conversion import write_recording_binary
    from ks_platform.core.formats import open_recording

    lab = tmp_path / "lab"
    shutil.copytree(generated_session, lab / "landing" / generated_session.name)
    source = open_recording(lab / "landing" / generated_session.name)
    binary = write_recording_binary(source, lab / "out" / "binary", relative_link=relative)
    link = lab / "out" / "binary" / "recording.bin"
    assert binary.zero_copy and link.is_symlink() and os.path.isabs(os.readlink(link)) is not relative
    moved = tmp_path / "moved"
    shutil.move(lab / "out" if not relative else lab, moved)
    link = moved / "binary" / "recording.bin" if not relative else moved / "out" / "binary" / "recording.bin"
    raw = (lab if not relative else moved) / "landing" / generated_session.name / source.zero_copy_path.name
    assert link.resolve() == raw.resolve() and hash_file(link) == binary.checksum
    assert load_recording_binary(link.parent).path == link  # the manifest is read where the store is now


@pytest.fixture(scope="module")
def image_sort(tmp_path_factory, generated_session):
    """The demo session sorted by hand in the cpu image as docker/README.md shows, with host folders mounted at
    other paths (``/data/landing``, ``/data/out``): ``(host folder holding landing/ and out/, session name)``."""
    image = docker_support.cpu_image()  # (re)builds it from this checkout, so the image runs the code under test
    base = tmp_path_factory.mktemp("image_sort")
    landing, out = base / "landing", base / "out"
    shutil.copytree(generated_session, landing / generated_session.name)
    out.mkdir()
    os.chmod(out, 0o777)  # the image's user (uid 1000) writes here
    digest = docker_support.image_id(image)
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--user", "1000:1000",
         "-v", f"{landing}:/data/landing:ro", "-v", f"{out}:/data/out", "-e", f"KS_PLATFORM_IMAGE_DIGEST={digest}",
         image, "sort", f"/data/landing/{generated_session.name}", "--out", "/data/out/session", "--backend", "cpu"],
        capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return base, generated_session.name


@pytest.mark.slow
def test_phy_on_the_host_opens_a_sort_run_by_hand_in_the_image(image_sort, xvfb_display, tmp_path):
    """Inside the image the zero-copy link is relative, so it resolves on the host too (an absolute one names
    ``/data/landing/…``, which exists only in the container); moving landing/ and out/ together keeps it working."""
    base, name = image_sort
    link = base / "out" / "session" / "binary" / "recording.bin"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link)), os.readlink(link)
    [raw] = (base / "landing" / name).glob("*.ap.bin")
    assert link.resolve() == raw.resolve()
    session = base / "out" / "session"
    view = open_in_phy(session / "phy" / "params.py", tmp_path, xvfb_display, tmp_path, "image_sort_on_host")
    assert_phy_shows(view, session / "phy", raw, _channels(session))

    moved = tmp_path / "archive" / "lab"
    moved.parent.mkdir()
    shutil.move(base, moved)  # the lab moves the landing and output folders together
    try:
        session = moved / "out" / "session"
        view = open_in_phy(session / "phy" / "params.py", tmp_path, xvfb_display, tmp_path, "image_sort_moved")
        assert_phy_shows(view, session / "phy", moved / "landing" / name / raw.name, _channels(session))
    finally:
        shutil.move(moved, base)

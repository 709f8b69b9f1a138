"""Helpers for the curation/NWB tests: a private copy of the sorted session, and curations written by phylib."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import numpy as np

from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME
from ks_platform_tests.conftest import Workspace, missing_dependency

#: "root" is the Allen CCF term for the whole brain: true of the synthetic recording, and what nwbinspector accepts.
SUBJECT = (
    '{"subject_id": "demo42", "species": "Mus musculus", "sex": "F", "age": "P90D", "electrode_location": "root"}\n'
)
#: What DANDI asks of a session beyond the subject (``session_metadata.json``).
SESSION_METADATA = {
    "experimenter": ["Doe, Jane", "Roe, Richard R."],
    "institution": "Example Institute",
    "lab": "Ephys Lab",
    "keywords": ["Neuropixels", "spike sorting", "Kilosort 4"],
    "session_description": "synthetic ground-truth recording, 6 s, 10 units",
    "protocol": "IACUC-2026-001",
    "related_publications": ["doi:10.1234/example.5678"],
}


def copy_sorted_workspace(ws: Workspace, key: str, base: Path, instance: dg.DagsterInstance) -> Workspace:
    """The shared sorted session's landing folder and store copied under ``base``, with its own instance, so a test
    can curate (and re-sort) without touching the session other tests read."""
    landing = base / "landing"
    shutil.copytree(ws.landing, landing)  # copy2: same names, sizes, mtimes, so the recording fingerprint holds
    copied = base / "store" / "sessions" / key
    shutil.copytree(ws.store(key).dir, copied)
    manifest = copied / "binary" / "binary.json"  # point the copied binary's manifest at the copied file
    binary = json.loads(manifest.read_text())
    if Path(binary["path"]).is_relative_to(ws.store(key).dir):
        binary["path"] = str(copied / Path(binary["path"]).relative_to(ws.store(key).dir))
        manifest.write_text(json.dumps(binary, indent=2) + "\n")
    (next(landing.iterdir()) / "subject.json").write_text(SUBJECT)
    (next(landing.iterdir()) / "session_metadata.json").write_text(json.dumps(SESSION_METADATA, indent=1) + "\n")
    instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, [key])
    return Workspace(landing, base / "store", instance)


def run_job(ws: Workspace, key: str, job: str):
    from ks_platform.definitions import build_definitions

    return (
        build_definitions(ws.platform, sensors=[])
        .resolve_job_def(job)
        .execute_in_process(partition_key=key, instance=ws.instance, raise_on_error=False)
    )


def save_in_phy(phy_dir: Path, merge: tuple[int, int], split: int, labels: dict[int | str, str]) -> dict[str, int]:
    """Merge two clusters and split one in half (by spike order) the way Phy does, then label clusters, and save with
    phylib's own writers (``spike_clusters.npy``, ``cluster_group.tsv`` with every cluster, unlabelled as unsorted)
    plus a ``cluster_info.tsv`` like Phy's. Returns the new ids: ``{"merged": …, "split_a": …, "split_b": …}``."""
    from phylib.io.model import load_model

    model = load_model(phy_dir / "params.py")
    try:
        clusters = np.asarray(model.spike_clusters).copy()
        new = int(clusters.max()) + 1
        clusters[np.isin(clusters, merge)] = new
        mine = np.flatnonzero(clusters == split)
        clusters[mine[: mine.size // 2]], clusters[mine[mine.size // 2 :]] = new + 1, new + 2
        ids = {"merged": new, "split_a": new + 1, "split_b": new + 2}
        model.save_spike_clusters(clusters)
        by_id = {ids.get(k, k): v for k, v in labels.items()}  # "merged"/"split_a"/"split_b" name the new clusters
        groups = {int(c): by_id.get(int(c), "unsorted") for c in np.unique(clusters)}
        model.save_metadata("group", groups)
    finally:
        model.close()
    counts = dict(zip(*np.unique(clusters, return_counts=True)))
    lines = ["cluster_id\tgroup\tn_spikes"] + [f"{c}\t{g}\t{counts[c]}" for c, g in groups.items()]
    (phy_dir / "cluster_info.tsv").write_text("\n".join(lines) + "\n")
    return ids


PHY_PROBE = Path(__file__).resolve().parent / "phy_gui_probe.py"


def curate_in_phy(phy_dir: Path, actions: list[dict], display: str, scratch: Path) -> dict:
    """Curate ``phy_dir`` in Phy's template GUI through its supervisor (``phy_gui_probe.py --actions``), in its own
    process on the X display ``display``; returns its report: the clusters and labels Phy showed on opening the
    folder (``opened``), the ids it gave new clusters (``names``) and the state after the actions (``after``)."""
    scratch.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    actions_file, out = scratch / f"actions-{tag}.json", scratch / f"phy-{tag}.json"
    actions_file.write_text(json.dumps(actions))
    env = {**os.environ, "DISPLAY": display, "XDG_RUNTIME_DIR": str(scratch)}
    env.pop("QT_QPA_PLATFORM", None)
    command = [sys.executable, str(PHY_PROBE), str(phy_dir / "params.py"), str(out), "--actions", str(actions_file),
               "--config-dir", str(scratch / "phy-config")]  # fmt: skip
    done = subprocess.run(command, cwd=phy_dir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"Phy failed on {phy_dir}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(out.read_text())


@contextmanager
def xvfb() -> Iterator[str]:
    """A private Xvfb server on a display it picks itself (``-displayfd``): ``":N"`` (Phy and PyQt5 needed)."""
    import importlib.util

    for module in ("phy", "PyQt5"):
        if importlib.util.find_spec(module) is None:
            missing_dependency(f"the Python package {module!r} is not installed")
    if shutil.which("Xvfb") is None:
        missing_dependency("Xvfb (Debian package xvfb)")
    read_end, write_end = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1920x1200x24", "-nolisten", "tcp"],
        pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(write_end)
    with os.fdopen(read_end) as announced:
        number = announced.readline().strip()
    if not number:
        server.kill()
        raise RuntimeError(f"Xvfb did not start: {server.communicate()[1].decode()[-2000:]}")
    try:
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def dandi_validate(files: list[Path], scratch: Path) -> str:
    """What a lab runs before uploading: ``dandi organize`` of ``files`` into one Dandiset, then ``dandi validate``
    (offline); asserts every file was organized and no error found; returns dandi's output."""
    dandiset = scratch / f"dandiset-{uuid.uuid4().hex[:6]}"
    dandiset.mkdir(parents=True)
    (dandiset / "dandiset.yaml").write_text("identifier: DANDI:000000\nname: ks_platform test\ndescription: test\n")
    dandi = [str(Path(sys.executable).parent / "dandi")]
    env = {**os.environ, "DANDI_NO_ET": "1", "HOME": str(scratch)}  # no update check; logs under scratch
    sources = []
    for number, path in enumerate(files):  # dandi organize wants real files (not the units.nwb link)
        sources.append(scratch / f"{dandiset.name}-{number}.nwb")
        shutil.copy2(path, sources[-1])
    organize = subprocess.run(
        [*dandi, "organize", "--files-mode", "copy", "-d", str(dandiset), *map(str, sources)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert organize.returncode == 0, organize.stderr[-2000:]
    assert len(list(dandiset.rglob("sub-*/*.nwb"))) == len(files), organize.stderr[-2000:]
    validate = subprocess.run([*dandi, "validate", str(dandiset)], env=env, capture_output=True, text=True, timeout=300)
    output = validate.stdout + validate.stderr
    assert validate.returncode == 0 and "No errors found" in output, output[-2000:]
    return output

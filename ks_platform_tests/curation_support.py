"""Helpers for the curation/NWB tests: a private copy of the sorted session, and curations written by phylib."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import numpy as np

from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME
from ks_platform_tests.conftest import Workspace

#: "root" is the Allen CCF term for the whole brain: true of the synthetic recording, and what nwbinspector accepts.
SUBJECT = (
    '{"subject_id": "demo42", "species": "Mus musculus", "sex": "F", "age": "P90D", "electrode_location": "root"}\n'
)


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

"""Manual curation in Phy: read what Phy saved, diff it against the sorting, and keep it with the sorting it was made on.

Phy saves a curation into the Phy folder as ``cluster_group.tsv`` (``cluster_id``, ``group``: every current cluster,
unlabelled ones as ``unsorted``), ``cluster_info.tsv`` (one row per current cluster) and ``spike_clusters.npy`` (the
cluster of every spike after merges and splits). It never rewrites ``spike_times.npy`` or ``spike_templates.npy``
(Kilosort's own cluster per spike), so those two name the sorting a curation was made on: their hash is the
curation's *basis*. Kilosort also writes a ``cluster_group.tsv``, with a ``KSLabel`` column: that is not a curation.

``record_curation`` writes ``<store>/<key>/curation/``: every curation seen is kept as a snapshot under
``history/<basis>__<fingerprint>/`` (never deleted, so a re-sort or a rebuilt Phy folder cannot lose one), and
``curated_units.json`` / ``curated_units.tsv`` describe the curation that applies to the current sorting, or say
STALE when the latest curation was made on another sorting (which is then never applied).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from ks_platform.core.errors import SessionInputError
from ks_platform.core.sorting import sorting_checksum
from ks_platform.core.store import SessionStore, atomic_directory, atomic_file, read_json, write_json_atomic

LABELS = ("good", "mua", "noise", "unsorted")
GROUP_TSV, INFO_TSV, CLUSTERS_NPY = "cluster_group.tsv", "cluster_info.tsv", "spike_clusters.npy"
CURATION_FILES = (GROUP_TSV, INFO_TSV, CLUSTERS_NPY)
RECORD_JSON, RECORD_TSV, SNAPSHOT_JSON, HISTORY = "curated_units.json", "curated_units.tsv", "snapshot.json", "history"
#: Status of the curation for the current sorting.
CURATED, UNCURATED, STALE = "curated", "uncurated", "stale"
PHY_SAVE_FIX = "open the Phy folder (phy template-gui params.py), correct the cluster there and save again"


def curation_dir(store: SessionStore) -> Path:
    return store.dir / "curation"


def basis_version(folder: Path) -> str:
    """Hash of ``spike_times.npy`` + ``spike_templates.npy``: the sorting a folder (and its curation) belongs to."""
    hasher = xxhash.xxh3_128()
    for name in ("spike_times.npy", "spike_templates.npy"):
        hasher.update(np.ascontiguousarray(np.load(folder / name, mmap_mode="r")).tobytes())
    return hasher.hexdigest()


def curation_fingerprint(folder: Path) -> str:
    """Hash of the curation files as Phy wrote them (``none`` when there are none): the ``phy_curation`` version."""
    hasher, found = xxhash.xxh3_128(), False
    for name in CURATION_FILES:
        if (folder / name).is_file():
            hasher.update(name.encode() + b"\0" + (folder / name).read_bytes())
            found = True
    return hasher.hexdigest() if found else "none"


def _read_tsv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    rows = list(csv.reader(text.splitlines(), delimiter="\t"))
    if not rows or "cluster_id" not in rows[0]:
        raise SessionInputError(path, "not a tab-separated table with a cluster_id column", PHY_SAVE_FIX)
    header = rows[0]
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise SessionInputError(
                path, f"line {number} has {len(row)} fields, the header {len(header)}", PHY_SAVE_FIX
            )
    return header, [dict(zip(header, row)) for row in rows[1:] if row]


def _cluster_id(path: Path, text: str, known: set[int]) -> int:
    try:
        cluster = int(text)
    except ValueError:
        raise SessionInputError(path, f"cluster_id {text!r} is not an integer", PHY_SAVE_FIX) from None
    if cluster not in known:
        raise SessionInputError(path, f"cluster {cluster} is not a cluster of spike_clusters.npy", PHY_SAVE_FIX)
    return cluster


def read_cluster_groups(path: Path, known: set[int]) -> dict[int, str] | None:
    """Phy's labels ``{cluster: label}``; None for Kilosort's own file (``KSLabel`` column) or no file."""
    if not path.is_file():
        return None
    header, rows = _read_tsv(path)
    if "group" not in header:
        if "KSLabel" in header:
            return None
        raise SessionInputError(path, f"no 'group' column (columns: {', '.join(header)})", PHY_SAVE_FIX)
    labels = {}
    for row in rows:
        label = row["group"].strip()
        if label not in LABELS:
            raise SessionInputError(
                path, f"label {label!r} is not one of {', '.join(LABELS)}", f"relabel it in Phy; {PHY_SAVE_FIX}"
            )
        labels[_cluster_id(path, row["cluster_id"], known)] = label
    return labels


def check_cluster_info(path: Path, known: set[int]) -> int:
    """Validate Phy's ``cluster_info.tsv`` against the current clusters; returns its row count (0 without it)."""
    if not path.is_file():
        return 0
    header, rows = _read_tsv(path)
    for row in rows:
        _cluster_id(path, row["cluster_id"], known)
        if "group" in header and row["group"].strip() not in (*LABELS, ""):
            raise SessionInputError(path, f"label {row['group']!r} is not one of {', '.join(LABELS)}", PHY_SAVE_FIX)
    return len(rows)


def diff_clusters(before: np.ndarray, after: np.ndarray) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """``(merges, splits)`` from the cluster of every spike before and after curation.

    A merge is a new cluster whose spikes came from several old ones (``{new: [old, …]}``); a split an old cluster
    whose spikes went to several new ones (``{old: [new, …]}``).
    """
    pairs = np.unique(np.column_stack([before.astype(np.int64), after.astype(np.int64)]), axis=0)
    merges = {int(n): sorted(int(o) for o in pairs[pairs[:, 1] == n, 0]) for n in np.unique(pairs[:, 1])}
    splits = {int(o): sorted(int(n) for n in pairs[pairs[:, 0] == o, 1]) for o in np.unique(pairs[:, 0])}
    return {n: o for n, o in merges.items() if len(o) > 1}, {o: n for o, n in splits.items() if len(n) > 1}


@dataclass(frozen=True)
class Curation:
    """One Phy curation read from a folder, diffed against Kilosort's clusters (``spike_templates``)."""

    basis: str
    fingerprint: str
    labels: dict[int, str]
    merges: dict[int, list[int]]
    splits: dict[int, list[int]]
    n_spikes: dict[int, int]
    changed_spikes: bool

    @property
    def counts(self) -> dict[str, int]:
        return {label: sum(1 for v in self.labels.values() if v == label) for label in LABELS}


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path).ravel()
    except (ValueError, OSError, EOFError) as exc:
        raise SessionInputError(path, f"not a readable .npy array ({exc})", PHY_SAVE_FIX) from None


def read_curation(folder: Path, templates: np.ndarray, basis: str) -> Curation | None:
    """The curation saved in ``folder`` over Kilosort's per-spike clusters ``templates``; None if Phy saved nothing."""
    clusters = _load_npy(folder / CLUSTERS_NPY) if (folder / CLUSTERS_NPY).is_file() else templates
    if clusters.shape != templates.shape:
        raise SessionInputError(
            folder / CLUSTERS_NPY, f"{clusters.size} spikes, the sorting has {templates.size}", PHY_SAVE_FIX
        )
    ids, counts = np.unique(clusters, return_counts=True)
    known = {int(c) for c in ids}
    labels = read_cluster_groups(folder / GROUP_TSV, known)
    has_info = check_cluster_info(folder / INFO_TSV, known) > 0
    changed = not np.array_equal(clusters, templates)
    if labels is None and not changed and not has_info:
        return None
    merges, splits = diff_clusters(templates, clusters)
    full = {c: (labels or {}).get(c, "unsorted") for c in sorted(known)}
    return Curation(
        basis, curation_fingerprint(folder), full, merges, splits, dict(zip(map(int, ids), map(int, counts))), changed
    )


@dataclass
class CurationRecord:
    """What ``curated_units`` publishes: the status for the current sorting and the curation that applies."""

    status: str
    sorting_version: str
    curation_basis: str | None
    fingerprint: str | None
    recorded_at: str
    source: str
    labels: dict[int, str] = field(default_factory=dict)
    kilosort_labels: dict[int, str] = field(default_factory=dict)
    merges: dict[int, list[int]] = field(default_factory=dict)
    splits: dict[int, list[int]] = field(default_factory=dict)
    n_spikes: dict[int, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    note: str = ""
    #: ``sorted_units``' data version (hash of spike_times + spike_clusters of ``sorting/``) when recorded.
    sorting_checksum: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> CurationRecord:
        ints = ("labels", "kilosort_labels", "merges", "splits", "n_spikes")
        return cls(**{k: ({int(i): v for i, v in payload[k].items()} if k in ints else payload[k]) for k in payload})


def kilosort_labels(folder: Path) -> dict[int, str]:
    """Kilosort's good/mua label per cluster id (``cluster_KSLabel.tsv``)."""
    path = folder / "cluster_KSLabel.tsv"
    if not path.is_file():
        return {}
    _, rows = _read_tsv(path)
    return {int(row["cluster_id"]): row["KSLabel"] for row in rows}


def snapshot_curation(folder: Path, store: SessionStore, basis: str | None = None) -> Path | None:
    """Copy the Phy curation files of ``folder`` into ``curation/history/<basis>__<fingerprint>/`` (atomic, kept)."""
    fingerprint = curation_fingerprint(folder)
    if fingerprint == "none" or not (folder / "spike_templates.npy").is_file():
        return None
    basis = basis or basis_version(folder)
    target = curation_dir(store) / HISTORY / f"{basis}__{fingerprint}"
    if target.is_dir():
        return target
    with atomic_directory(target) as staged:
        for name in CURATION_FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, staged / name)
        saved = dt.datetime.fromtimestamp(
            max((folder / n).stat().st_mtime for n in CURATION_FILES if (folder / n).is_file()), dt.timezone.utc
        )
        (staged / SNAPSHOT_JSON).write_text(
            json.dumps(
                {"basis": basis, "fingerprint": fingerprint, "saved_at": saved.isoformat(), "from": str(folder)},
                indent=2,
            )
            + "\n"
        )
    return target


def preserve_phy_curation(store: SessionStore) -> Path | None:
    """Keep the Phy folder's curation (if any, and readable) before the folder is rebuilt; called by ``export_phy``."""
    if not (store.phy_dir / "spike_templates.npy").is_file():
        return None
    basis = basis_version(store.phy_dir)
    try:
        found = read_curation(store.phy_dir, np.load(store.phy_dir / "spike_templates.npy").ravel(), basis)
    except SessionInputError:
        return None  # unreadable: curated_units reports it; nothing valid to keep
    return snapshot_curation(store.phy_dir, store, basis) if found is not None else None


def _latest_snapshot(store: SessionStore, basis: str | None = None) -> Path | None:
    history = curation_dir(store) / HISTORY
    snapshots = [p for p in history.iterdir() if (p / SNAPSHOT_JSON).is_file()] if history.is_dir() else []
    if basis is not None:
        snapshots = [p for p in snapshots if read_json(p / SNAPSHOT_JSON)["basis"] == basis]
    return max(snapshots, key=lambda p: (read_json(p / SNAPSHOT_JSON)["saved_at"], p.name), default=None)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def record_curation(store: SessionStore) -> CurationRecord:
    """Read the Phy folder's curation, keep it, and write the record for the current sorting into ``curation/``.

    The current sorting is ``sorting/``; a curation applies only when its basis is that sorting. Otherwise the
    record is STALE and lists the sorting's own clusters (with Kilosort's labels), never the old curation's.
    """
    sorting_basis = basis_version(store.sorting_dir)
    phy_basis = basis_version(store.phy_dir)
    if read_curation(store.phy_dir, np.load(store.phy_dir / "spike_templates.npy").ravel(), phy_basis) is not None:
        snapshot_curation(store.phy_dir, store, phy_basis)  # only valid curations are kept (bad files raise above)
    ks_labels = kilosort_labels(store.sorting_dir)
    templates = np.load(store.sorting_dir / "spike_templates.npy").ravel()
    current = _latest_snapshot(store, sorting_basis)
    latest = _latest_snapshot(store)
    curation = read_curation(current, templates, sorting_basis) if current is not None else None
    if curation is not None:
        source = (
            "phy folder"
            if phy_basis == sorting_basis and curation.fingerprint == curation_fingerprint(store.phy_dir)
            else f"snapshot {current.name}"
        )
        record = CurationRecord(
            CURATED,
            sorting_basis,
            sorting_basis,
            curation.fingerprint,
            _now(),
            source,
            curation.labels,
            ks_labels,
            curation.merges,
            curation.splits,
            curation.n_spikes,
            curation.counts,
        )
    else:
        ids, counts = np.unique(templates, return_counts=True)
        stale = latest is not None and read_json(latest / SNAPSHOT_JSON)["basis"] != sorting_basis
        snap = read_json(latest / SNAPSHOT_JSON) if stale else {}
        note = (
            f"the latest curation (saved {snap['saved_at']}) was made on sorting {snap['basis']}, not on the current "
            f"sorting {sorting_basis}: it is kept in {latest} and not applied; curate the new sorting in Phy"
            if stale
            else "Phy has saved no curation for this sorting"
        )
        record = CurationRecord(
            STALE if stale else UNCURATED,
            sorting_basis,
            snap.get("basis"),
            snap.get("fingerprint"),
            _now(),
            "sorting",
            {},
            ks_labels,
            {},
            {},
            dict(zip(map(int, ids), map(int, counts))),
            {},
            note,
        )
    record.sorting_checksum = sorting_checksum(store.sorting_dir)
    write_record(store, record)
    return record


def write_record(store: SessionStore, record: CurationRecord) -> None:
    """``curated_units.json`` and a per-unit ``curated_units.tsv`` (atomic each)."""
    folder = curation_dir(store)
    lines = ["cluster_id\tn_spikes\tkilosort_label\tcurated_label\tmerged_from"]
    for cluster, n in sorted(record.n_spikes.items()):
        merged = ",".join(map(str, record.merges.get(cluster, [])))
        lines.append(
            f"{cluster}\t{n}\t{record.kilosort_labels.get(cluster, '')}\t{record.labels.get(cluster, '')}\t{merged}"
        )
    with atomic_file(folder / RECORD_TSV) as staged:
        staged.write_text("\n".join(lines) + "\n")
    write_json_atomic(folder / RECORD_JSON, record.to_json())


def load_record(store: SessionStore) -> CurationRecord | None:
    path = curation_dir(store) / RECORD_JSON
    return CurationRecord.from_json(read_json(path)) if path.is_file() else None


def current_record(store: SessionStore) -> CurationRecord | None:
    """The published record, only if it was made for the sorting now in ``sorting/`` (else None)."""
    record = load_record(store)
    if record is None or not (store.sorting_dir / "spike_templates.npy").is_file():
        return None
    return record if record.sorting_version == basis_version(store.sorting_dir) else None


def curated_spike_clusters(store: SessionStore, record: CurationRecord) -> np.ndarray:
    """The cluster of every spike of the current sorting as the record says: curated, or Kilosort's when not."""
    templates = np.load(store.sorting_dir / "spike_templates.npy").ravel()
    if record.status != CURATED or record.sorting_version != basis_version(store.sorting_dir):
        return templates
    snapshot = curation_dir(store) / HISTORY / f"{record.curation_basis}__{record.fingerprint}"
    return np.load(snapshot / CLUSTERS_NPY).ravel() if (snapshot / CLUSTERS_NPY).is_file() else templates

"""Manual curation in Phy: read what Phy saved, diff it against the sorting, keep it with the sorting it was made on.

Phy saves a curation into the Phy folder as ``cluster_group.tsv`` (``cluster_id``, ``group``), ``cluster_info.tsv``
(one row per current cluster), ``spike_clusters.npy`` (the cluster of every spike after merges and splits) and one
``cluster_<label>.tsv`` per label column the lab added. It never rewrites ``spike_times.npy`` or
``spike_templates.npy`` (Kilosort's own cluster per spike), so those two name the sorting a curation was made on:
their hash is the curation's *basis* (its sorting version). Kilosort also writes a ``cluster_group.tsv``, with a
``KSLabel`` column: that is not a curation.

Everything lives under ``<store>/<key>/curation/`` and nothing there is ever deleted:

- ``history/<basis>__<fingerprint>/``: every valid curation seen (in the Phy folder, or before a rebuild replaced it),
  its files as Phy wrote them, ``snapshot.json`` and a readable ``curated_units.tsv``;
- ``journal.jsonl``: what happened when (seen in the Phy folder, restored, reset to Kilosort's clusters, unreadable
  files set aside). The curation that applies to a sorting is the latest one the journal names for it, so a
  curation copied back from history (or restored by ``ks-platform curation restore``) is that curation again;
- ``sortings/<basis>/``: the spike times, Kilosort's clusters and labels, lineage and settings of every sorting a
  curation was made on, so an earlier curation stays exportable after a re-sort replaced ``sorting/``;
- ``unreadable/<time>__<basis>/``: curation files that could not be read, set aside before anything replaced them;
- ``curated_units.json`` / ``curated_units.tsv``: the curation that applies to the current sorting, or STALE when
  the latest curation was made on another sorting (which is then never applied to this one).

A rebuilt Phy folder over the same sorting gets the applying curation back (``carry_forward``), so Phy opens it
with the lab's labels, merges and splits; over a new sorting it starts from Kilosort's clusters.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from ks_platform.core.errors import SessionInputError
from ks_platform.core.names import BOMBCELL_TSV, EFFECTIVE_SETTINGS_FILE, LINEAGE_FILE, METRICS_CSV, TRACK_ID_TSV
from ks_platform.core.sorting import sorting_checksum
from ks_platform.core.store import SessionStore, atomic_directory, atomic_file, read_json, write_json_atomic

LABELS = ("good", "mua", "noise", "unsorted")
GROUP_TSV, INFO_TSV, CLUSTERS_NPY = "cluster_group.tsv", "cluster_info.tsv", "spike_clusters.npy"
CURATION_FILES = (GROUP_TSV, INFO_TSV, CLUSTERS_NPY)
#: Per-cluster tables Kilosort writes (Phy rewrites them on save): not part of a curation.
KILOSORT_TSVS = ("cluster_KSLabel.tsv", "cluster_ContamPct.tsv", "cluster_Amplitude.tsv")
#: Per-cluster tables SpikeInterface's Phy export writes for the other sorters: not part of a curation either.
SPIKEINTERFACE_TSVS = ("cluster_si_unit_ids.tsv", "cluster_channel_group.tsv")
RECORD_JSON, RECORD_TSV, SNAPSHOT_JSON, HISTORY = "curated_units.json", "curated_units.tsv", "snapshot.json", "history"
JOURNAL, SORTINGS, UNREADABLE = "journal.jsonl", "sortings", "unreadable"
#: What an archived sorting keeps: enough to export its curation after ``sorting/`` was replaced.
SORTING_FILES = ("spike_times.npy", "spike_templates.npy", "cluster_KSLabel.tsv", LINEAGE_FILE, EFFECTIVE_SETTINGS_FILE)
SORTING_JSON = "sorting.json"
#: Phy's cache next to params.py; it holds the spikes of each cluster as Phy last saw them (``--clear-cache``).
PHY_CACHE = ".phy"
#: Status of the curation for the current sorting.
CURATED, UNCURATED, STALE = "curated", "uncurated", "stale"
#: Journal events that say which curation applies to a sorting.
SEEN, RESTORED, RESET, SET_ASIDE = "seen in the Phy folder", "restored", "reset to Kilosort's clusters", "set aside"
PHY_SAVE_FIX = "open the Phy folder (phy template-gui params.py), correct the cluster there and save again"


def restore_fix(store: SessionStore) -> str:
    """The fix for curation files Phy cannot open: a command that puts back a readable curation."""
    return (
        f"run `ks-platform curation restore {_target(store)}`: it sets the unreadable files aside in curation/"
        f"{UNREADABLE}/ and puts back the last curation saved for this sorting (curation/{HISTORY}/), or with "
        "--from-sorting Kilosort's clusters; then open the folder in Phy"
    )


def _target(store: SessionStore) -> str:
    """How the commands name the session: its folder in the store (works whatever the environment says)."""
    return str(store.dir)


def curation_dir(store: SessionStore) -> Path:
    return store.dir / "curation"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def basis_version(folder: Path) -> str:
    """Hash of ``spike_times.npy`` + ``spike_templates.npy``: the sorting a folder (and its curation) belongs to."""
    hasher = xxhash.xxh3_128()
    for name in ("spike_times.npy", "spike_templates.npy"):
        hasher.update(memoryview(np.ascontiguousarray(np.load(folder / name, mmap_mode="r"))))  # no copy
    return hasher.hexdigest()


def label_files(folder: Path) -> list[str]:
    """The ``cluster_<label>.tsv`` files of label columns the lab added in Phy (not Kilosort's, not Phy's own, not the
    platform's: bombcell's labels and the track ids that ``unit_labels``/``unit_tracks`` write there)."""
    own = {GROUP_TSV, INFO_TSV, *KILOSORT_TSVS, *SPIKEINTERFACE_TSVS, BOMBCELL_TSV, TRACK_ID_TSV}
    return sorted(p.name for p in folder.glob("cluster_*.tsv") if p.name not in own and p.is_file())


def curation_files(folder: Path) -> list[str]:
    """The curation files present in ``folder``, in fingerprint order."""
    return [n for n in (*CURATION_FILES, *label_files(folder)) if (folder / n).is_file()]


def curation_fingerprint(folder: Path) -> str:
    """Hash of the curation files as Phy wrote them (``none`` when there are none): the ``phy_curation`` version."""
    hasher, names = xxhash.xxh3_128(), curation_files(folder)
    for name in names:
        hasher.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return hasher.hexdigest() if names else "none"


def _read_tsv(path: Path, fix: str = PHY_SAVE_FIX) -> tuple[list[str], list[dict[str, str]]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    rows = list(csv.reader(text.splitlines(), delimiter="\t"))
    if not rows or "cluster_id" not in rows[0]:
        raise SessionInputError(path, "not a tab-separated table with a cluster_id column", fix)
    header = rows[0]
    for number, row in enumerate(rows[1:], start=2):
        if row and len(row) != len(header):
            raise SessionInputError(path, f"line {number} has {len(row)} fields, the header {len(header)}", fix)
    return header, [dict(zip(header, row)) for row in rows[1:] if row]


def _cluster_id(path: Path, text: str, known: set[int], fix: str = PHY_SAVE_FIX) -> int:
    try:
        cluster = int(text)
    except ValueError:
        raise SessionInputError(path, f"cluster_id {text!r} is not an integer", fix) from None
    if cluster not in known:
        raise SessionInputError(path, f"cluster {cluster} is not a cluster of spike_clusters.npy", fix)
    return cluster


def read_cluster_groups(path: Path, known: set[int], fix: str = PHY_SAVE_FIX) -> dict[int, str] | None:
    """Phy's labels ``{cluster: label}``; None for Kilosort's own file (``KSLabel`` column) or no file."""
    if not path.is_file():
        return None
    header, rows = _read_tsv(path, fix)
    if "group" not in header:
        if "KSLabel" in header:
            return None
        raise SessionInputError(path, f"no 'group' column (columns: {', '.join(header)})", fix)
    labels = {}
    for row in rows:
        label = row["group"].strip()
        if label not in LABELS:
            raise SessionInputError(path, f"label {label!r} is not one of {', '.join(LABELS)}", f"relabel it; {fix}")
        labels[_cluster_id(path, row["cluster_id"], known, fix)] = label
    return labels


def check_cluster_info(path: Path, known: set[int], fix: str = PHY_SAVE_FIX) -> int:
    """Validate a Phy ``cluster_info.tsv`` (or a label table) against the current clusters; its row count."""
    if not path.is_file():
        return 0
    header, rows = _read_tsv(path, fix)
    for row in rows:
        _cluster_id(path, row["cluster_id"], known, fix)
        if path.name == INFO_TSV and "group" in header and row["group"].strip() not in (*LABELS, ""):
            raise SessionInputError(path, f"label {row['group']!r} is not one of {', '.join(LABELS)}", fix)
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


def split_sources(splits: dict[int, list[int]]) -> dict[int, list[int]]:
    """``{new cluster: [Kilosort clusters it took part of]}`` from ``{old: [new, …]}``."""
    sources: dict[int, list[int]] = {}
    for old, news in splits.items():
        for new in news:
            sources.setdefault(new, []).append(old)
    return {new: sorted(olds) for new, olds in sorted(sources.items())}


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

    @property
    def split_from(self) -> dict[int, list[int]]:
        return split_sources(self.splits)


def _load_npy(path: Path, fix: str) -> np.ndarray:
    try:
        return np.load(path).ravel()
    except (ValueError, OSError, EOFError) as exc:
        raise SessionInputError(path, f"not a readable .npy array ({exc})", fix) from None


def read_curation(folder: Path, templates: np.ndarray, basis: str, fix: str = PHY_SAVE_FIX) -> Curation | None:
    """The curation saved in ``folder`` over Kilosort's per-spike clusters ``templates``; None if Phy saved nothing."""
    clusters = _load_npy(folder / CLUSTERS_NPY, fix) if (folder / CLUSTERS_NPY).is_file() else templates
    if clusters.shape != templates.shape:
        raise SessionInputError(folder / CLUSTERS_NPY, f"{clusters.size} spikes, the sorting has {templates.size}", fix)
    ids, counts = np.unique(clusters, return_counts=True)
    known = {int(c) for c in ids}
    labels = read_cluster_groups(folder / GROUP_TSV, known, fix)
    has_info = check_cluster_info(folder / INFO_TSV, known, fix) > 0
    extra = [check_cluster_info(folder / name, known, fix) for name in label_files(folder)]
    changed = not np.array_equal(clusters, templates)
    if labels is None and not changed and not has_info and not extra:
        return None
    merges, splits = diff_clusters(templates, clusters)
    full = {c: (labels or {}).get(c, "unsorted") for c in sorted(known)}
    return Curation(
        basis, curation_fingerprint(folder), full, merges, splits, dict(zip(map(int, ids), map(int, counts))), changed
    )


def kilosort_labels(folder: Path) -> dict[int, str]:
    """Kilosort's good/mua label per cluster id (``cluster_KSLabel.tsv``)."""
    path = folder / "cluster_KSLabel.tsv"
    if not path.is_file():
        return {}
    _, rows = _read_tsv(path)
    return {int(row["cluster_id"]): row["KSLabel"] for row in rows if row.get("KSLabel", "").strip()}


# --- The journal ---------------------------------------------------------------------------------------------------


def journal(store: SessionStore) -> list[dict[str, Any]]:
    """Every curation event of the session, oldest first. A store from before the journal existed gets its history
    snapshots as events in the order they were saved."""
    path = curation_dir(store) / JOURNAL
    if path.is_file():
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    history = curation_dir(store) / HISTORY
    snapshots = [read_json(p / SNAPSHOT_JSON) for p in history.iterdir()] if history.is_dir() else []
    return [
        {"at": s["saved_at"], "basis": s["basis"], "fingerprint": s["fingerprint"], "event": SEEN, "detail": "history"}
        for s in sorted(snapshots, key=lambda s: (s["saved_at"], s["fingerprint"]))
    ]


def _write_journal(store: SessionStore, entries: list[dict[str, Any]]) -> None:
    with atomic_file(curation_dir(store) / JOURNAL) as staged:
        staged.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def ensure_journal(store: SessionStore) -> None:
    """Start ``journal.jsonl`` (from the history of a store made before it existed) before anything is added."""
    if not (curation_dir(store) / JOURNAL).is_file():
        _write_journal(store, journal(store))


def _log(store: SessionStore, basis: str, fingerprint: str | None, event: str, detail: str = "") -> None:
    """Append one event to ``journal.jsonl`` (the whole file rewritten atomically: it is small)."""
    entries = journal(store)
    entries.append({"at": _now(), "basis": basis, "fingerprint": fingerprint, "event": event, "detail": detail})
    _write_journal(store, entries)


def applying_fingerprint(store: SessionStore, basis: str) -> str | None:
    """The fingerprint of the curation that applies to sorting ``basis`` (the latest the journal names for it);
    ``none`` after a reset to Kilosort's clusters, None when no curation was ever seen for it."""
    named = [e for e in journal(store) if e["basis"] == basis and e["fingerprint"] is not None]
    return named[-1]["fingerprint"] if named else None


def snapshot_path(store: SessionStore, basis: str, fingerprint: str) -> Path:
    return curation_dir(store) / HISTORY / f"{basis}__{fingerprint}"


# --- Keeping curations and the sortings they were made on ------------------------------------------------------------


def _unit_lines(
    n_spikes: dict[int, int],
    ks_labels: dict[int, str],
    labels: dict[int, str],
    merges: dict[int, list[int]],
    split_from: dict[int, list[int]],
) -> list[str]:
    lines = ["cluster_id\tn_spikes\tkilosort_label\tcurated_label\tmerged_from\tsplit_from"]
    for cluster, n in sorted(n_spikes.items()):
        merged = ",".join(map(str, merges.get(cluster, [])))
        split = ",".join(map(str, split_from.get(cluster, [])))
        lines.append(f"{cluster}\t{n}\t{ks_labels.get(cluster, '')}\t{labels.get(cluster, '')}\t{merged}\t{split}")
    return lines


def _matching_metrics(store: SessionStore, n_spikes: dict[int, int]) -> Path | None:
    """``metrics/unit_metrics.csv`` when it describes exactly these clusters (same ids, same spike counts)."""
    import pandas as pd

    path = store.metrics_dir / METRICS_CSV
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    if {"unit_id", "n_spikes"} - set(table) or len(table) != len(n_spikes):
        return None
    return path if dict(zip(table["unit_id"].astype(int), table["n_spikes"].astype(int))) == n_spikes else None


def snapshot_curation(
    folder: Path, store: SessionStore, basis: str | None = None, curation: Curation | None = None
) -> Path | None:
    """Copy the Phy curation files of ``folder`` into ``curation/history/<basis>__<fingerprint>/`` (atomic, kept)
    with ``snapshot.json`` (when Phy saved it, its counts) and a readable ``curated_units.tsv``."""
    fingerprint = curation_fingerprint(folder)
    if fingerprint == "none" or not (folder / "spike_templates.npy").is_file():
        return None
    basis = basis or basis_version(folder)
    target = snapshot_path(store, basis, fingerprint)
    if target.is_dir():
        return target
    if curation is None:
        curation = read_curation(folder, np.load(folder / "spike_templates.npy").ravel(), basis)
    names = curation_files(folder)
    with atomic_directory(target) as staged:
        for name in names:
            shutil.copy2(folder / name, staged / name)
        saved = dt.datetime.fromtimestamp(max((folder / n).stat().st_mtime for n in names), dt.timezone.utc)
        summary: dict[str, Any] = {"basis": basis, "fingerprint": fingerprint, "saved_at": saved.isoformat()}
        summary.update(first_seen_at=_now(), files=names, source=os.path.relpath(folder, store.dir))
        if curation is not None:
            summary.update(
                counts=curation.counts,
                n_units=len(curation.n_spikes),
                merges={str(k): v for k, v in curation.merges.items()},
                splits={str(k): v for k, v in curation.splits.items()},
            )
            kilosort_ids = set(np.unique(np.load(folder / "spike_templates.npy")).tolist())
            ks = {c: v for c, v in kilosort_labels(folder).items() if c in kilosort_ids}  # Phy adds its own clusters
            lines = _unit_lines(curation.n_spikes, ks, curation.labels, curation.merges, curation.split_from)
            (staged / RECORD_TSV).write_text("\n".join(lines) + "\n")
            metrics = _matching_metrics(store, curation.n_spikes)
            if metrics is not None:
                shutil.copy2(metrics, staged / METRICS_CSV)
        (staged / SNAPSHOT_JSON).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return target


def _link_or_copy(source: Path, target: Path, link: bool) -> None:
    """A hard link where the source is never rewritten in place (``sorting/``: the store replaces it whole), else a
    copy (Phy rewrites its folder's tables in place)."""
    try:
        if link:
            os.link(source, target)
            return
    except OSError:
        pass
    shutil.copy2(source, target)


def archive_sorting(store: SessionStore, basis: str) -> Path | None:
    """Keep the sorting ``basis`` (spike times, Kilosort's clusters and labels, lineage, settings) under
    ``curation/sortings/<basis>/``, from ``sorting/`` or the Phy folder, whichever holds it; None if neither does."""
    target = curation_dir(store) / SORTINGS / basis
    if (target / SORTING_JSON).is_file():
        return target
    sources = [d for d in (store.sorting_dir, store.phy_dir) if (d / "spike_templates.npy").is_file()]
    source = next((d for d in sources if basis_version(d) == basis), None)
    if source is None:
        return None
    with atomic_directory(target) as staged:
        for name in SORTING_FILES:
            found = next((d / name for d in (source, store.sorting_dir, store.phy_dir) if (d / name).is_file()), None)
            if found is not None and (name not in (LINEAGE_FILE, EFFECTIVE_SETTINGS_FILE) or found.parent == source):
                _link_or_copy(found, staged / name, link=found.parent == store.sorting_dir)
        checksum = sorting_checksum(store.sorting_dir) if source == store.sorting_dir else None
        meta = {"basis": basis, "sorting_checksum": checksum, "archived_at": _now(), "from": source.name}
        (staged / SORTING_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return target


def sorting_folder(store: SessionStore, basis: str) -> Path | None:
    """Where the sorting ``basis`` can be read: ``sorting/`` when it is the current one, else its archive."""
    if (store.sorting_dir / "spike_templates.npy").is_file() and basis_version(store.sorting_dir) == basis:
        return store.sorting_dir
    archived = curation_dir(store) / SORTINGS / basis
    return archived if (archived / SORTING_JSON).is_file() else None


def set_aside_unreadable(store: SessionStore, folder: Path, problem: str) -> Path | None:
    """Copy the curation files of ``folder`` that could not be read into ``curation/unreadable/<time>__<basis>/``
    with why (``reason.json``), so replacing them loses nothing a person could still recover."""
    names = curation_files(folder)
    if not names:
        return None
    ensure_journal(store)
    basis = basis_version(folder) if (folder / "spike_templates.npy").is_file() else "unknown"
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = curation_dir(store) / UNREADABLE / f"{stamp}__{basis}"
    with atomic_directory(target) as staged:
        for name in names:
            shutil.copy2(folder / name, staged / name)
        reason = {"problem": problem, "basis": basis, "files": names, "at": _now()}
        (staged / "reason.json").write_text(json.dumps(reason, indent=2) + "\n")
    _log(store, basis, None, SET_ASIDE, f"{os.path.relpath(target, store.dir)}: {problem}")
    return target


def observe_phy_folder(store: SessionStore, fix: str | None = None) -> Curation | None:
    """Read the Phy folder's curation; a valid one is kept in history with its sorting, and becomes the curation
    that applies to its sorting when it is not that already (a save in Phy, or files copied back from history).
    Raises ``SessionInputError`` (with ``fix``, by default the restore command) when Phy's files are unreadable."""
    folder = store.phy_dir
    if not (folder / "spike_templates.npy").is_file():
        return None
    ensure_journal(store)
    basis = basis_version(folder)
    templates = np.load(folder / "spike_templates.npy").ravel()
    found = read_curation(folder, templates, basis, fix or restore_fix(store))
    if found is None:
        return None
    snapshot_curation(folder, store, basis, found)
    archive_sorting(store, basis)
    if applying_fingerprint(store, basis) != found.fingerprint:
        _log(
            store,
            basis,
            found.fingerprint,
            SEEN,
            os.path.relpath(snapshot_path(store, basis, found.fingerprint), store.dir),
        )
    return found


def preserve_phy_curation(store: SessionStore) -> Path | None:
    """Keep the Phy folder's curation before the folder is rebuilt (called by ``export_phy``): a valid one goes to
    history (even if nothing had observed it yet), unreadable files to ``curation/unreadable/``."""
    try:
        found = observe_phy_folder(store)
    except SessionInputError as exc:
        return set_aside_unreadable(store, store.phy_dir, f"{exc.path.name}: {exc.problem}")
    return snapshot_path(store, found.basis, found.fingerprint) if found is not None else None


def carry_forward(store: SessionStore, staged: Path) -> str | None:
    """Put the curation that applies to the staged Phy folder's sorting into it (a rebuild over the same sorting
    keeps the lab's labels, merges and splits); returns its fingerprint, None when there is none."""
    basis = basis_version(staged)
    fingerprint = applying_fingerprint(store, basis)
    snapshot = snapshot_path(store, basis, fingerprint) if fingerprint not in (None, "none") else None
    if snapshot is None or not snapshot.is_dir():
        return None
    for name in read_json(snapshot / SNAPSHOT_JSON).get("files") or curation_files(snapshot):
        shutil.copy2(snapshot / name, staged / name)
    read_curation(staged, np.load(staged / "spike_templates.npy").ravel(), basis)  # it applies to this sorting
    return fingerprint


# --- The record of the current sorting -------------------------------------------------------------------------------


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
    #: When Phy saved the applying curation (its files' time).
    saved_at: str | None = None
    #: Every curation kept for this session (``list_curations``).
    curations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def split_from(self) -> dict[int, list[int]]:
        return split_sources(self.splits)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> CurationRecord:
        ints = ("labels", "kilosort_labels", "merges", "splits", "n_spikes")
        fields = {
            key: {int(cluster): item for cluster, item in value.items()} if key in ints else value
            for key, value in payload.items()
            if key in cls.__dataclass_fields__  # a record written by an older version lacks the newer fields
        }
        return cls(**fields)


def list_curations(store: SessionStore) -> list[dict[str, Any]]:
    """Every curation kept for the session, oldest save first: sorting version, fingerprint, when saved and last
    chosen, counts, merges and splits, whether it applies to its sorting now and whether that sorting is current."""
    history = curation_dir(store) / HISTORY
    if not history.is_dir():
        return []
    events = journal(store)
    current = basis_version(store.sorting_dir) if (store.sorting_dir / "spike_templates.npy").is_file() else None
    rows = []
    for folder in history.iterdir():
        if not (folder / SNAPSHOT_JSON).is_file():
            continue
        snap = read_json(folder / SNAPSHOT_JSON)
        basis, fingerprint = snap["basis"], snap["fingerprint"]
        chosen = [e["at"] for e in events if e["basis"] == basis and e["fingerprint"] == fingerprint]
        rows.append(
            {
                "snapshot": folder.name,
                "sorting_version": basis,
                "fingerprint": fingerprint,
                "saved_at": snap["saved_at"],
                "last_chosen_at": chosen[-1] if chosen else None,
                "counts": snap.get("counts"),
                "n_units": snap.get("n_units"),
                "merges": snap.get("merges"),
                "splits": snap.get("splits"),
                "applies_to_its_sorting": applying_fingerprint(store, basis) == fingerprint,
                "sorting_is_current": basis == current,
                "sorting_kept": sorting_folder(store, basis) is not None,
            }
        )
    return sorted(rows, key=lambda r: (r["saved_at"], r["snapshot"]))


def record_curation(store: SessionStore) -> CurationRecord:
    """Read the Phy folder's curation, keep it, and write the record for the current sorting into ``curation/``.

    The current sorting is ``sorting/``; a curation applies only when its basis is that sorting. Otherwise the
    record is STALE and lists the sorting's own clusters (with Kilosort's labels), never the old curation's.
    """
    sorting_basis = basis_version(store.sorting_dir)
    observe_phy_folder(store)  # a fresh save (or restored files) becomes the applying curation of its sorting
    ks_labels = kilosort_labels(store.sorting_dir)
    templates = np.load(store.sorting_dir / "spike_templates.npy").ravel()
    fingerprint = applying_fingerprint(store, sorting_basis)
    snapshot = snapshot_path(store, sorting_basis, fingerprint) if fingerprint not in (None, "none") else None
    curation = read_curation(snapshot, templates, sorting_basis) if snapshot is not None else None
    if curation is not None:
        archive_sorting(store, sorting_basis)
        in_phy = (store.phy_dir / "spike_templates.npy").is_file() and basis_version(store.phy_dir) == sorting_basis
        phy_holds = curation_fingerprint(store.phy_dir) if in_phy else None
        source = (
            "phy folder"
            if phy_holds == curation.fingerprint
            else f"curation/{HISTORY}/{snapshot.name} (the Phy folder holds "
            f"{'no curation' if phy_holds in (None, 'none') else 'another one'}: `ks-platform curation restore` puts "
            "it back)"
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
            saved_at=read_json(snapshot / SNAPSHOT_JSON)["saved_at"],
        )
    else:
        ids, counts = np.unique(templates, return_counts=True)
        named = [e for e in journal(store) if e["fingerprint"] not in (None, "none")]
        latest = named[-1] if named else None
        stale = fingerprint is None and latest is not None and latest["basis"] != sorting_basis
        snap = read_json(snapshot_path(store, latest["basis"], latest["fingerprint"]) / SNAPSHOT_JSON) if stale else {}
        if stale:
            note = (
                f"the latest curation (saved {snap['saved_at']}) was made on sorting {snap['basis']}, not on the "
                f"current sorting {sorting_basis}: it is kept in curation/{HISTORY}/{snap['basis']}__"
                f"{snap['fingerprint']} with its sorting and exported as its own NWB version, never applied to this "
                "sorting; curate the new sorting in Phy"
            )
        elif fingerprint == "none":
            note = "reset to Kilosort's clusters (ks-platform curation restore --from-sorting); earlier curations kept"
        else:
            note = "Phy has saved no curation for this sorting"
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
            saved_at=snap.get("saved_at"),
        )
    record.sorting_checksum = sorting_checksum(store.sorting_dir)
    record.curations = list_curations(store)
    write_record(store, record)
    return record


def write_record(store: SessionStore, record: CurationRecord) -> None:
    """``curated_units.json`` and a per-unit ``curated_units.tsv`` (atomic each)."""
    folder = curation_dir(store)
    lines = _unit_lines(record.n_spikes, record.kilosort_labels, record.labels, record.merges, record.split_from)
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
    snapshot = snapshot_path(store, record.curation_basis, record.fingerprint)
    return np.load(snapshot / CLUSTERS_NPY).ravel() if (snapshot / CLUSTERS_NPY).is_file() else templates


@dataclass(frozen=True)
class KeptCuration:
    """One kept curation of a (possibly earlier) sorting, as read from history with that sorting."""

    basis: str
    fingerprint: str
    snapshot: Path
    sorting: Path
    curation: Curation
    kilosort_labels: dict[int, str]
    saved_at: str

    def spike_clusters(self) -> np.ndarray:
        path = self.snapshot / CLUSTERS_NPY
        return np.load(path).ravel() if path.is_file() else np.load(self.sorting / "spike_templates.npy").ravel()


def kept_curation(store: SessionStore, basis: str, fingerprint: str) -> KeptCuration:
    """A curation from history together with the sorting it was made on (for exporting an earlier curation)."""
    snapshot = snapshot_path(store, basis, fingerprint)
    sorting = sorting_folder(store, basis)
    if not snapshot.is_dir():
        raise SessionInputError(
            snapshot, "no such curation in history", "pick one that `ks-platform curation list` shows"
        )
    if sorting is None:
        raise SessionInputError(
            snapshot,
            f"the sorting {basis} it was made on is no longer kept (curated before curation/{SORTINGS}/ existed)",
            "re-sort with the settings of that sorting to get it back, or restore the old sorting/ from a backup",
        )
    templates = np.load(sorting / "spike_templates.npy").ravel()
    curation = read_curation(snapshot, templates, basis)
    if curation is None:
        raise SessionInputError(snapshot, "holds no curation", "pick one that `ks-platform curation list` shows")
    snap = read_json(snapshot / SNAPSHOT_JSON)
    labels = {c: v for c, v in kilosort_labels(sorting).items() if c in set(np.unique(templates).tolist())}
    return KeptCuration(basis, fingerprint, snapshot, sorting, curation, labels, snap["saved_at"])


# --- Restoring ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Restored:
    """What ``restore_curation`` put into the Phy folder."""

    basis: str
    fingerprint: str
    source: str
    files: list[str]
    set_aside: Path | None


def _replace_curation_files(folder: Path, source: Path | None, names: list[str]) -> None:
    """Remove the Phy folder's curation files (already kept or set aside), then copy ``names`` from ``source``."""
    for name in curation_files(folder):
        (folder / name).unlink()
    for name in names:
        with atomic_file(folder / name) as staged:
            shutil.copy2(source / name, staged)


def restore_curation(store: SessionStore, snapshot: str | None = None, from_sorting: bool = False) -> Restored:
    """Put a kept curation back into the Phy folder: by default the latest one saved for the folder's sorting,
    ``snapshot`` (a ``curation/history/`` folder name) for an earlier one, ``from_sorting`` for Kilosort's clusters.

    What the folder holds first is kept (history) or, unreadable, set aside; Phy's cache (``.phy/``, which remembers
    the spikes of each cluster as Phy last saw them) is cleared, as ``phy template-gui --clear-cache`` does. The
    restored curation is journalled, so ``curated_units`` applies it. The caller holds the session lock."""
    folder = store.phy_dir
    if not (folder / "spike_templates.npy").is_file():
        raise SessionInputError(folder, "there is no Phy folder to restore into", "materialize phy_bundle first")
    basis = basis_version(folder)
    aside = None
    try:
        observe_phy_folder(store)
    except SessionInputError as exc:
        aside = set_aside_unreadable(store, folder, f"{exc.path.name}: {exc.problem}")
    if from_sorting:
        kilosort = store.sorting_dir if sorting_folder(store, basis) == store.sorting_dir else None
        for name in curation_files(folder):
            (folder / name).unlink()
        with atomic_file(folder / CLUSTERS_NPY) as staged, open(staged, "wb") as handle:
            np.save(handle, np.load(folder / "spike_templates.npy"))
        names = [CLUSTERS_NPY]
        if kilosort is not None and (kilosort / GROUP_TSV).is_file():
            shutil.copy2(kilosort / GROUP_TSV, folder / GROUP_TSV)  # Kilosort's own (KSLabel) table again
        fingerprint, source = "none", "Kilosort's clusters (spike_templates.npy)"
        _log(store, basis, "none", RESET, "ks-platform curation restore --from-sorting")
    else:
        if snapshot is None:
            fingerprint = applying_fingerprint(store, basis)
            if fingerprint in (None, "none"):
                raise SessionInputError(
                    folder / CLUSTERS_NPY,
                    "no curation of this sorting was ever saved to restore",
                    f"start again from Kilosort's clusters: `ks-platform curation restore {_target(store)} "
                    "--from-sorting`",
                )
            path = snapshot_path(store, basis, fingerprint)
        else:
            path = curation_dir(store) / HISTORY / Path(snapshot).name
            if not (path / SNAPSHOT_JSON).is_file():
                raise SessionInputError(
                    path, "no such curation in history", "pick one `ks-platform curation list` shows"
                )
            snap = read_json(path / SNAPSHOT_JSON)
            if snap["basis"] != basis:
                raise SessionInputError(
                    path,
                    f"it was made on sorting {snap['basis']}, the Phy folder holds sorting {basis}",
                    "restore a curation of this sorting (`ks-platform curation list`), or export that one as NWB "
                    "(`ks-platform curation export --snapshot`)",
                )
            fingerprint = snap["fingerprint"]
        names = read_json(path / SNAPSHOT_JSON).get("files") or curation_files(path)
        _replace_curation_files(folder, path, names)
        source = f"curation/{HISTORY}/{path.name}"
        _log(store, basis, fingerprint, RESTORED, source)
    shutil.rmtree(folder / PHY_CACHE, ignore_errors=True)
    return Restored(basis, fingerprint, source, names, aside)

"""Unit quality labels: bombcell on a probe's Kilosort sorting and recording binary, beside Kilosort's and the lab's.

``label_units`` runs bombcell (PyPI ``bombcell``, the Python port) on ``sorting/`` and ``binary/`` and writes
``labels/`` atomically:

- ``cluster_bc_unitType.tsv``: bombcell's label per cluster (``GOOD``, ``MUA``, ``NOISE``, ``NON-SOMA``), bombcell's own
  file, which ``pipeline.label_session`` also puts into the Phy folder (Phy shows it as the ``bc_unitType`` column);
- ``unit_labels.tsv``: per cluster bombcell's label beside Kilosort's, with bombcell's metrics;
- ``labels.json``: bombcell's version, every parameter it ran with, counts per label, run time and the sorting it
  was made on (a label never applies to another sorting);
- bombcell's own outputs (``templates._bc_qMetrics.parquet`` …) and the two half-recording raw waveforms of every
  unit (``RawWaveforms/Unit<id>_RawSpikes.npy``) that UnitMatch reads in ``unit_tracks``;
- bombcell's figures: waveforms per label, metric histograms with their thresholds, which criteria failed.

Parameters, lowest layer first: bombcell's defaults for UnitMatch (``get_unit_match_parameters``: its defaults plus
1,000 raw spikes per unit, saved per half), the probe type's (``PROBE_TYPE_DEFAULTS``), bins scaled to a short
recording (``duration_defaults``), the session config's ``bombcell`` section (bombcell's own names, validated).
What the data decides (sampling rate, channels, µV per bit, paths) cannot be overridden.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ks_platform.core import conversion
from ks_platform.core.errors import SessionInputError
from ks_platform.core.figures import new_figure, save_figure
from ks_platform.core.names import AGREEMENT_DIR, BOMBCELL_TSV, LABELS_DIR, SUMMARY_FILE
from ks_platform.core.session_config import CONFIG_FILE, ProbeConfig
from ks_platform.core.settings import settings_hash
from ks_platform.core.store import SessionStore, atomic_directory, atomic_file, read_json, write_json_atomic

LABELS_JSON = "labels.json"
LABELS_TSV = "unit_labels.tsv"
RAW_WAVEFORMS = "RawWaveforms"
#: bombcell's labels (``NON-SOMA GOOD``/``NON-SOMA MUA`` instead of ``NON-SOMA`` with ``splitGoodAndMua_NonSomatic``).
LABELS = ("GOOD", "MUA", "NOISE", "NON-SOMA")
#: The Kilosort outputs bombcell reads (``pc_features`` only for its drift and distance metrics: they are large).
KILOSORT_FILES = (
    "spike_times.npy",
    "spike_templates.npy",
    "spike_clusters.npy",  # bombcell 0.94 needs it (handle_manual_curation); the sorting's own, never a curation
    "amplitudes.npy",
    "templates.npy",
    "whitening_mat_inv.npy",
    "channel_positions.npy",
    "channel_map.npy",
    "ops.npy",
    "params.py",
)
PC_FILES = ("pc_features.npy", "pc_feature_ind.npy")
#: Parameters the data or the platform decides: refused in the session config.
FIXED = (
    "ephysKilosortPath",
    "raw_data_file",
    "ephys_meta_file",
    "gain_to_uV",
    "ephys_sample_rate",
    "nChannels",
    "nSyncChannels",
    "saveMultipleRaw",
    "saveAsTSV",
    "unit_type_for_phy",
    "plotGlobal",
    "plotDetails",
    "savePlots",
    "plotsSaveDir",
    "verbose",
    "reextractRaw",
    "decompress_data",
    "spike_width",
)
#: Platform changes to bombcell's defaults per probe kind (``settings.probe_kind``). bombcell's defaults were made
#: for Neuropixels; none are changed for now.
PROBE_TYPE_DEFAULTS: dict[str, dict[str, Any]] = {"neuropixels": {}, "generic": {}}
#: How the platform runs bombcell: quiet, threads (a step's process pool must not fork Dagster), figures returned.
PLATFORM_PARAMETERS = {
    "verbose": False,
    "plotGlobal": True,
    "savePlots": False,
    "saveAsTSV": True,
    "unit_type_for_phy": True,
    "reextractRaw": True,
    "joblib_backend_preference": "threads",
}
#: bombcell's metrics shown beside each label (``unit_labels.tsv``, ``unit_metrics``, the asset's table).
METRICS = (
    "nSpikes",
    "rawAmplitude",
    "signalToNoiseRatio",
    "fractionRPVs_estimatedTauR",
    "percentageSpikesMissing_gaussian",
    "presenceRatio",
    "nPeaks",
    "nTroughs",
    "waveformDuration_peakTrough",
    "spatialDecaySlope",
    "waveformBaselineFlatness",
)
FIGURES = {"waveforms_overlay": "bombcell_waveforms", "histograms": "bombcell_histograms"}
UPSET_PNG = "bombcell_criteria"
COUNTS_PNG = "label_counts"
PARAMETERS_FIX = "use bombcell's own parameter names and types (bombcell.get_default_parameters), or remove it"


@dataclass
class UnitLabels:
    """bombcell's labels of one sorting: the per-cluster table, the summary (``labels.json``) and the figures."""

    table: pd.DataFrame
    summary: dict[str, Any]
    figures: dict[str, Path] = field(default_factory=dict)

    @property
    def labels(self) -> dict[int, str]:
        return dict(zip(self.table["cluster_id"].astype(int), self.table["bombcell_label"].astype(str)))


def labels_dir(store: SessionStore) -> Path:
    return store.dir / LABELS_DIR


def bombcell_version() -> str:
    from importlib.metadata import version

    return version("bombcell")


def _import_bombcell():
    """bombcell, imported headless (its plots must not look for a display)."""
    import matplotlib

    matplotlib.use("Agg")
    with contextlib.redirect_stdout(io.StringIO()):  # it announces its optional GUI on import
        import bombcell

    return bombcell


def default_parameters() -> dict[str, Any]:
    """bombcell's defaults for a Kilosort 4 sorting whose raw waveforms UnitMatch will read (paths left out)."""
    bc = _import_bombcell()
    return bc.get_unit_match_parameters("", raw_file=None, kilosort_version=4)


def duration_defaults(duration_s: float) -> dict[str, float]:
    """bombcell bins presence and drift in 60 s windows: a recording shorter than ten windows gets ten bins."""
    if duration_s >= 600:
        return {}
    width = float(max(duration_s / 10.0, 0.5))
    return {"presenceRatioBinSize": width, "driftBinSize": width}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return "a number"
    if isinstance(value, np.ndarray):
        return "a list of numbers"
    if isinstance(value, str):
        return "a string"
    return "any JSON value"


def _fits(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float, np.integer, np.floating)):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
    if isinstance(default, np.ndarray):
        return isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def validate_overrides(values: dict[str, Any], config: ProbeConfig | None = None) -> dict[str, Any]:
    """The session config's ``bombcell`` section, checked against bombcell's own parameters (names and types); a bad
    one is a ``SessionInputError`` naming the config file that sets it and the fix."""
    defaults = default_parameters()
    sources = config.sources if config is not None else {}
    checked = {}
    for key, value in values.items():
        where = sources.get(f"bombcell.{key}", Path(CONFIG_FILE))
        if key in FIXED:
            raise SessionInputError(
                where,
                f"bombcell parameter {key!r} is decided by the recording and the platform, not by the config",
                f"remove {key!r} from the bombcell section",
            )
        if key not in defaults:
            close = difflib.get_close_matches(key, [k for k in defaults if k not in FIXED], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise SessionInputError(where, f"{key!r} is not a bombcell parameter", hint + PARAMETERS_FIX)
        if not _fits(value, defaults[key]):
            raise SessionInputError(
                where,
                f"bombcell parameter {key!r} must be {_kind(defaults[key])}, got {value!r}",
                f"set {key!r} to {_kind(defaults[key])} (bombcell's default: {json_safe(defaults[key])!r}), "
                "or remove it",
            )
        checked[key] = np.asarray(value, dtype=float) if isinstance(defaults[key], np.ndarray) else value
    return checked


def json_safe(value: Any) -> Any:
    """``value`` with numpy arrays and scalars, paths and non-finite floats made JSON (lineage, metadata)."""
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def bombcell_parameters(
    view: Path,
    binary: conversion.RecordingBinary,
    probe_kind: str,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """Every parameter bombcell runs with: its UnitMatch defaults < probe type < short-recording bins < ``overrides``
    (validated) < what the data decides."""
    bc = _import_bombcell()
    duration = binary.n_samples / binary.sampling_frequency
    param = bc.get_unit_match_parameters(
        str(view), raw_file=str(binary.path), kilosort_version=4, gain_to_uV=float(binary.uv_per_bit)
    )
    param.update(PROBE_TYPE_DEFAULTS.get(probe_kind, {}))
    param.update(duration_defaults(duration))
    param.update({**PLATFORM_PARAMETERS, "joblib_n_jobs": _workers()})
    param.update(overrides)
    param.update(
        {
            "ephys_sample_rate": float(binary.sampling_frequency),
            "nChannels": int(binary.n_chan_bin),  # every row of the binary; channel_map.npy picks the probe's
            "nSyncChannels": 0,
            "ephys_meta_file": None,
            "raw_data_file": str(binary.path),
            "gain_to_uV": float(binary.uv_per_bit),
        }
    )
    return param


def _kilosort_view(sorting_dir: Path, view: Path, with_pcs: bool) -> None:
    """The sorting's files bombcell reads, as links in ``view`` (bombcell writes its Phy TSVs next to them)."""
    view.mkdir()
    for name in (*KILOSORT_FILES, *(PC_FILES if with_pcs else ())):
        if (sorting_dir / name).is_file():
            (view / name).symlink_to((sorting_dir / name).resolve())
    sparse_index = sorting_dir / "template_ind.npy"
    if sparse_index.is_file() and (sorting_dir / "channel_map.npy").is_file():
        # SpikeInterface's Phy export writes sparse templates (each on its own channels): bombcell reads dense ones
        sparse, index = np.load(sorting_dir / "templates.npy"), np.load(sparse_index)
        dense = np.zeros((*sparse.shape[:2], np.load(sorting_dir / "channel_map.npy").size), dtype=sparse.dtype)
        for unit in range(sparse.shape[0]):
            used = index[unit] >= 0
            dense[unit][:, index[unit][used]] = sparse[unit][:, used]
        (view / "templates.npy").unlink(missing_ok=True)
        np.save(view / "templates.npy", dense)
    unwhitening = view / "whitening_mat_inv.npy"
    if not unwhitening.exists() and (sorting_dir / "channel_map.npy").is_file():
        # SpikeInterface's Phy export (the other sorters) writes unwhitened templates and no whitening matrix: the
        # identity, as phylib assumes when the file is absent
        n_channels = np.load(sorting_dir / "channel_map.npy").size
        np.save(unwhitening, np.eye(n_channels, dtype=np.float32))


def _save_figures(figures: dict[str, Any], folder: Path, log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """bombcell's figures as PNGs; one that cannot be drawn (bombcell sizes some from the metrics, which can be
    infinite) is skipped with a log line: a figure never fails the labels."""
    import matplotlib.pyplot as plt

    upsets = [f for f in figures.get("upset_plots") or [] if f is not None]
    wanted = {name: figures.get(key) for key, name in FIGURES.items()} | {UPSET_PNG: upsets[0] if upsets else None}
    saved: dict[str, Path] = {}
    for name, figure in wanted.items():
        if figure is None:
            continue
        try:
            figure.savefig(folder / f"{name}.png", dpi=80, bbox_inches="tight")
            saved[name] = folder / f"{name}.png"
        except (ValueError, TypeError, OverflowError, MemoryError) as exc:
            (folder / f"{name}.png").unlink(missing_ok=True)
            if log is not None:
                log(f"bombcell's {name} figure could not be drawn ({type(exc).__name__}); skipped")
    for figure in [*(figures.get(k) for k in FIGURES), *upsets]:
        if figure is not None:
            plt.close(figure)
    return saved


def _to_sorting_channels(folder: Path, channel_map: np.ndarray) -> None:
    """bombcell saves each unit's half-recording waveforms over every row of the binary (sync and unsorted channels
    included); keep the sorted channels in Kilosort's order, the order of ``channel_positions.npy`` UnitMatch reads."""
    for path in folder.glob("Unit*_RawSpikes.npy"):
        waveforms = np.load(path)
        if waveforms.shape[1] != len(channel_map) or not np.array_equal(channel_map, np.arange(len(channel_map))):
            np.save(path, np.ascontiguousarray(waveforms[:, channel_map, :]))


def _kilosort_labels(sorting_dir: Path) -> dict[int, str]:
    path = sorting_dir / "cluster_KSLabel.tsv"
    if not path.is_file():
        return {}
    table = pd.read_csv(path, sep="\t")
    return dict(zip(table["cluster_id"].astype(int), table["KSLabel"].astype(str)))


def _no_units(sorting_dir: Path) -> SessionInputError:
    return SessionInputError(
        sorting_dir / "spike_clusters.npy",
        "the sorting has no units: bombcell has nothing to label",
        "look at sorted_units' drift and diagnostics figures, check the probe map and the Kilosort thresholds "
        "(Th_universal, Th_learned), then re-materialize sorted_units",
    )


class _ReadOnlyMemmaps:
    """numpy as bombcell's waveform extraction sees it, with ``memmap`` always read-only."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def memmap(*args: Any, **kwargs: Any) -> np.memmap:
        if kwargs.get("mode", "r") not in ("r", "c"):
            raise ValueError(
                f"bombcell asked to open the raw data with mode {kwargs['mode']!r}; only reading is allowed"
            )
        return np.memmap(*args, **{**kwargs, "mode": "r"})


@contextlib.contextmanager
def read_only_raw_data():
    """bombcell maps the recording with ``np.memmap``'s default mode ``r+`` (read-write): that fails on a read-only
    store or container mount and could write into a zero-copy landing file. Within this block its waveform extraction
    maps it read-only."""
    import importlib

    # the module, not the function of the same name that bombcell's package exports
    extraction = importlib.import_module("bombcell.extract_raw_waveforms")

    real = extraction.np
    extraction.np = _ReadOnlyMemmaps()
    try:
        yield
    finally:
        extraction.np = real


def label_units(
    store: SessionStore,
    config: ProbeConfig | None = None,
    probe_kind: str = "generic",
    verify: Callable[[], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> UnitLabels:
    """bombcell on the sorting and the binary of ``store``, with the session config's ``bombcell`` section; written
    to ``labels/`` (``verify`` runs before it is published and raises when the input changed)."""
    summary_path = store.sorting_dir / SUMMARY_FILE
    if not summary_path.is_file():
        raise SessionInputError(
            summary_path,
            "the session has no sorting to label (sorted_units was not materialized, or its output was removed)",
            "materialize sorted_units for this partition first",
        )
    sort_summary = read_json(summary_path)
    clusters = np.load(store.sorting_dir / "spike_clusters.npy").ravel()
    if clusters.size == 0 or int(sort_summary.get("n_units", 0)) == 0:
        raise _no_units(store.sorting_dir)
    overrides = validate_overrides(config.bombcell if config is not None else {}, config)
    binary = conversion.load_recording_binary(store.binary_dir)
    bc = _import_bombcell()
    started = time.perf_counter()
    with atomic_directory(labels_dir(store)) as staged:
        view = staged / ".kilosort"
        param = bombcell_parameters(view, binary, probe_kind, overrides)
        _kilosort_view(store.sorting_dir, view, param.get("computeDrift") or param.get("computeDistanceMetrics"))
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed), read_only_raw_data():
                metrics, param, _, unit_types, figures = bc.run_bombcell(
                    str(view), str(staged), param, return_figures=True
                )
        except Exception:
            if log is not None:
                log("bombcell's output before it failed:\n" + printed.getvalue()[-4000:])
            raise
        _to_sorting_channels(staged / RAW_WAVEFORMS, np.load(store.sorting_dir / "channel_map.npy").ravel())
        seconds = time.perf_counter() - started
        figure_paths = _save_figures(figures or {}, staged, log)
        table = _label_table(metrics, unit_types, clusters, _kilosort_labels(store.sorting_dir))
        figure_paths[COUNTS_PNG] = plot_label_counts(table, staged / f"{COUNTS_PNG}.png")
        table[["cluster_id", "bombcell_label"]].rename(columns={"bombcell_label": "bc_unitType"}).to_csv(
            staged / BOMBCELL_TSV, sep="\t", index=False
        )
        table.to_csv(staged / LABELS_TSV, sep="\t", index=False)
        shutil.rmtree(view)
        recorded = {
            k: json_safe(v)
            for k, v in param.items()
            if k not in ("unique_templates", "empty_unit_idx", "maxChannels_full", "raw_waveforms_id_match")
        }
        counts = {
            label: int((table["bombcell_label"] == label).sum()) for label in sorted(set(table["bombcell_label"]))
        }
        summary = {
            "bombcell_version": bombcell_version(),
            "sorting_checksum": sort_summary.get("output_checksum", ""),
            "n_units": int(len(table)),
            "counts": counts,
            "seconds": round(seconds, 3),
            "overrides": json_safe(overrides),
            "parameters": recorded,
        }
        summary["version"] = settings_hash(
            {"sorting": summary["sorting_checksum"], "parameters": recorded, "labels": table["bombcell_label"].tolist()}
        )
        write_json_atomic(staged / LABELS_JSON, summary)
        if verify is not None:
            verify()
    folder = labels_dir(store)
    return UnitLabels(table, summary, {name: folder / path.name for name, path in figure_paths.items()})


def _label_table(
    metrics: dict, unit_types: np.ndarray, clusters: np.ndarray, ks_labels: dict[int, str]
) -> pd.DataFrame:
    """One row per cluster that has spikes: bombcell's label, Kilosort's, bombcell's metrics."""
    frame = pd.DataFrame({name: np.asarray(metrics[name], dtype=float) for name in METRICS if name in metrics})
    frame.insert(0, "cluster_id", np.asarray(metrics["phy_clusterID"]).astype(int))
    frame.insert(1, "bombcell_label", [str(t) for t in unit_types])
    present = set(np.unique(clusters).astype(int).tolist())
    frame = frame[frame["cluster_id"].isin(present)].reset_index(drop=True)
    frame.insert(2, "kilosort_label", [ks_labels.get(int(c), "") for c in frame["cluster_id"]])
    return frame.round(4)


def load_labels(store: SessionStore) -> UnitLabels | None:
    """The published labels (whatever sorting they were made on), or None."""
    folder = labels_dir(store)
    if not (folder / LABELS_JSON).is_file():
        return None
    figures = {name: folder / f"{name}.png" for name in (COUNTS_PNG, *FIGURES.values(), UPSET_PNG)}
    return UnitLabels(
        pd.read_csv(folder / LABELS_TSV, sep="\t"),
        read_json(folder / LABELS_JSON),
        {k: v for k, v in figures.items() if v.is_file()},
    )


def current_labels(store: SessionStore) -> UnitLabels | None:
    """The published labels only if they were made on the sorting now in ``sorting/`` (else None)."""
    labels = load_labels(store)
    summary_path = store.sorting_dir / SUMMARY_FILE
    if labels is None or not summary_path.is_file():
        return None
    return labels if labels.summary.get("sorting_checksum") == read_json(summary_path).get("output_checksum") else None


# --------------------------------------------------------------------------------------------- the lab's verdict
#: The Phy label that agrees with each bombcell label (bombcell's NON-SOMA units are neither, for a lab: not scored).
PHY_EQUIVALENT = {"GOOD": "good", "MUA": "mua", "NOISE": "noise"}
AGREEMENT_JSON = "agreement.json"


def label_agreement(store: SessionStore) -> dict[str, Any]:
    """How often the lab's Phy curation kept or overruled bombcell's label, per bombcell label, over the clusters
    the lab labelled and did not merge or split (a merged or split cluster is a new cluster bombcell never saw)."""
    from ks_platform.core.curation import CURATED, current_record

    labels = current_labels(store)
    if labels is None:
        raise SessionInputError(
            labels_dir(store) / LABELS_JSON,
            "no bombcell labels for the current sorting",
            "materialize unit_labels for this partition first",
        )
    record = current_record(store)
    curated = record.labels if record is not None and record.status == CURATED else {}
    # Kilosort's clusters the lab merged into others or split: their label went to clusters bombcell never saw.
    changed = {c for old in record.merges.values() for c in old} | set(record.splits) if record is not None else set()
    per_label: dict[str, dict[str, Any]] = {}
    matrix: dict[str, dict[str, int]] = {}
    reviewed = agreed = 0
    for cluster, label in sorted(labels.labels.items()):
        lab = curated.get(cluster)
        row = per_label.setdefault(label, {"units": 0, "reviewed": 0, "kept": 0, "overruled": 0, "changed": 0})
        row["units"] += 1
        if cluster in changed:
            row["changed"] += 1
            continue
        if lab in (None, "unsorted"):
            continue
        matrix.setdefault(label, {}).setdefault(lab, 0)
        matrix[label][lab] += 1
        if label not in PHY_EQUIVALENT:
            continue
        row["reviewed"] += 1
        reviewed += 1
        if PHY_EQUIVALENT[label] == lab:
            row["kept"] += 1
            agreed += 1
        else:
            row["overruled"] += 1
    for row in per_label.values():
        row["overruled_fraction"] = round(row["overruled"] / row["reviewed"], 4) if row["reviewed"] else None
    return {
        "curation_status": record.status if record is not None else "none",
        "curation_fingerprint": record.fingerprint if record is not None else None,
        "labels_version": labels.summary["version"],
        "reviewed_units": reviewed,
        "agreement": round(agreed / reviewed, 4) if reviewed else None,
        "by_bombcell_label": per_label,
        "matrix": matrix,
    }


def write_agreement(store: SessionStore, agreement: dict[str, Any]) -> Path:
    """``label_agreement/agreement.json``, atomically."""
    with atomic_directory(store.dir / AGREEMENT_DIR) as staged:
        (staged / AGREEMENT_JSON).write_text(json.dumps(agreement, indent=2, sort_keys=True) + "\n")
    return store.dir / AGREEMENT_DIR / AGREEMENT_JSON


def plot_label_counts(table: pd.DataFrame, path: Path) -> Path:
    """Units per bombcell label, split by Kilosort's own label (a quick look at how the two calls differ)."""
    plt, fig = new_figure(5, 3)
    ax = fig.add_subplot(1, 1, 1)
    names = [label for label in LABELS if label in set(table["bombcell_label"])] + sorted(
        set(table["bombcell_label"]) - set(LABELS)
    )
    bottom = np.zeros(len(names))
    for ks_label, color in (("good", "tab:green"), ("mua", "tab:orange"), ("", "tab:gray")):
        counts = np.array(
            [int(((table["bombcell_label"] == n) & (table["kilosort_label"] == ks_label)).sum()) for n in names]
        )
        if counts.any():
            ax.bar(names, counts, bottom=bottom, color=color, label=f"Kilosort {ks_label or 'other'}")
            bottom += counts
    ax.set(ylabel="units", title=f"bombcell labels of {len(table)} units")
    ax.legend(fontsize=7)
    return save_figure(plt, fig, path)


def write_phy_column(store: SessionStore) -> Path | None:
    """bombcell's ``cluster_bc_unitType.tsv`` in the Phy folder, where Phy shows it as the ``bc_unitType`` column (a
    curation saved in Phy keeps it); removed when the labels were made on another sorting."""
    path = store.phy_dir / BOMBCELL_TSV
    if not store.phy_dir.is_dir():
        return None
    labels = current_labels(store)
    if labels is None:
        path.unlink(missing_ok=True)
        return None
    with atomic_file(path) as staged:
        shutil.copyfile(labels_dir(store) / BOMBCELL_TSV, staged)
    return path

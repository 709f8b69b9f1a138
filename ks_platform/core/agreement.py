"""How much a probe's sorters agree: SpikeInterface's comparison of the probe's sorting with each compared sorter's.

Writes ``agreement/`` atomically: ``agreement.json`` (per pair: units each, matched units, units only one sorter
found, mean agreement of the matches; the consensus; each sorter's ground-truth score where the session has one),
``units.tsv`` (every unit of every sorter and its match), ``consensus_units.tsv`` (units every sorter found) and
``agreement.png`` (agreement matrices and counts).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ks_platform.core import conversion
from ks_platform.core.figures import new_figure, save_figure
from ks_platform.core.settings import settings_hash
from ks_platform.core.store import SessionStore, atomic_directory, write_json_atomic
from ks_platform.core.timeline import recorded_segments, to_acquisition_samples

AGREEMENT_JSON = "agreement.json"
UNITS_TSV = "units.tsv"
CONSENSUS_TSV = "consensus_units.tsv"
FIGURE_PNG = "agreement.png"
#: SpikeInterface's defaults: spikes of two units within 0.4 ms coincide; a pair agreeing on ≥ 50 % of their spikes
#: (matched / (n1 + n2 - matched)) is a match.
DELTA_TIME_MS = 0.4
MATCH_SCORE = 0.5


@dataclass
class AgreementReport:
    data_version: str
    metadata: dict[str, Any]
    figures: dict[str, Path] = field(default_factory=dict)


def load_sorting(folder: Path, sampling_frequency: float):
    """A sorting folder's spike trains (``spike_times.npy`` + ``spike_clusters.npy``) as a SpikeInterface sorting."""
    from spikeinterface.core import NumpySorting

    times = np.load(folder / "spike_times.npy").ravel().astype(np.int64)
    clusters = np.load(folder / "spike_clusters.npy").ravel().astype(np.int64)
    return NumpySorting.from_samples_and_labels([times], [clusters], sampling_frequency)


def compare_pair(first: str, second: str, sortings: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """SpikeInterface's symmetric comparison of two sortings: matched units (Hungarian), their agreement, the units
    only one sorter found."""
    from spikeinterface.comparison import compare_two_sorters

    comparison = compare_two_sorters(
        sortings[first],
        sortings[second],
        sorting1_name=first,
        sorting2_name=second,
        delta_time=DELTA_TIME_MS,
        match_score=MATCH_SCORE,
    )
    m12, m21 = comparison.get_matching()
    counts = {name: sortings[name].count_num_spikes_per_unit() for name in (first, second)}
    matches = [
        {
            first: int(u1),
            second: int(u2),
            "agreement": round(float(comparison.agreement_scores.at[u1, u2]), 4),
            f"{first}_spikes": int(counts[first][u1]),
            f"{second}_spikes": int(counts[second][u2]),
        }
        for u1, u2 in m12.items()
        if u2 != -1
    ]
    only = {first: [int(u) for u, v in m12.items() if v == -1], second: [int(u) for u, v in m21.items() if v == -1]}
    pair = {
        "sorters": [first, second],
        "n_units": {first: len(m12), second: len(m21)},
        "matched": len(matches),
        "only": {name: len(units) for name, units in only.items()},
        "only_units": only,
        "mean_agreement_of_matched": round(float(np.mean([m["agreement"] for m in matches])), 4) if matches else None,
        "matches": matches,
    }
    return pair, comparison


def ground_truth_scores(
    store: SessionStore, folders: Mapping[str, Path], truth: Path, sampling_frequency: float
) -> dict[str, Any]:
    """Each sorter's score against the session's ground truth (the same check as ``sorted_units``'s)."""
    from ks_platform.core.ground_truth import score_sorting

    timeline = recorded_segments(store.raw_manifest)
    scores = {}
    for name, folder in folders.items():
        spikes = np.load(folder / "spike_times.npy").ravel()
        clusters = np.load(folder / "spike_clusters.npy").ravel()
        score = score_sorting(truth, to_acquisition_samples(spikes, timeline), clusters, sampling_frequency)
        scores[name] = {
            "well_detected_units": score.well_detected,
            "accuracy_bar": score.well_detected_accuracy,
            "ground_truth_units": len(score.per_unit),
            "required": score.min_well_detected_units,
        }
    return scores


def plot_agreement(pairs: list[dict[str, Any]], comparisons: list[Any], path: Path) -> Path:
    """Per pair: the agreement matrix (units ordered so matches lie on the diagonal) and the counts of matched units
    and units only one sorter found."""
    plt, fig = new_figure(5.5 * len(pairs), 8)
    for column, (pair, comparison) in enumerate(zip(pairs, comparisons)):
        first, second = pair["sorters"]
        scores = comparison.get_ordered_agreement_scores()
        matrix_ax = fig.add_subplot(2, len(pairs), column + 1)
        image = matrix_ax.imshow(scores.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        matrix_ax.set(
            xlabel=f"{second} units",
            ylabel=f"{first} units",
            title=f"agreement {first} vs {second}",
            xticks=range(scores.shape[1]),
            yticks=range(scores.shape[0]),
        )
        matrix_ax.set_xticklabels(scores.columns, fontsize=6, rotation=90)
        matrix_ax.set_yticklabels(scores.index, fontsize=6)
        fig.colorbar(image, ax=matrix_ax, fraction=0.046)
        bar_ax = fig.add_subplot(2, len(pairs), len(pairs) + column + 1)
        labels = ["matched", f"only {first}", f"only {second}"]
        values = [pair["matched"], pair["only"][first], pair["only"][second]]
        bar_ax.bar(labels, values, color=["C2", "C0", "C1"])
        for x, value in enumerate(values):
            bar_ax.annotate(str(value), (x, value), ha="center", va="bottom")
        bar_ax.set(ylabel="units", title=f"matched at agreement ≥ {MATCH_SCORE}")
    return save_figure(plt, fig, path)


def _tsv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["\t".join(columns)] + ["\t".join("" if r.get(c) is None else str(r[c]) for c in columns) for r in rows]
    return "\n".join(lines) + "\n"


def compare_sortings(
    store: SessionStore,
    folders: Mapping[str, Path],
    truth: Path | None = None,
    verify: Callable[[], None] | None = None,
) -> AgreementReport:
    """Compare the first sorting of ``folders`` (the probe's own) with each other one; write ``agreement/``."""
    names = list(folders)
    primary = names[0]
    fs = conversion.load_recording_binary(store.binary_dir).sampling_frequency
    sortings = {name: load_sorting(folder, fs) for name, folder in folders.items()}
    pairs, comparisons = [], []
    for other in names[1:]:
        pair, comparison = compare_pair(primary, other, sortings)
        pairs.append(pair)
        comparisons.append(comparison)
    matched_in = [{m[primary]: m for m in pair["matches"]} for pair in pairs]
    consensus = []  # the probe's units that every compared sorter found too
    for unit in sorted(int(u) for u in sortings[primary].unit_ids):
        if all(unit in by for by in matched_in):
            row: dict[str, Any] = {primary: unit}
            for pair, by in zip(pairs, matched_in):
                other = pair["sorters"][1]
                row.update({other: by[unit][other], f"agreement_{other}": by[unit]["agreement"]})
            consensus.append(row)
    units = []
    for name in names:
        for unit in sorted(sortings[name].unit_ids):
            row = {"sorter": name, "unit": int(unit)}
            for pair in pairs:
                if name not in pair["sorters"]:
                    continue
                other = pair["sorters"][1] if name == primary else primary
                match = next((m for m in pair["matches"] if m[name] == int(unit)), None)
                row[f"match_{other}"] = match[other] if match else None
                row[f"agreement_{other}"] = match["agreement"] if match else None
            units.append(row)
    summary = {
        "sorters": names,
        "primary": primary,
        "delta_time_ms": DELTA_TIME_MS,
        "match_score": MATCH_SCORE,
        "pairs": pairs,
        "n_consensus_units": len(consensus),
        "consensus": consensus,
        "ground_truth": ground_truth_scores(store, folders, truth, fs) if truth is not None else None,
    }
    columns = ["sorter", "unit"] + [f"{kind}_{n}" for n in names for kind in ("match", "agreement")]
    columns = [c for c in columns if any(c in row for row in units)]
    with atomic_directory(store.agreement_dir) as staged:
        write_json_atomic(staged / AGREEMENT_JSON, summary)
        (staged / UNITS_TSV).write_text(_tsv(units, columns))
        consensus_columns = list(dict.fromkeys(k for row in consensus for k in row)) or [primary]
        (staged / CONSENSUS_TSV).write_text(_tsv(consensus, consensus_columns))
        plot_agreement(pairs, comparisons, staged / FIGURE_PNG)
        if verify is not None:
            verify()
    metadata = {
        "sorters": names,
        "pairs": [{k: v for k, v in pair.items() if k not in ("matches", "only_units")} for pair in pairs],
        "n_consensus_units": len(consensus),
        "ground_truth": summary["ground_truth"],
        "path": str(store.agreement_dir),
    }
    version = settings_hash(summary)
    return AgreementReport(version, metadata, {"agreement": store.agreement_dir / FIGURE_PNG})


def remove_agreement(store: SessionStore) -> None:
    """Drop an agreement left from when the config named several sorters (it is derived data, made again on demand)."""
    if store.agreement_dir.is_dir():
        shutil.rmtree(store.agreement_dir)

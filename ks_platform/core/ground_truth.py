"""Score a sorting against a session's known spike trains (SpikeInterface's comparison)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ks_platform.core.names import GROUND_TRUTH_SPEC


@dataclass(frozen=True)
class GroundTruthScore:
    """Per-unit accuracy/precision/recall and the session's declared bar."""

    per_unit: list[dict[str, float]]
    well_detected: int
    well_detected_accuracy: float
    min_well_detected_units: int

    @property
    def passed(self) -> bool:
        return self.well_detected >= self.min_well_detected_units


def find_ground_truth(
    session_dir: Path, probe_files: tuple[Path, ...] | list[Path] = (), probe: str = ""
) -> Path | None:
    """The ground truth of a probe: ``ground_truth.<probe>.json`` or ``ground_truth.json``, nearest to the probe's
    first file (its folder, then each parent up to the session folder)."""
    session_dir = Path(session_dir)
    start = Path(probe_files[0]).parent if probe_files else session_dir
    names = ([f"{Path(GROUND_TRUTH_SPEC).stem}.{probe}.json"] if probe else []) + [GROUND_TRUTH_SPEC]
    for folder in (start, *start.parents):
        for name in names:
            if (folder / name).is_file():
                return folder / name
        if folder == session_dir or session_dir not in folder.parents:
            return None
    return None


def score_sorting(
    spec_path: Path, spike_samples: np.ndarray, spike_clusters: np.ndarray, sampling_frequency: float
) -> GroundTruthScore:
    """Compare the sorting to the ground truth that ``spec_path`` (``ground_truth.json`` + ``.npz``) describes.

    Both are on the recording's acquisition clock: the truth's ``samples`` as the rig's clock counts them, the
    sorting's spike times mapped there from the binary (``core/timeline.py``)."""
    from spikeinterface.comparison import compare_sorter_to_ground_truth
    from spikeinterface.core import NumpySorting

    spec = json.loads(Path(spec_path).read_text())
    truth = np.load(Path(spec_path).parent / spec["spike_file"])
    gt = NumpySorting.from_samples_and_labels([truth["samples"]], [truth["labels"]], sampling_frequency)
    tested = NumpySorting.from_samples_and_labels(
        [np.asarray(spike_samples).ravel()], [np.asarray(spike_clusters).ravel()], sampling_frequency
    )
    comparison = compare_sorter_to_ground_truth(gt, tested, exhaustive_gt=True)
    perf = comparison.get_performance(method="by_unit")
    per_unit = [
        {
            "gt_unit": str(unit),
            "accuracy": float(row["accuracy"]),
            "precision": float(row["precision"]),
            "recall": float(row["recall"]),
        }
        for unit, row in perf.iterrows()
    ]
    bar = float(spec.get("well_detected_accuracy", 0.8))
    well = len(comparison.get_well_detected_units(well_detected_score=bar))
    return GroundTruthScore(
        per_unit=per_unit,
        well_detected=well,
        well_detected_accuracy=bar,
        min_well_detected_units=int(spec.get("min_well_detected_units", 1)),
    )


# ------------------------------------------------------------------------------------------- labels and tracks (#28)
def matched_truth(
    spec_path: Path, spike_samples: np.ndarray, spike_clusters: np.ndarray, sampling_frequency: float
) -> tuple[dict[int, int], dict[int, float]]:
    """``({cluster: truth unit}, {truth unit: accuracy})``: SpikeInterface's one-to-one (Hungarian) match of the
    sorting's clusters to the ground truth's units (agreement ≥ 0.5), and each truth unit's accuracy."""
    from spikeinterface.comparison import compare_sorter_to_ground_truth
    from spikeinterface.core import NumpySorting

    spec = json.loads(Path(spec_path).read_text())
    truth = np.load(Path(spec_path).parent / spec["spike_file"])
    gt = NumpySorting.from_samples_and_labels([truth["samples"]], [truth["labels"]], sampling_frequency)
    tested = NumpySorting.from_samples_and_labels(
        [np.asarray(spike_samples).ravel()], [np.asarray(spike_clusters).ravel()], sampling_frequency
    )
    comparison = compare_sorter_to_ground_truth(gt, tested, exhaustive_gt=True)
    match = comparison.hungarian_match_21
    clusters = {int(c): int(u) for c, u in match.items() if u != -1}
    accuracy = {int(u): float(a) for u, a in comparison.get_performance(method="by_unit")["accuracy"].items()}
    return clusters, accuracy


@dataclass(frozen=True)
class LabelScore:
    """bombcell's labels against the truth: well-detected units labelled GOOD, false units not labelled GOOD."""

    well_detected: int
    well_detected_good: int
    false_units: int
    false_units_not_good: int

    def to_json(self) -> dict[str, int]:
        return {
            "well_detected": self.well_detected,
            "well_detected_good": self.well_detected_good,
            "false_units": self.false_units,
            "false_units_not_good": self.false_units_not_good,
        }


def score_labels(
    labels: dict[int, str], clusters_to_truth: dict[int, int], accuracy: dict[int, float], bar: float = 0.8
) -> LabelScore:
    """A well-detected unit is a cluster matched to a truth unit of accuracy ≥ ``bar``; a false unit a cluster
    matched to no truth unit."""
    well = [c for c, u in clusters_to_truth.items() if accuracy.get(u, 0.0) >= bar and c in labels]
    false = [c for c in labels if c not in clusters_to_truth]
    return LabelScore(
        len(well),
        sum(1 for c in well if labels[c] == "GOOD"),
        len(false),
        sum(1 for c in false if labels[c] != "GOOD"),
    )


@dataclass(frozen=True)
class TrackScore:
    """Matches across sessions against the truth: a predicted match is two units of one track in two sessions, a true
    match two clusters (one per session) matched to the same truth neuron."""

    predicted: int
    true: int
    correct: int

    @property
    def precision(self) -> float:
        return self.correct / self.predicted if self.predicted else float("nan")

    @property
    def recall(self) -> float:
        return self.correct / self.true if self.true else float("nan")


def score_tracks(tracks: list[tuple[str, int, int]], truth: dict[str, dict[int, int]]) -> TrackScore:
    """``tracks``: (session, cluster, track id) of every tracked unit; ``truth``: per session, cluster → neuron (for
    the clusters matched to a neuron). True matches are counted among the tracked clusters."""
    from itertools import combinations

    predicted = {
        frozenset(((s1, c1), (s2, c2)))
        for (s1, c1, t1), (s2, c2, t2) in combinations(tracks, 2)
        if t1 == t2 and s1 != s2
    }
    neuron = {(s, c): truth.get(s, {}).get(c) for s, c, _ in tracks}
    true = {
        frozenset((a, b))
        for a, b in combinations(neuron, 2)
        if a[0] != b[0] and neuron[a] is not None and neuron[a] == neuron[b]
    }
    return TrackScore(len(predicted), len(true), len(predicted & true))

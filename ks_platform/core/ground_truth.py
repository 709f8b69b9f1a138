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

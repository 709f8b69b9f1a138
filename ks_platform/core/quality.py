"""Unit quality: SpikeInterface postprocessing + quality metrics on a session's sorting, and pictures of it.

Reads the store (``binary/``, ``probe/``, ``phy/``) and writes ``metrics/unit_metrics.csv``, ``metrics/summary.json``
and three PNGs (drift map, units on the probe, waveforms of the best units), atomically.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ks_platform.core import conversion
from ks_platform.core.figures import new_figure, save_figure
from ks_platform.core.names import METRICS_CSV
from ks_platform.core.progress import Progress, StageProgress
from ks_platform.core.store import SessionStore, atomic_directory

SUMMARY_JSON = "summary.json"
#: SpikeInterface quality metrics computed for every unit.
METRIC_NAMES = ("firing_rate", "snr", "isi_violation", "presence_ratio", "amplitude_cutoff")
FIGURES = ("drift_map", "unit_locations", "waveforms")
N_WAVEFORM_UNITS = 6


@dataclass(frozen=True)
class QualityThresholds:
    """Defaults for the ``unit_metrics`` checks (tunable per deployment).

    A unit "violates" when its ISI-violation ratio (Hill et al.; 1.5 ms refractory period) exceeds
    ``isi_violations_ratio``; the check fails when more than ``max_violating_fraction`` of units violate.
    """

    isi_violations_ratio: float = 0.5
    max_violating_fraction: float = 0.5
    min_units: int = 1


@dataclass
class UnitMetrics:
    """The metrics table (one row per unit) and its summary."""

    table: pd.DataFrame
    summary: dict[str, Any]
    figures: dict[str, Path] = field(default_factory=dict)

    def violating_fraction(self, thresholds: QualityThresholds) -> float:
        if self.table.empty:
            return 0.0
        return float((self.table["isi_violations_ratio"] > thresholds.isi_violations_ratio).mean())


def metric_params(duration_s: float) -> dict[str, dict[str, Any]]:
    """SpikeInterface's defaults, scaled down for short recordings.

    Presence ratio uses 60 s bins by default (NaN for anything shorter): use ~10 bins instead. Amplitude cutoff
    needs ``5 × bins`` spikes per unit: 20 bins instead of 100 let units with ≥ 100 spikes get a value.
    """
    return {
        "presence_ratio": {"bin_duration_s": float(min(60.0, max(duration_s / 10.0, 0.5)))},
        "amplitude_cutoff": {"num_histogram_bins": 20 if duration_s < 600 else 100},
    }


def spike_band_recording(store: SessionStore):
    """The session's binary as a SpikeInterface recording with the Kilosort probe attached (µV gains)."""
    import probeinterface as pi
    import spikeinterface.core as si
    from spikeinterface.preprocessing import highpass_filter

    from ks_platform.core.probes import load_probe_map

    binary = conversion.load_recording_binary(store.binary_dir)
    ks_probe, _ = load_probe_map(store)
    recording = si.read_binary(
        str(binary.path), sampling_frequency=binary.sampling_frequency, dtype="int16", num_channels=binary.n_chan_bin
    )
    recording.set_channel_gains(binary.uv_per_bit)
    recording.set_channel_offsets(0.0)
    probe = pi.Probe(ndim=2, si_units="um")
    probe.set_contacts(
        positions=np.column_stack([ks_probe["xc"], ks_probe["yc"]]), shapes="circle", shape_params={"radius": 6}
    )
    probe.set_device_channel_indices(np.asarray(ks_probe["chanMap"], dtype=int))
    probe.set_shank_ids(np.asarray(ks_probe["kcoords"]).astype(int).astype(str))
    group = pi.ProbeGroup()
    group.add_probe(probe)
    # Waveforms and SNR on the spike band, as Kilosort sees it (it high-passes at 300 Hz too).
    return highpass_filter(recording.select_channels_with_probegroup(group), freq_min=300.0), binary


def curated_labels(store: SessionStore, unit_ids: list[int]) -> list[str]:
    """Phy's label per unit when ``curated_units`` recorded a curation of the current sorting, else ``""``."""
    from ks_platform.core.curation import CURATED, current_record

    record = current_record(store)
    labels = record.labels if record is not None and record.status == CURATED else {}
    return [labels.get(u, "") for u in unit_ids]


def bombcell_labels(store: SessionStore, unit_ids: list[int]) -> list[str]:
    """bombcell's label per unit when ``unit_labels`` labelled the current sorting, else ``""``."""
    from ks_platform.core.unit_labels import current_labels

    labels = current_labels(store)
    known = labels.labels if labels is not None else {}
    return [known.get(u, "") for u in unit_ids]


METRIC_STAGES = ["waveforms and templates", "amplitudes and locations", "quality metrics", "figures"]


def compute_unit_metrics(
    store: SessionStore,
    n_jobs: int = 1,
    verify: Callable[[], None] | None = None,
    progress: Progress | None = None,
) -> UnitMetrics:
    """Quality metrics + figures for the session's Phy folder, written to ``store.metrics_dir``; ``progress`` hears of
    each stage (:data:`METRIC_STAGES`)."""
    import spikeinterface.core as si
    import spikeinterface.metrics  # noqa: F401  (registers the metric extensions)
    import spikeinterface.postprocessing  # noqa: F401
    from spikeinterface.extractors import read_kilosort

    recording, binary = spike_band_recording(store)
    sorting = read_kilosort(store.phy_dir, keep_good_only=False)
    labels = dict(
        zip(
            sorting.unit_ids,
            sorting.get_property("KSLabel")
            if "KSLabel" in sorting.get_property_keys()
            else ["unsorted"] * len(sorting.unit_ids),
        )
    )
    job = {"n_jobs": n_jobs, "chunk_duration": "1s", "progress_bar": False}
    stages = StageProgress(progress, METRIC_STAGES)
    stages.start("waveforms and templates")
    analyzer = si.create_sorting_analyzer(sorting, recording, sparse=True, format="memory", job_kwargs=job)
    analyzer.compute(
        {
            "random_spikes": {"max_spikes_per_unit": 300, "seed": 0},
            "waveforms": {},
            "templates": {},
            "noise_levels": {"random_slices_kwargs": {"seed": 0}},
        },
        **job,
    )
    stages.start("amplitudes and locations")
    analyzer.compute(
        {
            "spike_amplitudes": {},
            "unit_locations": {"method": "monopolar_triangulation"},
            "spike_locations": {"method": "center_of_mass"},
        },
        **job,
    )
    stages.start("quality metrics")
    metrics = analyzer.compute(
        "quality_metrics",
        metric_names=list(METRIC_NAMES),
        metric_params=metric_params(binary.n_samples / binary.sampling_frequency),
        **job,
    ).get_data()
    table = metrics.copy()
    table.insert(0, "unit_id", [int(u) for u in metrics.index])
    table.insert(1, "kilosort_label", [str(labels.get(u, "")) for u in metrics.index])
    table.insert(2, "curated_label", curated_labels(store, [int(u) for u in metrics.index]))
    table.insert(3, "bombcell_label", bombcell_labels(store, [int(u) for u in metrics.index]))
    table.insert(4, "n_spikes", [int(n) for n in sorting.count_num_spikes_per_unit(outputs="array")])
    locations = analyzer.get_extension("unit_locations").get_data()
    table["x_um"], table["y_um"] = locations[:, 0], locations[:, 1]
    table = table.reset_index(drop=True).round(4)
    summary = {
        "n_units": int(len(table)),
        "n_good_units": int((table["kilosort_label"] == "good").sum()),
        "median_firing_rate_hz": float(table["firing_rate"].median()) if len(table) else 0.0,
        "median_snr": float(table["snr"].median()) if len(table) else 0.0,
        "median_presence_ratio": float(table["presence_ratio"].median()) if len(table) else 0.0,
        "duration_s": float(binary.n_samples / binary.sampling_frequency),
        "metric_names": list(METRIC_NAMES),
        "curated_counts": {
            label: int((table["curated_label"] == label).sum()) for label in sorted(set(table["curated_label"]) - {""})
        },
        "bombcell_counts": {
            label: int((table["bombcell_label"] == label).sum())
            for label in sorted(set(table["bombcell_label"]) - {""})
        },
    }
    with atomic_directory(store.metrics_dir) as staged:
        table.to_csv(staged / METRICS_CSV, index=False)
        (staged / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n")
        stages.start("figures")
        _plot_drift_map(analyzer, staged / "drift_map.png")
        _plot_unit_locations(analyzer, table, staged / "unit_locations.png")
        _plot_waveforms(analyzer, table, staged / "waveforms.png")
        if verify is not None:
            verify()
    stages.finish(f"{len(table)} units")
    return UnitMetrics(table, summary, {name: store.metrics_dir / f"{name}.png" for name in FIGURES})


def load_unit_metrics(store: SessionStore) -> UnitMetrics:
    table = pd.read_csv(store.metrics_dir / METRICS_CSV)
    summary = json.loads((store.metrics_dir / SUMMARY_JSON).read_text())
    return UnitMetrics(table, summary, {name: store.metrics_dir / f"{name}.png" for name in FIGURES})


def _plot_drift_map(analyzer, path: Path) -> None:
    """Spike depth over time, darker and larger for larger amplitudes (a raster drift map)."""
    plt, fig = new_figure(8, 4)
    spikes = analyzer.sorting.to_spike_vector()
    depths = analyzer.get_extension("spike_locations").get_data()["y"]
    amplitudes = np.abs(analyzer.get_extension("spike_amplitudes").get_data())
    scaled = np.clip(amplitudes / (np.percentile(amplitudes, 95) if amplitudes.size else 1.0), 0.05, 1.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(
        spikes["sample_index"] / analyzer.sampling_frequency,
        depths,
        s=2 + 8 * scaled,
        c=scaled,
        cmap="Greys",
        vmin=0,
        vmax=1,
        linewidths=0,
    )
    ax.set(
        xlabel="time (s)",
        ylabel="depth (µm)",
        title=f"drift map: {len(spikes)} spikes, {analyzer.sorting.get_num_units()} units",
    )
    save_figure(plt, fig, path)


def _plot_unit_locations(analyzer, table: pd.DataFrame, path: Path) -> None:
    """Contacts of the probe and each unit's estimated position, coloured by Kilosort label."""
    plt, fig = new_figure(4, 7)
    ax = fig.add_subplot(1, 1, 1)
    positions = analyzer.get_channel_locations()
    ax.scatter(positions[:, 0], positions[:, 1], marker="s", s=18, c="#d0d0d0", label="contacts")
    good = table["kilosort_label"] == "good"
    ax.scatter(
        table.loc[good, "x_um"],
        table.loc[good, "y_um"],
        s=40,
        c="tab:green",
        label="good units",
        edgecolors="k",
        linewidths=0.5,
    )
    ax.scatter(
        table.loc[~good, "x_um"],
        table.loc[~good, "y_um"],
        s=30,
        c="tab:orange",
        label="other units",
        edgecolors="k",
        linewidths=0.5,
    )
    for _, row in table.iterrows():
        ax.annotate(
            str(int(row["unit_id"])), (row["x_um"], row["y_um"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    ax.set(xlabel="x (µm)", ylabel="y (µm)", title="units on the probe")
    ax.legend(loc="upper right", fontsize=7)
    save_figure(plt, fig, path)


def _plot_waveforms(analyzer, table: pd.DataFrame, path: Path) -> None:
    """Mean waveform on the best channel for the highest-SNR units."""
    plt, fig = new_figure(9, 3.2)
    templates = analyzer.get_extension("templates").get_data(operator="average")
    best = table.sort_values("snr", ascending=False).head(N_WAVEFORM_UNITS)
    unit_index = {int(u): i for i, u in enumerate(analyzer.unit_ids)}
    times_ms = (
        (np.arange(templates.shape[1]) - analyzer.get_extension("templates").nbefore)
        / analyzer.sampling_frequency
        * 1000
    )
    for panel, (_, row) in enumerate(best.iterrows(), start=1):
        template = templates[unit_index[int(row["unit_id"])]]
        channel = int(np.argmax(np.ptp(template, axis=0)))
        ax = fig.add_subplot(1, max(len(best), 1), panel)
        ax.plot(times_ms, template[:, channel], color="tab:blue")
        ax.set_title(f"unit {int(row['unit_id'])}\nSNR {row['snr']:.1f}, {row['firing_rate']:.1f} Hz", fontsize=8)
        ax.set_xlabel("ms", fontsize=7)
        ax.tick_params(labelsize=6)
        if panel == 1:
            ax.set_ylabel("µV", fontsize=7)
    save_figure(plt, fig, path)

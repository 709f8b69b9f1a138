"""Sorters other than Kilosort 4, through SpikeInterface's ``run_sorter`` in this process (never a container, never an
install at run time): the sorting is written in Kilosort's Phy layout (SpikeInterface's Phy exporter), so the Phy
folder, metrics, curation, NWB and rollup read it as they read Kilosort's.

``sorting/`` then holds ``spike_times.npy``, ``spike_clusters.npy``, ``spike_templates.npy``, ``templates.npy`` (+
``template_ind.npy``), ``amplitudes.npy``, ``channel_map.npy`` (rows of the binary, as Kilosort writes it),
``channel_positions.npy``, ``similar_templates.npy``, ``cluster_si_unit_ids.tsv`` (the sorter's own unit ids),
SpikeInterface's run log and parameters, and the platform's summary, settings and lineage files.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ks_platform.core.conversion import RecordingBinary
from ks_platform.core.lineage import lineage_record
from ks_platform.core.names import EFFECTIVE_SETTINGS_FILE, LINEAGE_FILE, SUMMARY_FILE
from ks_platform.core.settings import settings_hash
from ks_platform.core.sorters import SORTERS, SorterParams, seeds_of, sorter_version
from ks_platform.core.sorting import Log, SortResult, sorting_checksum
from ks_platform.core.store import atomic_directory, write_json_atomic

#: SpikeInterface's own record of the run, kept with the sorting.
SI_FILES = ("spikeinterface_log.json", "spikeinterface_params.json")
#: Seed of the spike subset the Phy templates are averaged from.
TEMPLATE_SEED = 0
#: Files of SpikeInterface's Phy export that the platform does not keep: its ``params.py`` (the Phy step writes a
#: relocatable one) and ``cluster_group.tsv`` (every unit "unsorted": it would read as a curation made in Phy).
NOT_KEPT = ("params.py", "cluster_group.tsv")


def binary_recording(binary: RecordingBinary, ks_probe: dict):
    """The binary as a SpikeInterface recording of the sorted channels, in the Kilosort probe's order, with the probe
    (positions, shanks) and µV gains attached."""
    import probeinterface as pi
    import spikeinterface.core as si

    recording = si.read_binary(
        str(binary.path),
        sampling_frequency=binary.sampling_frequency,
        dtype=binary.dtype,
        num_channels=binary.n_chan_bin,
    )
    recording.set_channel_gains(binary.uv_per_bit)
    recording.set_channel_offsets(0.0)
    rows = np.asarray(ks_probe["chanMap"], dtype=int)
    recording = recording.select_channels(recording.channel_ids[rows])
    probe = pi.Probe(ndim=2, si_units="um")
    probe.set_contacts(
        positions=np.column_stack([ks_probe["xc"], ks_probe["yc"]]), shapes="circle", shape_params={"radius": 6}
    )
    probe.set_device_channel_indices(np.arange(rows.size))
    probe.set_shank_ids(np.asarray(ks_probe["kcoords"]).astype(int).astype(str))
    recording.set_probe(probe, group_mode="by_shank")
    return recording


def write_phy_files(sorting, recording, folder: Path, ks_probe: dict) -> None:
    """The sorting in Kilosort's Phy layout in ``folder``: SpikeInterface's exporter on a sparse analyzer of the
    300 Hz high-passed recording (templates from up to 500 spikes per unit), ``channel_map.npy`` as binary rows."""
    import spikeinterface.core as si
    from spikeinterface.exporters import export_to_phy
    from spikeinterface.preprocessing import highpass_filter

    job = {"n_jobs": 1, "progress_bar": False}
    analyzer = si.create_sorting_analyzer(
        sorting, highpass_filter(recording, freq_min=300.0), sparse=True, format="memory", **job
    )
    analyzer.compute(
        {
            "random_spikes": {"max_spikes_per_unit": 500, "seed": TEMPLATE_SEED},
            "templates": {},
            "spike_amplitudes": {},
            "template_similarity": {},
        },
        **job,
    )
    export = folder / ".phy_export"
    export_to_phy(
        analyzer,
        export,
        compute_pc_features=False,
        compute_amplitudes=True,
        copy_binary=False,
        add_quality_metrics=False,
        add_template_metrics=False,
        verbose=False,
        **job,
    )
    for item in export.iterdir():
        if item.name not in NOT_KEPT:
            item.rename(folder / item.name)
    shutil.rmtree(export)
    np.save(folder / "channel_map.npy", np.asarray(ks_probe["chanMap"], dtype=np.int32))


def run_si_sorter(name: str, recording, params: dict[str, Any], work: Path):
    """``run_sorter`` in this process; the sorting is loaded into memory so the work folder can go."""
    import spikeinterface.core as si
    from spikeinterface.sorters import run_sorter

    sorting = run_sorter(name, recording, folder=work, remove_existing_folder=True, verbose=False, **params)
    return si.NumpySorting.from_sorting(sorting)


def sort_with_spikeinterface(
    binary: RecordingBinary,
    ks_probe: dict,
    params: SorterParams,
    output_dir: Path,
    log: Log | None = None,
    extra_lineage: dict[str, Any] | None = None,
    verify: Callable[[], None] | None = None,
) -> SortResult:
    """Sort ``binary`` with a SpikeInterface sorter on the CPU into ``output_dir`` (atomically, Kilosort's Phy layout);
    ``verify`` runs last, before anything is published."""
    import spikeinterface

    from ks_platform.core.hardware import detect_backend

    log = log or (lambda message: None)
    name = params.sorter
    info = SORTERS[name]
    version = sorter_version(name)
    backend = detect_backend("cpu").record()
    log(
        f"sorting {binary.path} ({binary.n_samples / binary.sampling_frequency:.1f} s, {len(ks_probe['chanMap'])} "
        f"channels) with {info.label} {version} (SpikeInterface {spikeinterface.__version__}) on cpu"
    )
    started = time.perf_counter()
    with atomic_directory(output_dir) as staged:
        work = staged / ".si_run"
        recording = binary_recording(binary, ks_probe)
        sorting = run_si_sorter(name, recording, params.params, work)
        sort_seconds = time.perf_counter() - started
        for kept in SI_FILES:
            if (work / kept).is_file():
                shutil.copy2(work / kept, staged / kept)
        shutil.rmtree(work, ignore_errors=True)
        n_units = len(sorting.unit_ids)
        log(f"{info.label} found {n_units} units in {sort_seconds:.1f} s; writing the Phy files")
        if n_units == 0:
            raise RuntimeError(f"{info.label} found no units in {binary.path}: nothing to publish")
        exported = time.perf_counter()
        write_phy_files(sorting, recording, staged, ks_probe)
        clusters = np.load(staged / "spike_clusters.npy").ravel()
        seconds = time.perf_counter() - started
        result = SortResult(
            output_dir=output_dir,
            n_units=int(np.unique(clusters).size),
            n_good_units=0,  # "good" is Kilosort's label; these sorters label no unit
            n_spikes=int(clusters.size),
            seconds=round(seconds, 2),
            backend=backend,
            params_hash=params.params_hash,
            settings=params.params,
            attempts=[{"outcome": "ok", "seconds": round(sort_seconds, 2)}],
            stage_seconds={"sort": round(sort_seconds, 3), "phy_files": round(time.perf_counter() - exported, 3)},
            input_checksum=binary.checksum,
            output_checksum=sorting_checksum(staged),
            sorter=name,
        )
        write_json_atomic(
            staged / EFFECTIVE_SETTINGS_FILE,
            {**params.record(), "as_run": params.params, "as_run_hash": settings_hash(params.params)},
        )
        write_json_atomic(staged / SUMMARY_FILE, result.to_json())
        write_json_atomic(
            staged / LINEAGE_FILE,
            lineage_record(
                backend=backend,
                sorter={"name": name, "label": info.label, "version": version, "runner": "spikeinterface.run_sorter"},
                params_hash=params.params_hash,
                input_checksum=binary.checksum,
                output_checksum=result.output_checksum,
                seeds={**seeds_of(params.params), "phy_templates_random_spikes": TEMPLATE_SEED},
                stage_seconds=result.stage_seconds,
                attempts=result.attempts,
                sort_seconds=result.seconds,
                **(extra_lineage or {}),
            ),
        )
        if verify is not None:
            verify()
    log(f"sorted: {result.n_units} units, {result.n_spikes} spikes in {result.seconds:.1f} s")
    return result

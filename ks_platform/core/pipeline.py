"""The session pipeline as plain functions, one per step; the Dagster assets and the CLI both call these.

recording (landing folder) → probe map → recording binary → sorting (Kilosort 4, or the sorter the session config
names) → Phy bundle; and, where the config lists several sorters, the others' sortings and their agreement.
Every step reads its inputs from the session store, writes its outputs there atomically, and returns a
:class:`StepOutput` (data version, plain metadata, figures).
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import probeinterface as pi

from ks_platform.core import conversion, curation, phy, probes, session_config, settings, sorters, sorting
from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import SessionScan, scan_session
from ks_platform.core.formats.base import RecordingSource
from ks_platform.core.ground_truth import find_ground_truth, score_sorting
from ks_platform.core.names import KILOSORT_PROBE_JSON, LINEAGE_FILE, PROBE_MANIFEST, SUMMARY_FILE
from ks_platform.core.probes import load_probe_map
from ks_platform.core.progress import Progress
from ks_platform.core.sessions import fingerprint
from ks_platform.core.store import SessionStore, atomic_directory, read_json, session_lock, write_json_atomic
from ks_platform.core.timeline import recorded_segments, to_acquisition_samples

PROBE_JSON = "probe.json"
PROBE_PNG = "probe.png"

#: A session as a step receives it: its landing folder (scanned once by the step) or a scan already made.
Session = Path | SessionScan


def as_scan(session: Session) -> SessionScan:
    """The one scan a step reads its session folder through."""
    return session if isinstance(session, SessionScan) else scan_session(Path(session))


@dataclass
class StepOutput:
    """What a step made: its data version, metadata for people, and figures (PNG paths)."""

    data_version: str
    metadata: dict[str, Any]
    figures: dict[str, Path] = field(default_factory=dict)


def writes_session(step: Callable[..., StepOutput]) -> Callable[..., StepOutput]:
    """Run a step under its session's write lock: a second run of the same session waits for it (see ``session_lock``)."""
    signature = inspect.signature(step)

    @functools.wraps(step)
    def locked(*args: Any, **kwargs: Any) -> StepOutput:
        bound = signature.bind(*args, **kwargs)
        with session_lock(bound.arguments["store"], log=bound.arguments.get("log"), step=step.__name__):
            return step(*args, **kwargs)

    return locked


def binary_layout(source: RecordingSource, allow_zero_copy: bool) -> tuple[int, ...]:
    """Source channels stored in the recording binary, in row order (all of them when zero-copy)."""
    if allow_zero_copy and source.zero_copy_path is not None:
        return tuple(range(source.n_channels))
    return tuple(source.sorting_channels)


@writes_session
def observe_raw_recording(session: Session, store: SessionStore, probe: str | None = None) -> StepOutput:
    """Describe and fingerprint one probe's recording in the landing folder; record it as ``raw_recording.json``.

    The metadata also holds ``settings_version`` and ``compared_settings_version``: the probe's sorter and parameter
    set, and those of the sorters compared with it, as this scan finds them. ``sorters`` (the sorters the config
    names, its own sorting first) tells the placing executors whether a sort step needs a GPU."""
    scan = as_scan(session)
    source = scan.open(probe)
    manifest = {
        **source.summary(),
        "folder_name": scan.folder.name,
        "session_probes": sorted(scan.listing.probes),
        "skipped_streams": list(scan.listing.skipped),
        "fingerprint": fingerprint(source, include_settings=False),
        "has_ground_truth": find_ground_truth(scan.folder, source.data_files, source.probe_name) is not None,
        "sorters": list(scan.probe_config(source.probe_name, check_kilosort=False).sorters),
    }
    write_json_atomic(store.raw_manifest, manifest)
    versions = {
        "settings_version": session_settings_version(scan, source.probe_name),
        "compared_settings_version": compared_settings_version(scan, source.probe_name),
    }
    return StepOutput(manifest["fingerprint"], {**manifest, **versions})


def open_unchanged_recording(session: Session, store: SessionStore, probe: str | None = None) -> RecordingSource:
    """Open the probe's recording and refuse it if it changed since ``raw_recording`` observed it."""
    source = as_scan(session).open(probe)
    if not store.raw_manifest.is_file():
        raise SessionInputError(
            store.raw_manifest,
            "the raw recording has not been observed yet",
            "materialize raw_recording for this session first",
        )
    observed = read_json(store.raw_manifest)["fingerprint"]
    now = fingerprint(source, include_settings=False)
    if now != observed:
        raise SessionInputError(
            source.session_dir,
            f"the recording changed since it was observed (fingerprint {observed[:12]} → {now[:12]})",
            "wait until copying has finished, then re-materialize raw_recording and the steps after it",
        )
    return source


def publish_check(
    session: Session | None, store: SessionStore, probe: str | None, binary: conversion.RecordingBinary | None = None
) -> Callable[[], None] | None:
    """What a step runs just before it publishes: the landing recording is still what ``raw_recording`` observed
    (its fingerprint, content sampled), and a zero-copy ``binary`` (the landing file itself, which Kilosort read in
    place) still has the full checksum it was verified with. Either change fails the step naming the file, so
    nothing is published from changed data. None without a session (nothing to compare with)."""
    if session is None:
        return None

    def verify() -> None:
        open_unchanged_recording(as_scan(session).fresh(), store, probe)  # the folder as it is now
        if binary is not None and binary.zero_copy:
            source = binary.path.resolve()
            now = conversion.hash_file(source)
            if now != binary.checksum:
                raise SessionInputError(
                    source,
                    f"the recording changed while it was being read in place (xxh3 {binary.checksum[:12]} → {now[:12]}); "
                    "nothing was published from it",
                    "stop whatever writes into the landing folder, then re-materialize raw_recording and the steps "
                    "after it",
                )

    return verify


@writes_session
def build_probe_map(
    session: Session,
    store: SessionStore,
    allow_zero_copy: bool = True,
    probe: str | None = None,
    probe_file: Path | None = None,
) -> StepOutput:
    """Validated probe (the recording's own, or ``probe_file``) → ``probe.json`` (probeinterface),
    ``kilosort_probe.json`` and ``probe.png``."""
    return write_probe_map(open_unchanged_recording(session, store, probe), store, allow_zero_copy, probe_file)


def write_probe_map(
    source: RecordingSource, store: SessionStore, allow_zero_copy: bool = True, probe_file: Path | None = None
) -> StepOutput:
    """The probe map of ``source`` (or of ``probe_file`` when given) into ``store.probe_dir``."""
    if probe_file is not None:
        probe, origin = probes.load_probe_file(probe_file), Path(probe_file)
        probes.validate_probe(probe, source.n_channels, origin)
    else:
        probe, origin = probes.probe_for_recording(source)
    layout = binary_layout(source, allow_zero_copy)
    ks_probe = probes.kilosort_probe(probe, layout, source.sorting_channels)
    if ks_probe["n_chan"] == 0:
        raise SessionInputError(
            origin,
            "no probe contact is wired to a sorted channel of this recording",
            "use the probe file that matches this recording",
        )
    kind = settings.probe_kind(probe.annotations)
    with atomic_directory(store.probe_dir) as staged:
        group = pi.ProbeGroup()
        group.add_probe(probe)
        pi.write_probeinterface(staged / PROBE_JSON, group)
        ks_json = probes.kilosort_probe_to_json(ks_probe)
        (staged / KILOSORT_PROBE_JSON).write_text(json.dumps(ks_json, indent=1) + "\n")
        probes.plot_probe(
            probe,
            staged / PROBE_PNG,
            title=f"{probe.get_contact_count()} contacts, {ks_probe['n_chan']} sorted",
            highlight_channels=tuple(source.sorting_channels),
        )
        manifest = {
            "probe_source": str(origin),
            "probe_kind": kind,
            "n_contacts": int(probe.get_contact_count()),
            "n_sorted_channels": int(ks_probe["n_chan"]),
            "n_shanks": int(len(np.unique(ks_probe["kcoords"]))),
            "binary_channels": list(layout),
            "manufacturer": str(probe.annotations.get("manufacturer", "")),
            "model_name": str(probe.annotations.get("model_name", "")),
            "span_um": [float(np.ptp(ks_probe["xc"])), float(np.ptp(ks_probe["yc"]))],
        }
        write_json_atomic(staged / PROBE_MANIFEST, manifest)
    version = settings.settings_hash(ks_json)
    return StepOutput(version, manifest, {"probe": store.probe_dir / PROBE_PNG})


@writes_session
def build_recording_binary(
    session: Session,
    store: SessionStore,
    allow_zero_copy: bool = True,
    progress: conversion.Progress | None = None,
    probe: str | None = None,
    relative_link: bool = False,
) -> StepOutput:
    """Convert (streamed) or verify-and-reference (zero-copy) the probe's recording into ``binary/``."""
    source = open_unchanged_recording(session, store, probe)
    binary = conversion.write_recording_binary(
        source, store.binary_dir, allow_zero_copy=allow_zero_copy, progress=progress, relative_link=relative_link
    )
    metadata = {
        **binary.to_json(),
        "source_format": source.format,
        "source_dtype": source.source_dtype,
        "scaling_note": source.scaling_note,
    }
    return StepOutput(binary.checksum, metadata)


def _invalid_config_version(session: Session) -> str:
    folder = session.folder if isinstance(session, SessionScan) else Path(session)
    files = session_config.config_files(folder)
    return "invalid-" + settings.settings_hash({str(p): p.read_bytes().hex() if p.is_file() else "?" for p in files})


def sorter_overrides(config: session_config.ProbeConfig, sorter: str) -> dict[str, Any]:
    """What the session config sets for one sorter: the ``kilosort`` section for Kilosort 4, else the sorter's own."""
    return config.kilosort if sorter == sorters.KILOSORT4 else config.sorter_params.get(sorter, {})


def session_settings_version(session: Session, probe: str | None = None) -> str:
    """Data version of the probe's sorter and parameter set. Kilosort 4 (the default): hash of its validated overrides
    (``none`` without any), as before there was a choice; another sorter: hash of its name and overrides.

    An invalid config still gets a version (hash of the config files' bytes), so editing it marks the sorting
    stale and the sort then fails with the validation message.
    """
    try:
        config = as_scan(session).probe_config(probe)
    except SessionInputError:
        return _invalid_config_version(session)
    sorter = config.sorters[0]
    overrides = sorter_overrides(config, sorter)
    if sorter == sorters.KILOSORT4:
        return settings.settings_hash(overrides) if overrides else "none"
    return settings.settings_hash({"sorter": sorter, "params": overrides})


def compared_settings_version(session: Session, probe: str | None = None) -> str:
    """Data version of the sorters compared with the probe's own (names, order and overrides; ``none`` when the
    config names one sorter): an edit of theirs marks ``compared_sortings`` stale, not the probe's sorting."""
    try:
        config = as_scan(session).probe_config(probe)
    except SessionInputError:
        return _invalid_config_version(session)
    others = config.sorters[1:]
    if not others:
        return "none"
    return settings.settings_hash({"sorters": list(others), **{n: sorter_overrides(config, n) for n in others}})


def effective_session_settings(
    session: Session | None,
    binary: conversion.RecordingBinary,
    probe_manifest: dict,
    settings_file: Path | None = None,
    probe: str | None = None,
) -> settings.EffectiveSettings:
    """Layered, validated Kilosort settings for the probe as its session config says now (``settings_file`` last)."""
    config = as_scan(session).probe_config(probe) if session is not None else session_config.ProbeConfig()
    overrides, files = config.kilosort, list(config.files)
    if settings_file is not None:
        overrides = {**overrides, **settings.read_overrides_file(Path(settings_file))}
        files.append(Path(settings_file))
    check_batch_size(overrides, binary, files)
    return settings.effective_settings(
        binary.n_chan_bin, binary.sampling_frequency, probe_manifest["probe_kind"], overrides
    )


def check_batch_size(overrides: dict[str, Any], binary: conversion.RecordingBinary, files: list[Path]) -> None:
    """Refuse a ``batch_size`` set longer than the whole recording (Kilosort would sort padding, or run out of
    memory); the message names the nearest settings file that sets it."""
    value = overrides.get("batch_size")
    if value is None or value <= binary.n_samples:
        return
    setting = [p for p in files if p.is_file() and '"batch_size"' in p.read_text(encoding="utf-8", errors="replace")]
    named = (setting or files or [binary.path])[-1]
    raise SessionInputError(
        named,
        f"batch_size={value:g} samples is longer than the whole recording ({binary.n_samples} samples, "
        f"{binary.n_samples / binary.sampling_frequency:.2f} s)",
        f"set batch_size to at most {binary.n_samples} samples (Kilosort's default is 60000, 2 s at 30 kHz), "
        "or remove it",
    )


def _checked_inputs(session: Session | None, store: SessionStore, probe: str | None):
    """The binary and probe map a sort reads (with ``session``: only if the recording is what was observed)."""
    if session is not None:
        open_unchanged_recording(session, store, probe)
    binary = conversion.load_recording_binary(store.binary_dir)
    ks_probe, probe_manifest = load_probe_map(store)
    if tuple(probe_manifest["binary_channels"]) != binary.binary_channels:
        raise SessionInputError(
            store.probe_dir,
            "the probe map was made for a different binary layout",
            "re-materialize probe_map and recording_binary together",
        )
    return binary, ks_probe, probe_manifest


def probe_sorters(
    session: Session | None, probe: str | None = None, override: tuple[str, ...] | None = None
) -> tuple[session_config.ProbeConfig, tuple[str, ...]]:
    """The probe's validated config and its sorters (its own sorting first); ``override`` (``ks-platform sort
    --sorter``) replaces the config's list."""
    config = as_scan(session).probe_config(probe) if session is not None else session_config.ProbeConfig()
    return config, tuple(override) if override else config.sorters


def run_sorter_into(
    sorter: str,
    session: Session | None,
    store: SessionStore,
    output_dir: Path,
    inputs: tuple,
    config: session_config.ProbeConfig,
    backend: str = "auto",
    log: sorting.Log | None = None,
    extra_lineage: dict[str, Any] | None = None,
    settings_file: Path | None = None,
    probe: str | None = None,
) -> sorting.SortResult:
    """One sorter on the checked ``inputs`` into ``output_dir``: Kilosort 4 by its native path (exactly as before),
    another sorter through SpikeInterface; both publish only after ``publish_check``."""
    binary, ks_probe, probe_manifest = inputs
    verify = publish_check(session, store, probe, binary)
    if sorter == sorters.KILOSORT4:
        effective = effective_session_settings(session, binary, probe_manifest, settings_file, probe)
        return sorting.sort_recording(
            binary,
            ks_probe,
            effective,
            output_dir,
            backend=backend,
            log=log,
            extra_lineage=extra_lineage,
            verify=verify,
        )
    if settings_file is not None:
        raise SessionInputError(
            settings_file,
            f"holds Kilosort settings, but this probe is sorted with {sorters.SORTERS[sorter].label}",
            f'put {sorter} parameters in ks_session.json ("{sorter}": {{...}}), or sort with kilosort4',
        )
    from ks_platform.core import si_sorting

    params = sorters.effective_params(sorter, config.sorter_params.get(sorter))
    return si_sorting.sort_with_spikeinterface(
        binary, ks_probe, params, output_dir, log=log, extra_lineage=extra_lineage, verify=verify
    )


def sort_metadata(result: sorting.SortResult, output_dir: Path) -> dict[str, Any]:
    """What a sort step reports about one sorting."""
    lineage = read_json(output_dir / LINEAGE_FILE)
    return {
        "sorter": result.sorter,
        "sorter_version": lineage.get("sorter", {}).get("version"),
        "n_units": result.n_units,
        "n_good_units": result.n_good_units,
        "n_spikes": result.n_spikes,
        "sort_seconds": result.seconds,
        "params_hash": result.params_hash,
        "settings": result.settings,
        "attempts": result.attempts,
        "stage_seconds": result.stage_seconds,
        "input_checksum": result.input_checksum,
        "lineage": lineage,
        "path": str(output_dir),
    }


@writes_session
def sort_session(
    session: Session | None,
    store: SessionStore,
    backend: str = "auto",
    log: sorting.Log | None = None,
    extra_lineage: dict[str, Any] | None = None,
    settings_file: Path | None = None,
    probe: str | None = None,
    sorter: tuple[str, ...] | None = None,
) -> StepOutput:
    """The probe's sorting into ``sorting/``: Kilosort 4 on the session's binary and probe map with the session's
    settings, or the first sorter the session config (or ``sorter``) names.

    With ``session`` the landing recording is first checked against the fingerprint ``raw_recording`` took, so a
    recording replaced after conversion is never sorted under the old lineage."""
    if session is not None:
        session = as_scan(session)
    inputs = _checked_inputs(session, store, probe)
    config, names = probe_sorters(session, probe, sorter)
    result = run_sorter_into(
        names[0], session, store, store.sorting_dir, inputs, config, backend, log, extra_lineage, settings_file, probe
    )
    figures = {
        name: store.sorting_dir / f"{name}.png"
        for name in ("drift_amount", "drift_scatter", "diagnostics", "spike_positions")
        if (store.sorting_dir / f"{name}.png").exists()
    }
    return StepOutput(result.output_checksum, sort_metadata(result, store.sorting_dir), figures)


@writes_session
def sort_compared(
    session: Session | None,
    store: SessionStore,
    backend: str = "auto",
    log: sorting.Log | None = None,
    extra_lineage: dict[str, Any] | None = None,
    probe: str | None = None,
    sorter: tuple[str, ...] | None = None,
) -> StepOutput:
    """The sorters the config lists after the probe's own, each into ``sorters/<name>/sorting`` with its own Phy
    folder ``sorters/<name>/phy``; nothing to do (data version ``none``) when it names one sorter."""
    if session is not None:
        session = as_scan(session)
        # A config naming one sorter has nothing to compare: its problems are the probe's sort's to report, once.
        named = tuple(sorter) if sorter else session.probe_config(probe, check_kilosort=False).sorters
        if len(named) < 2:
            return StepOutput("none", {"sorters": list(named), "compared": [], "note": "the config names one sorter"})
    config, names = probe_sorters(session, probe, sorter)
    others = names[1:]
    if not others:
        return StepOutput("none", {"sorters": list(names), "compared": [], "note": "the config names one sorter"})
    inputs = _checked_inputs(session, store, probe)
    binary, ks_probe, _ = inputs
    segments = recorded_segments(store.raw_manifest)
    compared: dict[str, Any] = {}
    for name in others:
        output = store.compared_sorting_dir(name)
        result = run_sorter_into(name, session, store, output, inputs, config, backend, log, extra_lineage, None, probe)
        bundle = phy.build_phy_bundle(
            store.compared_sorting_dir(name),
            binary,
            np.asarray(ks_probe["kcoords"]).astype(int),
            store.compared_phy_dir(name),
            segments,
            verify=publish_check(session, store, probe),
        )
        meta = sort_metadata(result, store.compared_sorting_dir(name))
        compared[name] = {
            **{k: meta[k] for k in ("sorter_version", "n_units", "n_spikes", "sort_seconds", "params_hash", "path")},
            "output_checksum": result.output_checksum,
            "phy_folder": str(bundle.path),
            "open_command": bundle.open_command,
        }
    version = settings.settings_hash({name: item["output_checksum"] for name, item in compared.items()})
    return StepOutput(version, {"sorters": list(names), "compared": list(others), "sortings": compared})


@writes_session
def compare_session_sorters(
    store: SessionStore, session: Session | None = None, probe: str | None = None, sorter: tuple[str, ...] | None = None
) -> StepOutput:
    """How much the probe's sorting agrees with each compared sorter's (SpikeInterface's comparison) into
    ``agreement/``; with ground truth in the session, each sorter's well-detected units beside it."""
    from ks_platform.core import agreement

    if session is not None:
        session = as_scan(session)
    _, names = probe_sorters(session, probe, sorter)
    if len(names) < 2:
        agreement.remove_agreement(store)
        return StepOutput("none", {"sorters": list(names), "note": "the config names one sorter: nothing to compare"})
    folders = {names[0]: store.sorting_dir, **{name: store.compared_sorting_dir(name) for name in names[1:]}}
    for name, folder in folders.items():
        if not (folder / SUMMARY_FILE).is_file():
            step = "sorted_units" if name == names[0] else "compared_sortings"
            raise SessionInputError(
                folder / SUMMARY_FILE,
                f"there is no {name} sorting to compare",
                f"materialize {step} for this partition first",
            )
    truth = None
    if session is not None:
        source = as_scan(session).open(probe)
        truth = find_ground_truth(as_scan(session).folder, source.data_files, source.probe_name)
    report = agreement.compare_sortings(store, folders, truth, verify=publish_check(session, store, probe))
    return StepOutput(report.data_version, report.metadata, report.figures)


def score_session(session: Session, store: SessionStore, probe: str | None = None):
    """Ground-truth score of the probe's sorting, or None when its recording carries no ground truth."""
    scan = as_scan(session)
    source = scan.open(probe)
    spec = find_ground_truth(scan.folder, source.data_files, source.probe_name)
    if spec is None:
        return None
    if not (store.sorting_dir / SUMMARY_FILE).is_file():
        raise SessionInputError(
            store.sorting_dir / SUMMARY_FILE,
            "the session has no sorting to score (sorted_units was not materialized, or its output was removed)",
            "materialize sorted_units for this partition first",
        )
    spikes = np.load(store.sorting_dir / "spike_times.npy").ravel()
    clusters = np.load(store.sorting_dir / "spike_clusters.npy")
    binary = conversion.load_recording_binary(store.binary_dir)
    timeline = recorded_segments(store.raw_manifest)
    return score_sorting(spec, to_acquisition_samples(spikes, timeline), clusters, binary.sampling_frequency)


@writes_session
def export_phy(
    store: SessionStore,
    session: Session | None = None,
    probe: str | None = None,
    progress: Progress | None = None,
) -> StepOutput:
    """Phy folder with a relocatable ``params.py``, opened in phylib before it is published (and, with ``session``,
    only if the landing recording is unchanged: ``publish_check``)."""
    binary = conversion.load_recording_binary(store.binary_dir)
    ks_probe, _ = load_probe_map(store)
    if not (store.sorting_dir / SUMMARY_FILE).is_file():
        raise SessionInputError(
            store.sorting_dir / SUMMARY_FILE,
            "the session has no sorting (sorted_units was not materialized, or its output was removed)",
            "materialize sorted_units for this partition first (or the whole sort_session job)",
        )
    segments = recorded_segments(store.raw_manifest)
    # The Phy folder's curation (even one not observed yet) is kept before the folder is rebuilt; the rebuilt folder
    # gets the curation that applies to its sorting back, so Phy opens it as the lab left it (curation.py).
    curation.preserve_phy_curation(store)
    carried: list[str | None] = []
    bundle = phy.build_phy_bundle(
        store.sorting_dir,
        binary,
        np.asarray(ks_probe["kcoords"]).astype(int),
        store.phy_dir,
        segments,
        verify=publish_check(session, store, probe),
        prepare=lambda staged: carried.append(curation.carry_forward(store, staged)),
        progress=progress,
    )
    lineage = read_json(store.sorting_dir / LINEAGE_FILE)
    metadata = {
        "path": str(bundle.path),
        "open_command": bundle.open_command,
        "dat_path": bundle.dat_path,
        "n_spikes": bundle.n_spikes,
        "n_clusters": bundle.n_clusters,
        "cluster_ids": bundle.cluster_ids,
        "traces_shape": list(bundle.traces_shape),
        "n_shanks": bundle.n_shanks,
        "lineage": lineage,
        "carried_curation": carried[0] if carried and carried[0] else "none",
    }
    version = sorting.sorting_checksum(store.phy_dir)
    return StepOutput(version, metadata, {"phy_overview": store.phy_dir / phy.OVERVIEW_PNG})


@writes_session
def measure_units(
    store: SessionStore,
    session: Session | None = None,
    probe: str | None = None,
    progress: Progress | None = None,
) -> StepOutput:
    """SpikeInterface quality metrics and figures of the sorted units into ``metrics/`` (with ``session``, published
    only if the landing recording is unchanged: ``publish_check``)."""
    from ks_platform.core import quality

    if not (store.phy_dir / "params.py").is_file():
        raise SessionInputError(
            store.phy_dir / "params.py",
            "the session has no Phy folder (phy_bundle was not materialized, or its output was removed)",
            "materialize phy_bundle for this partition first",
        )
    metrics = quality.compute_unit_metrics(store, verify=publish_check(session, store, probe), progress=progress)
    version = settings.settings_hash({"units": metrics.table.to_dict(orient="records")})
    return StepOutput(
        version,
        {**metrics.summary, "path": str(store.metrics_dir), "units": metrics.table.to_dict(orient="records")},
        metrics.figures,
    )


@writes_session
def record_curation(store: SessionStore) -> curation.CurationRecord:
    """Keep the Phy folder's curation and record the one that applies to the current sorting (``curation/``)."""
    return curation.record_curation(store)


@writes_session
def restore_curation(store: SessionStore, snapshot: str | None = None, from_sorting: bool = False):
    """Put a kept curation (or Kilosort's clusters) back into the Phy folder: ``curation.restore_curation``."""
    return curation.restore_curation(store, snapshot, from_sorting)


# ------------------------------------------------------------------------------------------------ after the sort (#28)
@writes_session
def label_session(
    store: SessionStore,
    session: Session | None = None,
    probe: str | None = None,
    log: sorting.Log | None = None,
) -> StepOutput:
    """bombcell's labels of the probe's sorting into ``labels/`` (the session config's ``bombcell`` section), put into
    the Phy folder; the session joins its implant's tracking (``subject.json`` + ``implant``) when it has a subject.

    A ``subject.json`` that cannot be read does not fail the labels: ``tracking_problem`` says what to fix."""
    from ks_platform.core import unit_labels, unit_tracks

    scan = as_scan(session) if session is not None else None
    config = scan.probe_config(probe) if scan is not None else session_config.ProbeConfig()
    _, probe_manifest = load_probe_map(store)
    labels = unit_labels.label_units(
        store, config, probe_manifest["probe_kind"], verify=publish_check(scan, store, probe), log=log
    )
    unit_labels.write_phy_column(store)
    track_key, problem = None, None
    if scan is not None:
        try:
            track_key = unit_tracks.session_track_key(scan.folder, probe or scan.open(probe).probe_name, config)
        except SessionInputError as exc:
            problem = str(exc)
    unit_tracks.register_member(store, track_key, config)
    unit_tracks.write_phy_track_column(store)
    metadata = {
        **{f"n_{label.lower().replace('-', '_')}": n for label, n in labels.summary["counts"].items()},
        "counts": labels.summary["counts"],
        "n_units": labels.summary["n_units"],
        "bombcell_version": labels.summary["bombcell_version"],
        "bombcell_seconds": labels.summary["seconds"],
        "overrides": labels.summary["overrides"],
        "parameters": labels.summary["parameters"],
        "sorting_checksum": labels.summary["sorting_checksum"],
        "track_key": track_key,
        "tracking_problem": problem,
        "units": labels.table.to_dict(orient="records"),
        "path": str(unit_labels.labels_dir(store)),
    }
    return StepOutput(labels.summary["version"], metadata, labels.figures)


def track_subject(store_root: Path, key: str, log: sorting.Log | None = None) -> StepOutput:
    """UnitMatch over the implant's sessions into ``subjects/<key>/unit_tracks/``, with the ``unitmatch`` section of
    its newest session's config; then every tracked session's Phy track column. ``sessions_changed`` lists the
    sessions whose track ids changed (their NWB files are refreshed)."""
    from ks_platform.core import unit_tracks

    store_root = Path(store_root)
    before = unit_tracks.load_tracks(store_root, key)
    members = unit_tracks.member_keys(store_root, key)
    newest = members[-1] if members else None
    record = read_json(unit_tracks.subject_dir(store_root, key) / "members" / f"{newest}.json") if newest else {}
    sources = {k: Path(v) for k, v in record.get("unitmatch_sources", {}).items()}
    overrides = unit_tracks.validate_overrides(record.get("unitmatch", {}), sources)
    tracks = unit_tracks.track_units(store_root, key, overrides, log=log, parameters_from=newest)
    changed = []
    for session in sorted(set(tracks.table["session"])):
        store = SessionStore(store_root, session)
        mine = tracks.table[tracks.table["session"] == session][["cluster_id", "track_id"]]
        old = before.table[before.table["session"] == session][["cluster_id", "track_id"]] if before else None
        if old is None or not np.array_equal(mine.to_numpy(), old.to_numpy()):
            changed.append(session)
        try:
            unit_tracks.write_phy_track_column(store)
        except OSError as exc:  # one session's Phy folder never fails the others' tracking
            if log is not None:
                log(f"{session}: Phy track column not written ({exc})")
    metadata = {
        **{k: tracks.summary[k] for k in ("n_units", "n_tracks", "n_tracks_across_sessions", "unitmatch_version")},
        "sessions": tracks.summary["sessions"],
        "left_out": tracks.summary["left_out"],
        "no_overlap": tracks.summary["no_overlap"],
        "parameters": tracks.summary["parameters"],
        "parameters_from": newest,
        "inputs_version": tracks.summary["inputs_version"],
        "sessions_changed": changed,
        "units": tracks.table.to_dict(orient="records"),
        "path": str(unit_tracks.tracks_dir(store_root, key)),
    }
    version = settings.settings_hash(
        {"tracks": tracks.table.to_dict(orient="list"), "inputs": tracks.summary["inputs_version"]}
    )
    return StepOutput(version, metadata, tracks.figures)

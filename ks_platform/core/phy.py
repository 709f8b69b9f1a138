"""Phy bundle: Kilosort's Phy files with a relocatable ``params.py``, validated by opening it in phylib."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ks_platform.core.conversion import RecordingBinary
from ks_platform.core.errors import SessionInputError
from ks_platform.core.figures import new_figure, save_figure
from ks_platform.core.names import EFFECTIVE_SETTINGS_FILE, LINEAGE_FILE
from ks_platform.core.progress import Progress, StageProgress
from ks_platform.core.store import atomic_directory
from ks_platform.core.timeline import TimelineSegment

#: Kilosort outputs that are not part of a Phy folder (kept with the sorting).
NOT_FOR_PHY = {"ops.npy", "kilosort4.log"}
#: A picture of what Phy will show, written into the bundle (Phy ignores it; the UI renders it).
OVERVIEW_PNG = "overview.png"
#: The sorting's provenance, copied into the bundle (Phy ignores it): a curation saved there names its sorting's
#: lineage even after a re-sort replaced ``sorting/``.
PROVENANCE_FILES = (LINEAGE_FILE, EFFECTIVE_SETTINGS_FILE)


@dataclass(frozen=True)
class PhyBundle:
    path: Path
    dat_path: str
    n_spikes: int
    n_clusters: int
    cluster_ids: list[int]
    traces_shape: tuple[int, int]
    n_shanks: int

    @property
    def open_command(self) -> str:
        return f"phy template-gui {self.path / 'params.py'}"


def params_py(dat_path: str, binary: RecordingBinary) -> str:
    return (
        f"dat_path = {dat_path!r}\n"
        f"n_channels_dat = {binary.n_chan_bin}\n"
        f"dtype = {binary.dtype!r}\n"
        "offset = 0\n"
        f"sample_rate = {binary.sampling_frequency!r}\n"
        "hp_filtered = False\n"
    )


SEGMENTS_TSV = "recording_segments.tsv"


def write_segments_tsv(segments: Sequence[TimelineSegment], path: Path, sampling_frequency: float) -> None:
    """The files the binary was made of: each one's first sample on the acquisition clock (and in seconds), where
    it starts in the binary (and in Phy's time axis), the samples used, the overlap skipped and the zeros filled
    before it. A Phy time ``t`` is acquisition time ``t + first_s - binary_start_s`` of its segment."""
    header = (
        "segment\tfile\tfirst_sample\tfirst_s\tbinary_start\tbinary_start_s\tn_samples\tskipped_samples\tzeros_before"
    )
    lines = [header]
    for s in segments:
        cells = (
            s.label,
            s.file,
            str(s.first_sample),
            f"{s.first_sample / sampling_frequency:.6f}",
            str(s.binary_start),
            f"{s.binary_start / sampling_frequency:.6f}",
            str(s.n_samples),
            str(s.file_offset),
            str(s.zeros_before),
        )
        lines.append("\t".join(cells))
    path.write_text("\n".join(lines) + "\n")


def build_phy_bundle(
    sorting_dir: Path,
    binary: RecordingBinary,
    channel_shanks: np.ndarray,
    phy_dir: Path,
    segments: Sequence[TimelineSegment] = (),
    verify: Callable[[], None] | None = None,
    prepare: Callable[[Path], None] | None = None,
    progress: Progress | None = None,
) -> PhyBundle:
    """Copy the sorting's Phy files to ``phy_dir`` with ``dat_path`` relative to it, then open it in phylib.

    The relative path (``../binary/recording.bin``) keeps working when the whole store is moved.
    ``channel_shanks`` gives the shank of each channel in ``channel_map.npy`` order; ``segments`` (the recording's
    timeline: where each file lies on the acquisition clock) are written to ``recording_segments.tsv``.
    ``prepare(staged)`` runs once the sorting's files are in (``export_phy`` puts the applying curation back there);
    ``verify`` runs last before the folder is published (raises when the input changed). ``progress`` hears of each stage.
    """
    stages = StageProgress(progress, ["copying the sorting", "opening it in phylib", "the overview figure"])
    with atomic_directory(phy_dir) as staged:
        stages.start("copying the sorting")
        for item in sorting_dir.iterdir():
            wanted = item.suffix in (".npy", ".tsv") or item.name in PROVENANCE_FILES
            if item.is_file() and item.name not in NOT_FOR_PHY and wanted:
                shutil.copy2(item, staged / item.name)
        if prepare is not None:
            prepare(staged)
        np.save(staged / "channel_shanks.npy", np.asarray(channel_shanks, dtype=np.int32))
        if segments:
            write_segments_tsv(segments, staged / SEGMENTS_TSV, binary.sampling_frequency)
        relative = os.path.relpath(binary.path, phy_dir)
        (staged / "params.py").write_text(params_py(relative, binary))
        stages.start("opening it in phylib")
        bundle = validate_phy_folder(staged, final_path=phy_dir)
        stages.start("the overview figure")
        plot_phy_overview(staged, staged / OVERVIEW_PNG, binary.sampling_frequency)
        if verify is not None:
            verify()
    stages.finish(f"{bundle.n_clusters} clusters, {bundle.n_spikes} spikes")
    return bundle


def _cluster_labels(folder: Path) -> dict[int, str]:
    """Kilosort's good/mua label per cluster id (``cluster_KSLabel.tsv``), empty when absent."""
    import pandas as pd

    path = folder / "cluster_KSLabel.tsv"
    if not path.is_file():
        return {}
    table = pd.read_csv(path, sep="\t")
    return dict(zip(table["cluster_id"].astype(int), table["KSLabel"].astype(str)))


def plot_phy_overview(folder: Path, path: Path, sampling_frequency: float) -> Path:
    """Amplitude over time of every spike by cluster (Phy's amplitude view) and each cluster's template on its
    peak channel, labelled with Kilosort's good/mua call and spike count."""
    times = np.load(folder / "spike_times.npy").ravel() / sampling_frequency
    clusters = np.load(folder / "spike_clusters.npy").ravel()
    amplitudes = np.load(folder / "amplitudes.npy").ravel()
    templates = np.load(folder / "templates.npy", mmap_mode="r")
    labels = _cluster_labels(folder)
    ids, counts = np.unique(clusters, return_counts=True)
    colors = [f"C{i % 10}" for i in range(len(ids))]

    plt, fig = new_figure(10, 4)
    amplitude_ax = fig.add_subplot(1, 2, 1)
    for cluster, color in zip(ids, colors):
        mine = clusters == cluster
        amplitude_ax.scatter(times[mine], amplitudes[mine], s=3, color=color, linewidths=0)
    amplitude_ax.set(xlabel="time (s)", ylabel="amplitude (a.u.)", title=f"{len(times)} spikes in {len(ids)} clusters")

    template_ax = fig.add_subplot(1, 2, 2)
    offset = 0.0
    for cluster, count, color in zip(ids, counts, colors):
        template = np.asarray(templates[cluster]) if cluster < templates.shape[0] else np.zeros((templates.shape[1], 1))
        trace = template[:, int(np.argmax(np.ptp(template, axis=0)))]
        span = float(np.ptp(trace)) or 1.0
        template_ax.plot(np.arange(trace.size) / sampling_frequency * 1000, trace / span + offset, color=color)
        label = labels.get(int(cluster), "")
        template_ax.annotate(f"{int(cluster)} {label} ({int(count)})", (0, offset + 0.25), fontsize=7)
        offset -= 1.2
    template_ax.set(xlabel="ms", yticks=[], title="templates on their peak channel: id label (spikes)")
    return save_figure(plt, fig, path)


PARAMS_FIX = "re-materialize phy_bundle (it writes params.py with dat_path relative to the Phy folder)"


def check_params(folder: Path, final_path: Path | None = None) -> dict:
    """Read ``params.py`` as Phy does and check what Phy needs from it: the keys, a dtype, and a ``dat_path`` that
    resolves (relative to the folder) to a binary whose size fits ``n_channels_dat``. Raises ``SessionInputError``
    naming ``params.py`` (or the missing binary) and the fix; returns the parameters."""
    shown = (final_path or folder) / "params.py"
    path = folder / "params.py"
    if not path.is_file():
        raise SessionInputError(shown, "missing: Phy opens a folder through its params.py", PARAMS_FIX)
    try:
        params: dict = {}
        exec(path.read_text(encoding="utf-8", errors="replace"), {}, params)  # what phylib's read_python does
    except Exception as exc:  # noqa: BLE001 - any error in the file is the file's problem
        raise SessionInputError(shown, f"Phy cannot read it ({type(exc).__name__}: {exc})", PARAMS_FIX) from None
    params = {k.lower(): v for k, v in params.items()}
    missing = [k for k in ("dat_path", "n_channels_dat", "dtype", "sample_rate") if k not in params]
    if missing:
        raise SessionInputError(shown, f"no {', '.join(missing)}", PARAMS_FIX)
    try:
        itemsize = np.dtype(params["dtype"]).itemsize
        n_channels = int(params["n_channels_dat"])
    except (TypeError, ValueError) as exc:
        raise SessionInputError(shown, f"dtype/n_channels_dat unusable ({exc})", PARAMS_FIX) from None
    dat_paths = params["dat_path"] if isinstance(params["dat_path"], (list, tuple)) else [params["dat_path"]]
    for dat_path in dat_paths:
        resolved = folder / str(dat_path)  # an absolute dat_path stays absolute
        if not resolved.exists():
            hint = (
                f" (a link to {os.readlink(resolved)}, which is gone: put the recording back there or re-materialize "
                "recording_binary)"
                if resolved.is_symlink()
                else ""
            )
            raise SessionInputError(
                shown,
                f"dat_path {str(dat_path)!r} resolves to {resolved}, which does not exist{hint}: Phy cannot show "
                "traces or waveforms",
                f"{PARAMS_FIX}, or set dat_path to the binary's path relative to the Phy folder",
            )
        size = resolved.stat().st_size
        if n_channels <= 0 or size % (n_channels * itemsize):
            raise SessionInputError(
                shown,
                f"{resolved.name} holds {size} bytes, not a whole number of samples of n_channels_dat={n_channels} "
                f"{np.dtype(params['dtype'])} channels",
                PARAMS_FIX,
            )
    return params


def validate_phy_folder(folder: Path, final_path: Path | None = None) -> PhyBundle:
    """Open the folder headlessly with phylib's ``load_model``; raise ``SessionInputError`` (the file, the fix) if
    Phy could not open it."""
    from phylib.io.model import load_model

    check_params(folder, final_path)
    try:
        model = load_model(folder / "params.py")
    except Exception as exc:  # noqa: BLE001 - phylib raises whatever its readers raise
        raise SessionInputError(
            (final_path or folder) / "params.py",
            f"Phy cannot open the folder ({type(exc).__name__}: {exc})",
            PARAMS_FIX,
        ) from None
    try:
        traces = model.traces
        if traces is None:
            raise SessionInputError(
                (final_path or folder) / "params.py", "phylib could not open the raw data at dat_path", PARAMS_FIX
            )
        shanks = np.load(folder / "channel_shanks.npy") if (folder / "channel_shanks.npy").exists() else np.zeros(1)
        dat_path = str(model.dat_path[0] if isinstance(model.dat_path, (list, tuple)) else model.dat_path)
        return PhyBundle(
            path=final_path or folder,
            dat_path=os.path.relpath(dat_path, folder),
            n_spikes=int(model.n_spikes),
            n_clusters=int(len(model.cluster_ids)),
            cluster_ids=[int(c) for c in model.cluster_ids],
            traces_shape=(int(traces.shape[0]), int(traces.shape[1])),
            n_shanks=int(len(np.unique(shanks))),
        )
    finally:
        model.close()

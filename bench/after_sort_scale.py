"""Benchmark: every step after the sort at the size of a real session (issue #28), each in its own child process.

A session store is generated without Kilosort: a Neuropixels 1.0 probe (384 channels + sync), a Kilosort-4-shaped
sorting (``--units`` units with SpikeInterface's generated templates, Poisson spike trains at log-normally spread rates
averaging ``--rate-hz``, amplitudes, PC features, Kilosort's file names and dtypes) and a recording binary that is
either

* ``sparse``: a sparse file of the real size (1 h: 83 GB) holding zeros: what a step reads costs page-cache zero
  fills, not disk; bombcell then labels every unit NOISE (flat waveforms), so only its time and memory are meaningful;
* ``generated``: the units' templates injected into Gaussian noise (SpikeInterface's generator), written to disk; with
  ``--sessions 2`` a second day of the same units moved 6 µm (for ``tracks``).

Steps (``--steps``): ``phy`` (``pipeline.export_phy``), ``labels`` (``pipeline.label_session``: bombcell),
``metrics`` (``pipeline.measure_units``: SpikeInterface), ``nwb`` (``nwb_export.export_units_nwb``), ``tracks``
(``pipeline.track_subject``: UnitMatch over the sessions). Each runs in a child process; its wall time and peak RSS
(``os.wait4``) are printed as a BENCHMARKS.md row and saved to ``bench/results/``.

    .venv/bin/python bench/after_sort_scale.py --minutes 60 --binary sparse --steps phy,labels,nwb
    .venv/bin/python bench/after_sort_scale.py --minutes 6 --binary sparse --steps metrics
    .venv/bin/python bench/after_sort_scale.py --minutes 2 --binary generated --sessions 2 --steps labels,tracks
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FS = 30000.0
N_SYNC = 1
TRACK = "bench_mouse__imec0"


def session_key(day: int) -> str:
    return f"2026-05-{day + 1:02d}__rig1__bench_day{day + 1}__imec0"


def _templates(n_units: int, n_channels: int, drift_um: float, seed: int):
    from spikeinterface.core.generate import generate_templates, generate_unit_locations

    from ks_platform.core.synthetic import np1_probe

    probe = np1_probe(n_channels)
    locations = generate_unit_locations(
        n_units,
        probe.contact_positions,
        margin_um=10.0,
        minimum_z=5.0,
        maximum_z=40.0,
        minimum_distance=15.0,
        seed=seed,
    )
    locations[:, 1] += drift_um
    templates = generate_templates(probe.contact_positions, locations, FS, 20 / 30.0, 3.0, seed=seed)
    # Kilosort 4's template window: 61 samples, the spike at sample 20 (nt0min).
    return probe, np.ascontiguousarray(templates[:, :61, :]).astype(np.float32)


def _spike_trains(n_units: int, n_samples: int, rate_hz: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rates = rng.lognormal(0.0, 0.8, n_units)
    rates *= rate_hz / rates.mean()
    counts = rng.poisson(rates * n_samples / FS)
    times = np.concatenate([rng.integers(100, n_samples - 100, c) for c in counts]).astype(np.int64)
    clusters = np.repeat(np.arange(n_units, dtype=np.int32), counts)
    order = np.argsort(times, kind="stable")
    return times[order], clusters[order]


def _sparse_npy(path: Path, shape: tuple[int, ...], dtype: str) -> None:
    """An ``.npy`` of ``shape`` holding zeros, stored sparse (header written, the rest a hole)."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros(0, dtype=dtype))
    header["shape"] = shape
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        offset = handle.tell()
    os.truncate(path, offset + int(np.prod(shape)) * np.dtype(dtype).itemsize)


def make_session(base: Path, day: int, minutes: float, n_units: int, rate_hz: float, binary: str, seed: int) -> Path:
    """One session store (raw manifest, probe, binary, sorting) under ``base/sessions/<key>``."""
    from ks_platform.core import probes
    from ks_platform.core.conversion import RecordingBinary
    from ks_platform.core.names import (
        EFFECTIVE_SETTINGS_FILE,
        KILOSORT_PROBE_JSON,
        LINEAGE_FILE,
        MANIFEST_NAME,
        PROBE_MANIFEST,
        SUMMARY_FILE,
    )
    from ks_platform.core.sorting import sorting_checksum
    from ks_platform.core.store import SessionStore, write_json_atomic
    from ks_platform.core.synthetic import NP1_UV_PER_BIT

    store = SessionStore(base, session_key(day))
    n_channels, n_samples = 384, int(minutes * 60 * FS)
    probe, templates = _templates(n_units, n_channels, 6.0 * day, seed)
    times, clusters = _spike_trains(n_units, n_samples, rate_hz, seed * 100 + day)
    for folder in (store.probe_dir, store.binary_dir, store.sorting_dir):
        folder.mkdir(parents=True, exist_ok=True)
    positions = probe.contact_positions.astype(np.float32)
    ks_probe = {
        "chanMap": np.arange(n_channels, dtype=np.int32),
        "xc": positions[:, 0],
        "yc": positions[:, 1],
        "kcoords": np.zeros(n_channels, dtype=np.float32),
        "n_chan": n_channels,
    }
    (store.probe_dir / KILOSORT_PROBE_JSON).write_text(json.dumps(probes.kilosort_probe_to_json(ks_probe)))
    write_json_atomic(
        store.probe_dir / PROBE_MANIFEST,
        {
            "binary_channels": list(range(n_channels + N_SYNC)),
            "probe_kind": "neuropixels",
            "model_name": "PRB_1_4_0480_1",
            "manufacturer": "imec",
            "n_contacts": n_channels,
        },
    )
    path = store.binary_dir / "recording.bin"
    started = time.perf_counter()
    if binary == "sparse":
        with open(path, "wb") as handle:
            handle.truncate(n_samples * (n_channels + N_SYNC) * 2)
    else:
        _write_generated(path, probe, templates, times, clusters, n_samples, seed + day)
    write_json_atomic(
        store.binary_dir / MANIFEST_NAME,
        RecordingBinary(
            path=path,
            n_chan_bin=n_channels + N_SYNC,
            binary_channels=tuple(range(n_channels + N_SYNC)),
            sampling_frequency=FS,
            n_samples=n_samples,
            dtype="int16",
            checksum=f"bench-{binary}-{day}",
            checksum_algorithm="none",
            zero_copy=False,
            bytes_written=path.stat().st_size,
            uv_per_bit=NP1_UV_PER_BIT,
            seconds=round(time.perf_counter() - started, 1),
        ).to_json(),
    )
    sorting = store.sorting_dir
    rng = np.random.default_rng(seed)
    np.save(sorting / "spike_times.npy", times)
    np.save(sorting / "spike_clusters.npy", clusters)
    np.save(sorting / "spike_templates.npy", clusters)
    np.save(sorting / "amplitudes.npy", rng.gamma(8.0, 2.0, times.size).astype(np.float32))
    # Kilosort's templates are whitened; the bench's whitening is the identity.
    np.save(sorting / "templates.npy", templates / np.abs(templates).max())
    for name in ("whitening_mat.npy", "whitening_mat_inv.npy", "whitening_mat_dat.npy"):
        np.save(sorting / name, np.eye(n_channels, dtype=np.float32))
    np.save(sorting / "channel_map.npy", np.arange(n_channels, dtype=np.int32))
    np.save(sorting / "channel_positions.npy", positions)
    np.save(sorting / "channel_shanks.npy", np.zeros(n_channels, dtype=np.float32))
    np.save(sorting / "similar_templates.npy", np.eye(n_units, dtype=np.float32))
    np.save(sorting / "pc_feature_ind.npy", np.tile(np.arange(10, dtype=np.uint32), (n_units, 1)))
    _sparse_npy(sorting / "pc_features.npy", (times.size, 6, 10), "float32")
    (sorting / "params.py").write_text(
        f"dat_path = '{path}'\nn_channels_dat = {n_channels + N_SYNC}\ndtype = 'int16'\noffset = 0\n"
        f"sample_rate = {FS}\nhp_filtered = False\n"
    )
    labels = "".join(f"{u}\t{'good' if u % 3 else 'mua'}\n" for u in range(n_units))
    (sorting / "cluster_KSLabel.tsv").write_text("cluster_id\tKSLabel\n" + labels)
    (sorting / "cluster_group.tsv").write_text("cluster_id\tKSLabel\n" + labels)
    write_json_atomic(sorting / LINEAGE_FILE, {"versions": {"kilosort": "4.1.7", "ks_platform": "bench"}})
    write_json_atomic(sorting / EFFECTIVE_SETTINGS_FILE, {"as_run": {"n_chan_bin": n_channels + N_SYNC, "fs": FS}})
    write_json_atomic(
        sorting / SUMMARY_FILE,
        {
            "output_dir": str(sorting),
            "n_units": n_units,
            "n_good_units": int(sum(1 for u in range(n_units) if u % 3)),
            "n_spikes": int(times.size),
            "seconds": 0.0,
            "backend": {},
            "params_hash": "bench",
            "settings": {},
            "input_checksum": f"bench-{binary}-{day}",
            "output_checksum": sorting_checksum(sorting),
        },
    )
    write_json_atomic(
        store.raw_manifest,
        {
            "sampling_frequency": FS,
            "recording_date": (dt.date(2026, 5, 1) + dt.timedelta(days=day)).isoformat(),
            "duration_s": n_samples / FS,
            "data_files": [],
        },
    )
    return store.dir


def _write_generated(path: Path, probe, templates, times, clusters, n_samples: int, seed: int) -> None:
    """Templates (µV) injected at the spike times into Gaussian noise (6 µV), written as int16 with a sync row."""
    from spikeinterface.core import NumpySorting
    from spikeinterface.core.generate import InjectTemplatesRecording
    from spikeinterface.generation.noise_tools import NoiseGeneratorRecording

    from ks_platform.core.synthetic import NP1_UV_PER_BIT

    noise = NoiseGeneratorRecording(
        num_channels=templates.shape[2], sampling_frequency=FS, durations=[n_samples / FS], noise_levels=6.0, seed=seed
    )
    sorting = NumpySorting.from_samples_and_labels([times], [clusters], FS)
    recording = InjectTemplatesRecording(sorting, templates, nbefore=20, parent_recording=noise)
    step = int(FS * 2)
    with open(path, "wb") as handle:
        for start in range(0, n_samples, step):
            stop = min(start + step, n_samples)
            block = np.zeros((stop - start, templates.shape[2] + N_SYNC), dtype=np.int16)
            traces = recording.get_traces(start_frame=start, end_frame=stop)
            block[:, :-N_SYNC] = np.clip(np.rint(traces / NP1_UV_PER_BIT), -32768, 32767)
            handle.write(block.tobytes())


def write_template_labels(store, day: int, seed: int = 3, n_spikes: int = 1000) -> None:
    """What ``unit_labels`` leaves for ``unit_tracks``, made from the units' own templates: each unit's two
    half-recording waveforms (bombcell's ``RawWaveforms/Unit<id>_RawSpikes.npy``, int16 units, median of
    ``n_spikes / 2`` noisy spikes each) and every unit labelled GOOD. For ``tracks`` over a sparse binary, whose zeros
    bombcell would label NOISE and UnitMatch could not compare."""
    from ks_platform.core.names import BOMBCELL_TSV
    from ks_platform.core.store import read_json, write_json_atomic
    from ks_platform.core.synthetic import NP1_UV_PER_BIT
    from ks_platform.core.unit_labels import LABELS_JSON, LABELS_TSV, RAW_WAVEFORMS, labels_dir

    templates = np.load(store.sorting_dir / "templates.npy")
    n_units = templates.shape[0]
    _, uv = _templates(n_units, templates.shape[2], 6.0 * day, seed)
    folder = labels_dir(store)
    (folder / RAW_WAVEFORMS).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + day)
    noise = 6.0 / NP1_UV_PER_BIT / np.sqrt(n_spikes / 2)  # the noise left in a median of n/2 spikes (≈ a mean's)
    for unit in range(n_units):
        halves = uv[unit][:, :, None] / NP1_UV_PER_BIT + rng.normal(0, noise, (*uv.shape[1:], 2))
        np.save(folder / RAW_WAVEFORMS / f"Unit{unit}_RawSpikes.npy", halves)
    table = "".join(f"{u}\tGOOD\n" for u in range(n_units))
    (folder / BOMBCELL_TSV).write_text("cluster_id\tbc_unitType\n" + table)
    (folder / LABELS_TSV).write_text(
        "cluster_id\tbombcell_label\tkilosort_label\n" + table.replace("GOOD\n", "GOOD\tgood\n")
    )
    checksum = read_json(store.sorting_dir / "sorting_summary.json")["output_checksum"]
    write_json_atomic(
        folder / LABELS_JSON,
        {"sorting_checksum": checksum, "version": f"template-labels-{day}", "counts": {"GOOD": n_units}},
    )


# ------------------------------------------------------------------------------------------------------------ steps
def run_step(step: str, base: Path, n_sessions: int) -> dict:
    from ks_platform.core import nwb_export, pipeline, unit_labels, unit_tracks
    from ks_platform.core.store import SessionStore

    store = SessionStore(base, session_key(0))
    if step == "phy":
        return pipeline.export_phy(store).metadata | {"units": None}
    if step == "labels":
        outputs = [pipeline.label_session(SessionStore(base, session_key(d))) for d in range(n_sessions)]
        return {
            "counts": [o.metadata["counts"] for o in outputs],
            "seconds": [o.metadata["bombcell_seconds"] for o in outputs],
        }
    if step == "metrics":
        return {"n_units": pipeline.measure_units(store).metadata["n_units"]}
    if step == "nwb":
        return {"n_spikes": nwb_export.export_units_nwb(store).n_spikes}
    if step == "tracks":
        for day in range(n_sessions):
            if unit_labels.current_labels(SessionStore(base, session_key(day))) is None:
                write_template_labels(SessionStore(base, session_key(day)), day)
        for day in range(n_sessions):
            unit_tracks.register_member(SessionStore(base, session_key(day)), TRACK)
        output = pipeline.track_subject(base, TRACK)
        return {k: output.metadata[k] for k in ("n_units", "n_tracks", "n_tracks_across_sessions")}
    raise ValueError(step)


def _poll_memory(pid: int, peaks: dict[str, int], done) -> None:
    """Largest ``RssAnon`` (the process's own memory) and ``RssFile`` (file pages it maps, e.g. the binary through a
    memory map: page cache the kernel can reclaim) of ``pid``, sampled every 0.2 s."""
    while not done.is_set():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                name, _, value = line.partition(":")
                if name in ("RssAnon", "RssFile"):
                    peaks[name] = max(peaks.get(name, 0), int(value.split()[0]))
        except (OSError, ValueError):
            return
        done.wait(0.2)


def measure(step: str, base: Path, n_sessions: int) -> dict:
    """``step`` in a child process: wall time, peak RSS (``os.wait4``), peak anonymous and file-backed RSS, what it
    returned."""
    import threading

    read, write = os.pipe()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            payload = {"ok": True, "result": run_step(step, base, n_sessions)}
        except Exception as exc:  # reported, not raised: the other steps still run
            payload = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        with os.fdopen(write, "w") as handle:
            handle.write(json.dumps(payload, default=str))
        os._exit(0)
    os.close(write)
    peaks: dict[str, int] = {}
    done = threading.Event()
    poller = threading.Thread(target=_poll_memory, args=(pid, peaks, done), daemon=True)
    poller.start()
    with os.fdopen(read) as handle:
        text = handle.read()
    done.set()
    poller.join()
    _, _, usage = os.wait4(pid, 0)
    return {
        "step": step,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "peak_anon_mib": round(peaks.get("RssAnon", 0) / 1024, 1),
        "peak_file_mib": round(peaks.get("RssFile", 0) / 1024, 1),
        **json.loads(text or '{"ok": false, "error": "child died"}'),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--units", type=int, default=400)
    parser.add_argument("--rate-hz", type=float, default=14.0)
    parser.add_argument("--binary", choices=("sparse", "generated"), default="sparse")
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--steps", default="phy,labels,metrics,nwb")
    parser.add_argument("--out", type=Path, default=None, help="store root (default: a folder under /tmp)")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    base = args.out or Path(f"/tmp/ks_after_sort_{args.binary}_{args.minutes:g}min")
    made = time.perf_counter()
    for day in range(args.sessions):
        if not (base / "sessions" / session_key(day) / "sorting" / "sorting_summary.json").is_file():
            make_session(base, day, args.minutes, args.units, args.rate_hz, args.binary, args.seed)
    made = round(time.perf_counter() - made, 1)
    n_spikes = int(np.load(base / "sessions" / session_key(0) / "sorting" / "spike_times.npy", mmap_mode="r").size)
    binary_bytes = (base / "sessions" / session_key(0) / "binary" / "recording.bin").stat().st_size
    print(
        f"store {base}: {args.sessions} session(s), {args.units} units, {n_spikes:,} spikes, binary "
        f"{binary_bytes / 1e9:.1f} GB ({args.binary}), made in {made} s; load {os.getloadavg()[0]:.1f}"
    )
    rows = []
    for step in [s for s in args.steps.split(",") if s]:
        row = measure(step, base, args.sessions)
        rows.append(row)
        print(json.dumps(row, default=str)[:600], flush=True)
    print(
        "\n| step | recording | units | spikes | binary | time | peak RSS (own / mapped files) |\n"
        "| --- | --- | --- | --- | --- | --- | --- |"
    )
    for row in rows:
        status = "" if row["ok"] else f" (failed: {row['error'][:80]})"
        print(
            f"| {row['step']} | {args.minutes:g} min × 384 ch | {args.units} | {n_spikes:,} | {binary_bytes / 1e9:.1f} GB "
            f"{args.binary} | {row['seconds']} s{status} | {row['peak_rss_mib']} MiB ({row['peak_anon_mib']} / "
            f"{row['peak_file_mib']}) |"
        )
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (results / f"after_sort_scale-{args.binary}-{args.minutes:g}min-{stamp}.json").write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "host": platform.node(),
                "load": os.getloadavg(),
                "n_spikes": n_spikes,
                "binary_bytes": binary_bytes,
                "rows": rows,
            },
            indent=2,
            default=str,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()

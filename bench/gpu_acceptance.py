"""GPU acceptance run for an air-gapped node: doctor, a ground-truth sort, determinism, a 1 GiB memory cap.

    python bench/gpu_acceptance.py --mode gpu --out DIR      (60 s x 384 ch NP1.0, three sorts + capped + CPU excerpt)
    python bench/gpu_acceptance.py --mode cpu --out DIR      (CI: a short recording, two sorts on the CPU)

Uses only the domain core (no Dagster), so it runs where just the wheels of ``ks-platform sort`` are installed
(``make gpu-bundle``). Writes ``DIR/acceptance.json``: times, GPU vs CPU speed, accuracy, memory peaks, determinism.
Also checks that a step forked the way the default executor forks it (forkserver with torch and Kilosort preloaded)
can use the device. Determinism differences are reported, never failed on; the exit status is non-zero only when a
sort fails, the ground truth bar is missed or the forked step cannot use the device.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: The cap of the memory-capped rerun (the 1 GB laptop GPU the lab sorted on).
CAP_BYTES = 1 << 30


@dataclass
class Plan:
    """What one mode runs."""

    backend: str
    duration_s: float
    n_channels: int
    n_units: int
    repeats: int
    capped: bool
    cpu_excerpt_s: float | None
    budget_s: float


PLANS = {
    "gpu": Plan("cuda", 60.0, 384, 30, 3, True, 5.0, 420.0),
    "cpu": Plan("cpu", 4.0, 32, 6, 2, False, None, 600.0),
}


@dataclass
class Report:
    mode: str
    host: dict[str, Any]
    doctor: list[dict] = field(default_factory=list)
    session: dict[str, Any] = field(default_factory=dict)
    sorts: list[dict[str, Any]] = field(default_factory=list)
    determinism: dict[str, Any] = field(default_factory=dict)
    capped: dict[str, Any] | None = None
    cpu_vs_gpu: dict[str, Any] | None = None
    #: A step process forked from a forkserver that preloaded what the default executor preloads, using the device.
    forked_step: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    #: Distributions this run imported (what the bundle plus the node's image must provide).
    imported_distributions: list[str] = field(default_factory=list)
    total_seconds: float = 0.0
    ok: bool = False


def _gpu_peak(reset: bool = False) -> int | None:
    import torch

    if not torch.cuda.is_available():
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return int(torch.cuda.max_memory_allocated())


def _rss_peak_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_session(folder: Path, duration_s: float, n_channels: int, n_units: int) -> Path:
    """A SpikeGLX NP1.0 session with ground truth (SpikeInterface's generator, written chunk by chunk)."""
    from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session

    spec = DemoSessionSpec(
        duration_s=duration_s,
        n_channels=n_channels,
        n_units=n_units,
        seed=7,
        min_well_detected_units=max(1, n_units // 2),
    )
    return make_spikeglx_session(folder, spec)


def ingest(session: Path, folder: Path):
    """raw_recording, probe_map and recording_binary of the session's only probe into a store folder."""
    from ks_platform.core import pipeline
    from ks_platform.core.store import SessionStore

    store = SessionStore.in_folder(folder)
    pipeline.observe_raw_recording(session, store)
    pipeline.build_probe_map(session, store)
    pipeline.build_recording_binary(session, store)
    return store


def copy_inputs(base, folder: Path):
    """A new store folder sharing the base store's recording, probe map and binary (no re-conversion)."""
    from ks_platform.core.store import SessionStore

    store = SessionStore.in_folder(folder)
    store.dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(base.raw_manifest, store.raw_manifest)
    for part in (base.probe_dir, base.binary_dir):
        shutil.copytree(part, store.dir / part.name, symlinks=True)
    return store


def sort_once(session: Path, store, backend: str, label: str) -> dict[str, Any]:
    """One sort with its time, memory peaks, plan, attempts and ground-truth score."""
    from ks_platform.core import pipeline

    _gpu_peak(reset=True)
    started = time.perf_counter()
    output = pipeline.sort_session(session, store, backend=backend, log=lambda m: print(f"  [{label}] {m}", flush=True))
    seconds = time.perf_counter() - started
    score = pipeline.score_session(session, store)
    lineage = output.metadata["lineage"]
    return {
        "label": label,
        "backend": lineage["backend"]["backend"],
        "device": lineage["backend"]["device_name"],
        "wall_seconds": round(seconds, 2),
        "sort_seconds": output.metadata["sort_seconds"],
        "stage_seconds": output.metadata["stage_seconds"],
        "n_units": output.metadata["n_units"],
        "n_spikes": output.metadata["n_spikes"],
        "memory_plan": lineage.get("memory_plan"),
        "attempts": output.metadata["attempts"],
        "gpu_peak_allocated_bytes": _gpu_peak(),
        "rss_peak_bytes": _rss_peak_bytes(),
        "well_detected": score.well_detected if score else None,
        "well_detected_accuracy": score.well_detected_accuracy if score else None,
        "ground_truth_passed": score.passed if score else None,
        "output_checksum": output.data_version,
        "sorting_dir": str(store.sorting_dir),
    }


def compare_sortings(dirs: list[Path]) -> dict[str, Any]:
    """Whether repeated sorts are identical, and how far apart they are when not."""
    reference_times = np.load(dirs[0] / "spike_times.npy")
    reference_clusters = np.load(dirs[0] / "spike_clusters.npy")
    rows = []
    for other in dirs[1:]:
        times, clusters = np.load(other / "spike_times.npy"), np.load(other / "spike_clusters.npy")
        same_shape = times.shape == reference_times.shape
        rows.append(
            {
                "against": other.parent.name,
                "identical": bool(
                    same_shape
                    and np.array_equal(times, reference_times)
                    and np.array_equal(clusters, reference_clusters)
                ),
                "n_spikes": [int(reference_times.size), int(times.size)],
                "n_clusters": [int(np.unique(reference_clusters).size), int(np.unique(clusters).size)],
                "spike_time_mismatches": int(np.count_nonzero(times != reference_times)) if same_shape else None,
            }
        )
    return {"identical": all(row["identical"] for row in rows), "pairs": rows}


def _torch_in_forked_step(device: str) -> dict[str, Any]:
    """Runs in the forked process: a matrix product on ``device``, and which preloaded modules it inherited."""
    import os

    import torch

    from ks_platform.core.names import STEP_PRELOAD_MODULES

    inherited = [name for name in STEP_PRELOAD_MODULES if name in sys.modules]
    x = torch.ones((256, 256), device=device)
    return {"pid": os.getpid(), "device": str((x @ x).device), "value": float((x @ x)[0, 0]), "inherited": inherited}


def forked_step_check(device: str) -> dict[str, Any]:
    """What the default executor does (``execution/step_processes.py``): fork a step from a forkserver that imported
    torch and Kilosort, then use ``device`` in the step. Run before this process touches the device."""
    import multiprocessing

    from ks_platform.core.names import STEP_PRELOAD_MODULES

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(STEP_PRELOAD_MODULES))
    started = time.perf_counter()
    try:
        with context.Pool(1) as pool:
            seen = pool.apply(_torch_in_forked_step, (device,))
    except Exception as error:  # reported in the JSON; the run is then not accepted
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
    ok = seen["value"] == 256.0 and seen["device"].split(":")[0] == device and "torch" in seen["inherited"]
    return {"ok": ok, "seconds": round(time.perf_counter() - started, 2), **seen}


def run(mode: str, out: Path, duration_s: float | None = None) -> Report:
    from ks_platform.core.doctor import SORT_MODULES, as_records, run_checks

    plan = PLANS[mode]
    if duration_s is not None:
        plan.duration_s = duration_s
    started = time.perf_counter()
    report = Report(
        mode=mode, host={"python": sys.version.split()[0], "machine": platform.machine(), "node": platform.node()}
    )
    out.mkdir(parents=True, exist_ok=True)
    report.doctor = as_records(run_checks(out, backend=plan.backend, modules=SORT_MODULES))  # no Dagster on the node
    report.forked_step = forked_step_check(plan.backend)

    t0 = time.perf_counter()
    session = make_session(out / "session" / "accept_g0", plan.duration_s, plan.n_channels, plan.n_units)
    report.session = {
        "duration_s": plan.duration_s,
        "n_channels": plan.n_channels,
        "n_units": plan.n_units,
        "generate_seconds": round(time.perf_counter() - t0, 2),
    }
    t0 = time.perf_counter()
    base = ingest(session, out / "base")
    report.session["ingest_seconds"] = round(time.perf_counter() - t0, 2)

    def over_budget(what: str) -> bool:
        if time.perf_counter() - started > plan.budget_s:
            report.skipped.append(f"{what}: the run passed its {plan.budget_s:.0f} s budget")
            return True
        return False

    for index in range(plan.repeats):
        if index and over_budget(f"repeat {index + 1}"):
            break
        store = copy_inputs(base, out / f"run{index + 1}")
        report.sorts.append(sort_once(session, store, plan.backend, f"run{index + 1}"))
    if len(report.sorts) > 1:
        report.determinism = compare_sortings([Path(s["sorting_dir"]) for s in report.sorts])

    if plan.capped and not over_budget("1 GiB capped rerun"):
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(CAP_BYTES / total, 0)
        try:
            result = sort_once(session, copy_inputs(base, out / "capped"), plan.backend, "capped")
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, 0)
        report.capped = {"cap_bytes": CAP_BYTES, **result}

    if plan.cpu_excerpt_s and not over_budget("CPU vs GPU excerpt"):
        excerpt = make_session(out / "excerpt" / "excerpt_g0", plan.cpu_excerpt_s, plan.n_channels, plan.n_units)
        excerpt_base = ingest(excerpt, out / "excerpt_base")
        gpu = sort_once(excerpt, copy_inputs(excerpt_base, out / "excerpt_gpu"), plan.backend, "excerpt-gpu")
        cpu = sort_once(excerpt, copy_inputs(excerpt_base, out / "excerpt_cpu"), "cpu", "excerpt-cpu")
        report.cpu_vs_gpu = {
            "recording_seconds": plan.cpu_excerpt_s,
            "gpu_sort_seconds": gpu["sort_seconds"],
            "cpu_sort_seconds": cpu["sort_seconds"],
            "gpu_speedup": round(cpu["sort_seconds"] / gpu["sort_seconds"], 2) if gpu["sort_seconds"] else None,
            "realtime_factor_gpu": round(plan.cpu_excerpt_s / gpu["sort_seconds"], 2) if gpu["sort_seconds"] else None,
            "realtime_factor_cpu": round(plan.cpu_excerpt_s / cpu["sort_seconds"], 2) if cpu["sort_seconds"] else None,
        }

    sorts = report.sorts + ([report.capped] if report.capped else [])
    report.ok = bool(sorts) and all(s["ground_truth_passed"] for s in sorts) and report.forked_step.get("ok", False)
    report.imported_distributions = imported_distributions()
    report.total_seconds = round(time.perf_counter() - started, 2)
    return report


def imported_distributions() -> list[str]:
    """The installed distributions behind every module imported so far."""
    import importlib.metadata

    owners = importlib.metadata.packages_distributions()
    return sorted({dist for name in list(sys.modules) for dist in owners.get(name.split(".")[0], [])})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(PLANS), default="gpu")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--duration", type=float, default=None, help="recording seconds (default: the mode's)")
    args = parser.parse_args(argv)
    report = run(args.mode, args.out, args.duration)
    path = args.out / "acceptance.json"
    path.write_text(json.dumps(asdict(report), indent=2, default=str))
    hidden = ("doctor", "sorts", "imported_distributions")
    print(json.dumps({k: v for k, v in asdict(report).items() if k not in hidden}, indent=2, default=str))
    for row in report.sorts:
        print(
            f"{row['label']}: {row['sort_seconds']} s on {row['device']}, {row['n_units']} units, well detected "
            f"{row['well_detected']}"
        )
    print(f"written: {path}\n{'ACCEPTED' if report.ok else 'NOT ACCEPTED'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

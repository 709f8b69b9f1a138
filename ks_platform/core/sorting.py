"""Run Kilosort 4 on a recording binary: device choice, batch size, OOM retries, outputs written atomically."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ks_platform.core.conversion import RecordingBinary
from ks_platform.core.hardware import MIN_BATCH_SIZE, BackendInfo, MemoryPlan, detect_backend, plan_memory
from ks_platform.core.lineage import lineage_record
from ks_platform.core.names import BATCH_SIZE_ENV, EFFECTIVE_SETTINGS_FILE, LINEAGE_FILE, SUMMARY_FILE
from ks_platform.core.progress import KilosortProgress
from ks_platform.core.settings import EffectiveSettings, settings_hash
from ks_platform.core.store import atomic_directory, read_json, write_json_atomic

#: Kilosort seeds numpy and torch with 1 before drift correction (run_kilosort._sort); recorded as facts.
KILOSORT_SEEDS = {"numpy": 1, "torch": 1, "torch_cuda": 1}
RUNTIME_KEYS = (
    "runtime_preproc",
    "runtime_drift",
    "runtime_st0",
    "runtime_clu0",
    "runtime_st",
    "runtime_clu",
    "runtime_merge",
    "runtime_postproc",
    "runtime",
)

Log = Callable[[str], None]


def kilosort_sorter_record() -> dict[str, str]:
    """The sorter entry of a Kilosort 4 sorting's lineage (the native path: ``kilosort.run_kilosort``)."""
    from importlib import metadata

    return {"name": "kilosort4", "label": "Kilosort 4", "version": metadata.version("kilosort"), "runner": "kilosort"}


def kilosort_seeds(settings: dict[str, Any]) -> dict[str, int]:
    """The seeds of a sort: Kilosort's fixed numpy/torch seeds and the clustering seed of the settings."""
    from ks_platform.core.settings import kilosort_settings_table

    return {
        **KILOSORT_SEEDS,
        "cluster_init_seed": int(
            settings.get("cluster_init_seed", kilosort_settings_table()["cluster_init_seed"]["default"])
        ),
    }


@dataclass
class SortAttempt:
    batch_size: int
    clear_cache: bool
    outcome: str
    seconds: float


@dataclass
class SortResult:
    """Where the sorting is and the facts about it."""

    output_dir: Path
    n_units: int
    n_good_units: int
    n_spikes: int
    seconds: float
    backend: dict[str, Any]
    params_hash: str
    settings: dict[str, Any]
    attempts: list[dict[str, Any]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    input_checksum: str = ""
    output_checksum: str = ""
    #: The sorter that made it (``core/sorters.py``); summaries written before there was a choice are Kilosort 4's.
    sorter: str = "kilosort4"

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["output_dir"] = str(self.output_dir)
        return payload


class _ForwardHandler(logging.Handler):
    def __init__(self, log: Log, progress: KilosortProgress | None = None) -> None:
        super().__init__(level=logging.INFO)
        self._log = log
        self._progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if self._progress is not None:
                self._progress.see_log(message)
            if message.strip(" -"):  # Kilosort's blank and dashed separator lines say nothing in a run's log
                self._log(f"kilosort: {message}")
        except Exception:  # a broken log sink must not break the sort
            pass


@contextmanager
def forward_kilosort_logs(log: Log | None, progress: KilosortProgress | None = None) -> Iterator[None]:
    """Send Kilosort's INFO logs to ``log`` for the duration (Kilosort clears its own handlers at the end), and its
    stage headers to ``progress``."""
    if log is None:
        yield
        return
    handler = _ForwardHandler(log, progress)
    logger = logging.getLogger("kilosort")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA/HIP out-of-memory (OutOfMemoryError, or RuntimeError saying so) and torch's CPU allocation failure."""
    import torch

    text = str(exc).lower()
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def sorting_checksum(output_dir: Path) -> str:
    """Hash of the spike trains (times + clusters): the sorting's data version."""
    import xxhash

    hasher = xxhash.xxh3_128()
    for name in ("spike_times.npy", "spike_clusters.npy"):
        hasher.update(np.ascontiguousarray(np.load(output_dir / name)).tobytes())
    return hasher.hexdigest()


def run_kilosort_once(
    binary: RecordingBinary,
    ks_probe: dict,
    settings: dict[str, Any],
    results_dir: Path,
    device: str,
    clear_cache: bool,
    progress_bar: KilosortProgress | None = None,
) -> dict:
    """One plain ``kilosort.run_kilosort`` call; returns Kilosort's ops. ``progress_bar`` receives Kilosort's loop
    percentages (``emit``)."""
    import torch
    from kilosort import run_kilosort

    ops, *_ = run_kilosort(
        settings=dict(settings),
        probe={k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in ks_probe.items()},
        filename=binary.path,
        results_dir=results_dir,
        data_dtype=binary.dtype,
        device=torch.device(device),
        clear_cache=clear_cache,
        progress_bar=progress_bar,
    )
    return ops


def memory_plan_for(info: BackendInfo, settings: EffectiveSettings, n_channels: int) -> MemoryPlan:
    """:func:`plan_memory` with the user's layers and the executor's planned batch (``KS_PLATFORM_BATCH_SIZE``)."""
    user_batch = next(
        (layer["batch_size"] for layer in reversed(list(settings.layers.values())) if "batch_size" in layer), None
    )
    user_clear = next(
        (layer["clear_cache"] for layer in reversed(list(settings.layers.values())) if "clear_cache" in layer), None
    )
    planned = os.environ.get(BATCH_SIZE_ENV, "").strip()  # set by the placing executor (ks_platform.execution)
    return plan_memory(info, n_channels, user_batch, user_clear, int(planned) if planned.isdigit() else None)


def sort_recording(
    binary: RecordingBinary,
    ks_probe: dict,
    settings: EffectiveSettings,
    output_dir: Path,
    backend: str = "auto",
    log: Log | None = None,
    extra_lineage: dict[str, Any] | None = None,
    verify: Callable[[], None] | None = None,
) -> SortResult:
    """Sort ``binary`` into ``output_dir`` (atomically), retrying with smaller batches on GPU OOM. ``verify`` runs
    last, before anything is published: it raises when the input changed while Kilosort ran.

    ``batch_size``/``clear_cache`` follow :func:`ks_platform.core.hardware.plan_memory` (a user's
    value always wins); each attempt, failed or not, is recorded in the summary and the lineage.
    """
    log = log or (lambda message: None)
    info: BackendInfo = detect_backend(backend)
    requested = dict(settings.settings)
    plan = memory_plan_for(info, settings, ks_probe["n_chan"])
    requested["batch_size"] = plan.batch_size
    requested.pop("clear_cache", None)
    clear_cache = plan.clear_cache
    log(f"batch_size {plan.batch_size}, clear_cache {clear_cache}: {plan.reason} ({info.backend} {info.device_name})")
    log(
        f"sorting {binary.path} ({binary.n_samples / binary.sampling_frequency:.1f} s, {ks_probe['n_chan']} channels) "
        f"on {info.backend} {info.device_name}"
    )
    attempts: list[SortAttempt] = []
    started = time.perf_counter()
    progress = KilosortProgress(log)
    with atomic_directory(output_dir) as staged, forward_kilosort_logs(log, progress):
        while True:
            attempt_start = time.perf_counter()
            batch = int(requested.get("batch_size", 60_000))
            try:
                ops = run_kilosort_once(binary, ks_probe, requested, staged, info.device, clear_cache, progress)
            except Exception as exc:
                if not is_out_of_memory(exc) or batch <= MIN_BATCH_SIZE:
                    raise
                attempts.append(
                    SortAttempt(
                        batch,
                        clear_cache,
                        f"out of memory: {str(exc)[:200]}",
                        round(time.perf_counter() - attempt_start, 2),
                    )
                )
                requested["batch_size"] = max(MIN_BATCH_SIZE, batch // 2)
                clear_cache = True
                log(
                    f"GPU out of memory at batch_size {batch}; retrying with batch_size {requested['batch_size']} and "
                    "clear_cache"
                )
                _release_gpu_memory()
                for leftover in staged.iterdir():
                    if leftover.is_file():
                        leftover.unlink()
                continue
            attempts.append(SortAttempt(batch, clear_cache, "ok", round(time.perf_counter() - attempt_start, 2)))
            break
        result = _summarize(
            staged, output_dir, ops, info, requested, settings, attempts, binary, time.perf_counter() - started
        )
        write_json_atomic(
            staged / EFFECTIVE_SETTINGS_FILE,
            {
                **settings.record(),
                "as_run": requested,
                "clear_cache": clear_cache,
                "as_run_hash": settings_hash(requested),
            },
        )
        write_json_atomic(staged / SUMMARY_FILE, result.to_json())
        write_json_atomic(
            staged / LINEAGE_FILE,
            lineage_record(
                backend=info.record(),
                params_hash=settings.params_hash,
                input_checksum=binary.checksum,
                output_checksum=result.output_checksum,
                seeds=kilosort_seeds(requested),
                sorter=kilosort_sorter_record(),
                stage_seconds=result.stage_seconds,
                attempts=result.attempts,
                memory_plan={"batch_size": plan.batch_size, "clear_cache": plan.clear_cache, "reason": plan.reason},
                sort_seconds=result.seconds,
                **(extra_lineage or {}),
            ),
        )
        if verify is not None:
            verify()
    log(
        f"sorted: {result.n_units} units ({result.n_good_units} good), {result.n_spikes} spikes in "
        f"{result.seconds:.1f} s"
    )
    return result


def _release_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _summarize(
    staged: Path,
    final: Path,
    ops: dict,
    info: BackendInfo,
    requested: dict,
    settings: EffectiveSettings,
    attempts: list[SortAttempt],
    binary: RecordingBinary,
    seconds: float,
) -> SortResult:
    import pandas as pd

    clusters = np.load(staged / "spike_clusters.npy").ravel()
    labels = pd.read_csv(staged / "cluster_KSLabel.tsv", sep="\t")
    stage_seconds = {key.removeprefix("runtime_"): round(float(ops[key]), 3) for key in RUNTIME_KEYS if key in ops}
    return SortResult(
        output_dir=final,
        n_units=int(len(np.unique(clusters))),
        n_good_units=int((labels["KSLabel"] == "good").sum()),
        n_spikes=int(clusters.size),
        seconds=round(seconds, 2),
        backend=info.record(),
        params_hash=settings.params_hash,
        settings=requested,
        attempts=[asdict(a) for a in attempts],
        stage_seconds=stage_seconds,
        input_checksum=binary.checksum,
        output_checksum=sorting_checksum(staged),
    )


def load_sort_result(output_dir: Path) -> SortResult:
    payload = read_json(output_dir / SUMMARY_FILE)
    payload["output_dir"] = Path(payload["output_dir"])
    return SortResult(**payload)

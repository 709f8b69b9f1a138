"""Compute backends (CUDA, ROCm, MPS, CPU) and the GPU-memory rule for Kilosort's batch size."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

#: Kilosort's default batch (2 s at 30 kHz) and the smallest batch we go down to on retries.
DEFAULT_BATCH_SIZE = 60_000
MIN_BATCH_SIZE = 3_000
#: Memory model behind :func:`recommended_batch_size` (see its docstring).
FIXED_OVERHEAD_BYTES = 300 * 1024**2
BYTES_PER_SAMPLE_CHANNEL = 4 * 100


@dataclass(frozen=True)
class BackendInfo:
    """What torch can compute on here."""

    backend: str  # cuda | rocm | mps | cpu
    device: str  # torch device string, e.g. "cuda:0"
    device_name: str
    total_memory_bytes: int | None
    free_memory_bytes: int | None
    torch_version: str
    cuda_version: str | None
    hip_version: str | None
    driver_note: str = ""

    def record(self) -> dict[str, Any]:
        return asdict(self)


def detect_backend(preferred: str = "auto") -> BackendInfo:
    """Detect the backend (``auto``), or honour an explicit ``cpu``/``cuda[:N]``/``rocm[:N]``/``mps``."""
    import torch

    hip = getattr(torch.version, "hip", None)
    cuda = torch.version.cuda
    choice = preferred.lower()
    gpu_ok = torch.cuda.is_available()
    if choice == "auto":
        if gpu_ok:
            choice = "rocm" if hip else "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            choice = "mps"
        else:
            choice = "cpu"
    if choice.startswith(("cuda", "rocm")):
        if not gpu_ok:
            raise RuntimeError(f"backend {preferred!r} was requested but torch {torch.__version__} sees no GPU (cuda={cuda}, hip={hip})")
        index = int(choice.split(":")[1]) if ":" in choice else 0
        free, total = torch.cuda.mem_get_info(index)
        return BackendInfo(
            backend="rocm" if hip else "cuda",
            device=f"cuda:{index}",
            device_name=torch.cuda.get_device_name(index),
            total_memory_bytes=int(total),
            free_memory_bytes=int(free),
            torch_version=torch.__version__,
            cuda_version=cuda,
            hip_version=hip,
            driver_note=f"HSA_OVERRIDE_GFX_VERSION={os.environ['HSA_OVERRIDE_GFX_VERSION']}" if "HSA_OVERRIDE_GFX_VERSION" in os.environ else "",
        )
    if choice == "mps":
        return BackendInfo("mps", "mps", "Apple MPS", None, None, torch.__version__, cuda, hip)
    if choice != "cpu":
        raise ValueError(f"unknown backend {preferred!r}: use auto, cpu, cuda[:N], rocm[:N] or mps")
    return BackendInfo("cpu", "cpu", _cpu_name(), _total_ram(), None, torch.__version__, cuda, hip)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"


def _total_ram() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def recommended_batch_size(free_memory_bytes: int | None, n_channels: int, default: int = DEFAULT_BATCH_SIZE) -> int:
    """Largest batch that fits: ``(free - 300 MiB) / (n_channels × 400 B)``, clamped to [3 000, 60 000].

    400 B per sample-channel is ~100 float32 working copies (filtering, whitening, template
    convolutions). The rule reproduces the lab's hand-tuning: a 1 GB GPU with 384 channels gives ~5 000;
    8 GB gives ~49 000; 16 GB and more keep Kilosort's default 60 000. ``None`` (CPU) keeps the default.
    """
    if free_memory_bytes is None:
        return default
    usable = max(free_memory_bytes - FIXED_OVERHEAD_BYTES, 0)
    fit = usable // (max(n_channels, 1) * BYTES_PER_SAMPLE_CHANNEL)
    rounded = int(fit // 1000 * 1000)
    return int(min(default, max(MIN_BATCH_SIZE, rounded)))

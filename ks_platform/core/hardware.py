"""Compute backends (CUDA, ROCm, MPS, CPU), the GPU-memory rule for Kilosort's batch size, and ROCm hints.

The batch-size rule is :func:`plan_memory`'s; on an out-of-memory error the sort is retried with half the batch and
``clear_cache`` down to 3 000.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
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
    driver_version: str | None = None
    gfx_arch: str | None = None

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
            raise RuntimeError(
                f"backend {preferred!r} was requested but torch {torch.__version__} sees no GPU (cuda={cuda}, "
                f"hip={hip})"
            )
        index = int(choice.split(":")[1]) if ":" in choice else 0
        free, total = torch.cuda.mem_get_info(index)
        free = min(free, _process_memory_cap(torch, index, total))
        arch = str(getattr(torch.cuda.get_device_properties(index), "gcnArchName", "") or "").split(":")[0] or None
        return BackendInfo(
            backend="rocm" if hip else "cuda",
            device=f"cuda:{index}",
            device_name=torch.cuda.get_device_name(index),
            total_memory_bytes=int(total),
            free_memory_bytes=int(free),
            torch_version=torch.__version__,
            cuda_version=cuda,
            hip_version=hip,
            driver_note=f"HSA_OVERRIDE_GFX_VERSION={os.environ['HSA_OVERRIDE_GFX_VERSION']}"
            if "HSA_OVERRIDE_GFX_VERSION" in os.environ
            else "",
            driver_version=gpu_driver_version(),
            gfx_arch=arch if hip else None,
        )
    if choice == "mps":
        return BackendInfo("mps", "mps", "Apple MPS", None, None, torch.__version__, cuda, hip)
    if choice != "cpu":
        raise ValueError(f"unknown backend {preferred!r}: use auto, cpu, cuda[:N], rocm[:N] or mps")
    return BackendInfo("cpu", "cpu", _cpu_name(), _total_ram(), None, torch.__version__, cuda, hip)


def _process_memory_cap(torch: Any, index: int, total: int) -> int:
    """What this process may still allocate under ``torch.cuda.set_per_process_memory_fraction`` (a shared GPU)."""
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    fraction = float(getter(index)) if getter else 1.0
    if fraction >= 1.0:
        return total
    return max(int(total * fraction) - int(torch.cuda.memory_reserved(index)), 0)


def gpu_driver_version() -> str | None:
    """The kernel driver's version: NVIDIA from ``/proc/driver/nvidia/version``, AMD from ``/sys/module/amdgpu/version``."""
    nvidia = Path("/proc/driver/nvidia/version")
    try:
        if nvidia.is_file():
            match = re.search(r"Kernel Module(?: for [\w-]+)?\s+([\d.]+)", nvidia.read_text())
            return f"nvidia {match.group(1)}" if match else nvidia.read_text().splitlines()[0].strip()
        amd = Path("/sys/module/amdgpu/version")
        if amd.is_file():
            return f"amdgpu {amd.read_text().strip()}"
    except OSError:
        return None
    return None


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
    """Largest batch that fits: ``(free - 300 MiB) / (n_channels × 400 B)``, rounded down to 1 000, clamped to [3 000, 60 000].

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


@dataclass(frozen=True)
class MemoryPlan:
    """Kilosort's ``batch_size`` and ``clear_cache`` for one sort, and which rule chose them."""

    batch_size: int
    clear_cache: bool
    reason: str


def plan_memory(
    info: BackendInfo,
    n_channels: int,
    user_batch_size: int | None = None,
    user_clear_cache: bool | None = None,
    planned_batch_size: int | None = None,
) -> MemoryPlan:
    """The batch-size rule, in order:

    1. ``batch_size`` / ``clear_cache`` set in a parameter layer (platform, probe type, session file) always win.
    2. Else a batch size planned by the placing executor for the GPU it picked (env ``KS_PLATFORM_BATCH_SIZE``).
    3. Else, on a GPU: ``batch = (free − 300 MiB) / (channels × 400 B)``, rounded down to a multiple of 1 000 and
       clamped to [3 000, 60 000]. ``clear_cache`` (unless set by the user) is on when the GPU's free memory is too
       small for Kilosort's default batch by that formula, whoever chose the batch size.
    4. CPU and MPS: Kilosort's defaults (batch 60 000, no cache clearing).
    """
    gpu = info.backend in ("cuda", "rocm")
    if user_batch_size is not None:
        batch, reason = int(user_batch_size), "batch_size set in the parameter set"
    elif planned_batch_size is not None and gpu:
        batch, reason = (
            max(MIN_BATCH_SIZE, int(planned_batch_size)),
            "batch_size planned by the executor for the placed GPU",
        )
    elif gpu and info.free_memory_bytes is not None:
        batch = recommended_batch_size(info.free_memory_bytes, n_channels)
        reason = f"batch_size for {info.free_memory_bytes / 1024**3:.2f} GiB free and {n_channels} channels"
    else:
        batch, reason = DEFAULT_BATCH_SIZE, f"Kilosort's default batch_size on {info.backend}"
    tight = (
        gpu
        and info.free_memory_bytes is not None
        and recommended_batch_size(info.free_memory_bytes, n_channels) < DEFAULT_BATCH_SIZE
    )
    clear_cache = bool(user_clear_cache) if user_clear_cache is not None else tight
    return MemoryPlan(batch, clear_cache, reason)


_GFX = re.compile(r"^gfx(\d+)([0-9a-f])([0-9a-f])$")


def parse_gfx(name: str) -> tuple[int, int, int] | None:
    """``gfx1035`` → (10, 3, 5), ``gfx90c`` → (9, 0, 12); ``None`` when it is not a gfx target name."""
    match = _GFX.match(name.split(":")[0].strip().lower())
    if not match:
        return None
    return int(match.group(1)), int(match.group(2), 16), int(match.group(3), 16)


def gfx_override_hint(
    device_arch: str | None, compiled_archs: list[str], current_override: str | None = None
) -> str | None:
    """The ``HSA_OVERRIDE_GFX_VERSION`` advice for an AMD GPU that torch's ROCm build was not compiled for.

    ``device_arch`` is the GPU's ``gcnArchName`` (e.g. ``gfx1035``), ``compiled_archs`` torch's
    ``torch.cuda.get_arch_list()``, ``current_override`` the variable's value if set. Returns ``None`` when
    the device is supported; otherwise the variable and value to set, picked from the compiled targets of
    the same family (same major and minor version, lowest stepping), e.g. ``gfx1035`` with ``gfx1030``
    compiled → ``10.3.0``.
    """
    if not device_arch:
        return None
    device = parse_gfx(device_arch)
    compiled = {parse_gfx(a): a.split(":")[0] for a in compiled_archs if parse_gfx(a)}
    if device is None or device in compiled:
        return None
    already = (
        f" (HSA_OVERRIDE_GFX_VERSION={current_override} is set but does not name one of them)"
        if current_override
        else ""
    )
    family = sorted(v for v in compiled if v[:2] == device[:2])
    if family:
        target = family[0]
        value = f"{target[0]}.{target[1]}.{target[2]}"
        return (
            f"{device_arch.split(':')[0]} is not among the targets torch was built for "
            f"({', '.join(sorted(compiled.values()))}){already}; "
            f"set HSA_OVERRIDE_GFX_VERSION={value} to run it as {compiled[target]} (same family)"
        )
    return (
        f"{device_arch.split(':')[0]} is not among the targets torch was built for "
        f"({', '.join(sorted(compiled.values()))}){already} and none is "
        "of the same family; HSA_OVERRIDE_GFX_VERSION cannot help reliably: use a ROCm build of torch that lists it, "
        "or sort on CPU"
    )

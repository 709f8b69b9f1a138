"""Self-check of a host before real work: imports, compute backend with a tiny kernel, disk, Docker."""

from __future__ import annotations

import importlib
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

REQUIRED_MODULES = ("torch", "kilosort", "spikeinterface", "probeinterface", "phylib", "dagster", "xxhash")
#: What ``ks-platform sort`` alone needs (a node that sorts without Dagster, e.g. bench/gpu_acceptance.sh).
SORT_MODULES = tuple(name for name in REQUIRED_MODULES if name != "dagster")
MIN_FREE_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True


def _imports(modules: tuple[str, ...]) -> list[Check]:
    checks = []
    for name in modules:
        try:
            module = importlib.import_module(name)
            checks.append(Check(f"import {name}", True, getattr(module, "__version__", "ok")))
        except Exception as exc:  # report any import failure, whatever its type
            checks.append(
                Check(f"import {name}", False, f"{type(exc).__name__}: {exc}. Fix: reinstall with `make install`")
            )
    return checks


def _rocm_target(gfx_arch: str | None) -> Check:
    """Is the AMD GPU's gfx target one torch was built for? If not, which ``HSA_OVERRIDE_GFX_VERSION`` to set."""
    import os

    import torch

    from ks_platform.core.hardware import gfx_override_hint

    compiled = list(torch.cuda.get_arch_list())
    hint = gfx_override_hint(gfx_arch, compiled, os.environ.get("HSA_OVERRIDE_GFX_VERSION"))
    return Check(
        "ROCm gfx target",
        hint is None,
        f"{gfx_arch} is built into torch"
        if hint is None
        else f"{hint}. Fix: export that variable before starting Dagster/the container",
    )


def _backend(preferred: str) -> list[Check]:
    try:
        from ks_platform.core.hardware import detect_backend

        info = detect_backend(preferred)
    except Exception as exc:
        hint = ""
        try:
            import torch

            if getattr(torch.version, "hip", None):
                hint = (
                    " On AMD GPUs whose gfx version ROCm does not list, set HSA_OVERRIDE_GFX_VERSION (e.g. 10.3.0 "
                    "for RDNA2 laptop chips)."
                )
        except ImportError:
            pass
        return [Check("compute backend", False, f"{exc}.{hint}")]
    checks = [
        Check(
            "compute backend",
            True,
            f"{info.backend} {info.device_name} torch {info.torch_version} cuda {info.cuda_version} hip "
            f"{info.hip_version} driver {info.driver_version}",
        )
    ]
    if info.backend == "rocm":
        checks.append(_rocm_target(info.gfx_arch))
    try:
        import torch

        x = torch.randn(1, 4, 2048, generator=torch.Generator().manual_seed(0))
        w = torch.randn(8, 4, 61, generator=torch.Generator().manual_seed(1))
        reference = torch.nn.functional.conv1d(x, w)
        result = torch.nn.functional.conv1d(x.to(info.device), w.to(info.device)).cpu()
        close = torch.allclose(reference, result, atol=1e-3, rtol=1e-3)
        memory = f", {info.free_memory_bytes / 1024**3:.1f} GiB free" if info.free_memory_bytes else ""
        checks.append(
            Check(
                "kernel on device",
                bool(close),
                f"conv1d on {info.device} {'matches' if close else 'DIFFERS FROM'} CPU{memory}",
            )
        )
    except Exception as exc:
        checks.append(Check("kernel on device", False, f"{type(exc).__name__}: {exc}"))
    return checks


#: Programs Kilosort runs itself (``kilosort.utils.log_thread_count`` calls ``ps``); a slim image without them
#: installs fine and then fails minutes into the first sort.
REQUIRED_PROGRAMS = ("ps",)


def _programs() -> list[Check]:
    return [
        Check(
            f"program {name}",
            shutil.which(name) is not None,
            shutil.which(name)
            or "not on PATH: Kilosort calls it during sorting. Fix: install it (Debian: apt-get install procps)",
        )
        for name in REQUIRED_PROGRAMS
    ]


def _disk(store_root: Path) -> Check:
    probe = store_root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    return Check(
        "free disk in store",
        free >= MIN_FREE_BYTES,
        f"{free / 1024**3:.1f} GiB free at {probe} (need ≥ {MIN_FREE_BYTES / 1024**3:.0f} GiB)",
    )


def _docker(url: str) -> Check:
    try:
        import docker

        client = docker.DockerClient(base_url=url, timeout=5)
        version = client.version()
        return Check("docker engine", True, f"{url}: Docker {version.get('Version')}")
    except Exception as exc:
        return Check(
            "docker engine", False, f"{url}: {type(exc).__name__}: {exc}. Fix: start dockerd or correct the URL"
        )


def _landing(landing_roots: dict[str, Path], store_root: Path) -> Check:
    from ks_platform.core.discovery import landing_root_problems

    problems = landing_root_problems(landing_roots, store_root)
    detail = "; ".join(problems) or f"{len(landing_roots)} landing root(s) readable: " + ", ".join(
        f"{n}={p}" for n, p in sorted(landing_roots.items())
    )
    return Check("landing roots", not problems, detail, required=False)


def run_checks(
    store_root: Path,
    backend: str = "auto",
    docker_url: str | None = None,
    landing_roots: dict[str, Path] | None = None,
    modules: tuple[str, ...] = REQUIRED_MODULES,
) -> list[Check]:
    """All checks; Docker only when a URL is configured, landing roots when given."""
    checks = _imports(modules)
    checks += _programs()
    checks += _backend(backend)
    checks.append(_disk(store_root))
    if landing_roots is not None:
        checks.append(_landing(landing_roots, store_root))
    if docker_url:
        checks.append(_docker(docker_url))
    return checks


def report(checks: list[Check]) -> str:
    return "\n".join(f"[{'ok' if c.ok else 'FAIL' if c.required else 'warn'}] {c.name}: {c.detail}" for c in checks)


def healthy(checks: list[Check]) -> bool:
    return all(c.ok or not c.required for c in checks)


def as_records(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]

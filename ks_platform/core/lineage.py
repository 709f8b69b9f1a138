"""How a result was made: versions, code commit, host, device, container image, hashes, seeds."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import ks_platform
from ks_platform.core.names import (
    ENVIRONMENT_KIND_ENV,
    GIT_COMMIT_ENV,
    IMAGE_DIGEST_ENV,
    IMAGE_ENV,
    REQUESTED_GRES_ENV,
)

TRACKED_PACKAGES = (
    "kilosort",
    "torch",
    "spikeinterface",
    "numpy",
    "probeinterface",
    "phylib",
    "dagster",
    "mountainsort5",
    "hdbscan",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"ks_platform": ks_platform.__version__}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the ks_platform checkout, or the one baked into the image."""
    baked = os.environ.get(GIT_COMMIT_ENV)
    if baked:
        return baked
    repo = Path(ks_platform.__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def container_image() -> dict[str, str | None]:
    return {"image": os.environ.get(IMAGE_ENV), "image_digest": os.environ.get(IMAGE_DIGEST_ENV)}


@lru_cache(maxsize=1)
def environment_hash() -> str:
    """``sha256:…`` of this Python's installed distributions (``name==version``, sorted: ``pip freeze``'s content)."""
    import hashlib

    pins = sorted({f"{(dist.metadata['Name'] or '').lower()}=={dist.version}" for dist in metadata.distributions()})
    return "sha256:" + hashlib.sha256("\n".join(pins).encode()).hexdigest()


def slurm_job() -> dict[str, Any]:
    """The SLURM job this process runs in (job id, node, partition, GPUs, GRES), or {} outside SLURM."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return {}
    facts: dict[str, Any] = {
        "job_id": job_id,
        "node": os.environ.get("SLURMD_NODENAME"),
        "partition": os.environ.get("SLURM_JOB_PARTITION"),
        "cluster": os.environ.get("SLURM_CLUSTER_NAME"),
        "gpus": os.environ.get("SLURM_JOB_GPUS"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "rocr_visible_devices": os.environ.get("ROCR_VISIBLE_DEVICES"),
        "gres_requested": os.environ.get(REQUESTED_GRES_ENV),
    }
    try:  # what slurmctld allocated: `scontrol -d show job` reports JOB_GRES and the node's GRES with its indices
        command = ["scontrol", "-d", "show", "job", "-o", job_id]
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
        shown = dict(part.split("=", 1) for part in out.stdout.split() if "=" in part)
        facts["gres_granted"] = shown.get("JOB_GRES") if shown.get("JOB_GRES") not in (None, "(null)") else None
        facts["gres_on_node"] = shown.get("GRES") if shown.get("GRES") not in (None, "(null)") else None
    except (OSError, subprocess.SubprocessError):
        facts["gres_granted"] = facts["gres_on_node"] = None  # not reported: never claimed
    kind = os.environ.get(ENVIRONMENT_KIND_ENV, "venv")
    return {"slurm": facts, "environment": {"kind": kind, "prefix": sys.prefix, "lock_hash": environment_hash()}}


def host_facts() -> dict[str, Any]:
    return {"host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version()}


def lineage_record(**extra: Any) -> dict[str, Any]:
    """Everything known about the environment, plus the caller's facts (device, hashes, seeds…)."""
    return {
        "versions": package_versions(),
        "git_commit": git_commit(),
        **container_image(),
        **host_facts(),
        **slurm_job(),
        **extra,
    }

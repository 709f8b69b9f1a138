"""How a result was made: versions, code commit, host, device, container image, hashes, seeds."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import ks_platform

TRACKED_PACKAGES = ("kilosort", "torch", "spikeinterface", "numpy", "probeinterface", "phylib", "dagster")
#: Set by the container images (docker/) so results name the image they ran in.
IMAGE_ENV = "KS_PLATFORM_IMAGE"
IMAGE_DIGEST_ENV = "KS_PLATFORM_IMAGE_DIGEST"


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
    baked = os.environ.get("KS_PLATFORM_GIT_COMMIT")
    if baked:
        return baked
    repo = Path(ks_platform.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def container_image() -> dict[str, str | None]:
    return {"image": os.environ.get(IMAGE_ENV), "image_digest": os.environ.get(IMAGE_DIGEST_ENV)}


def host_facts() -> dict[str, Any]:
    return {"host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version()}


def lineage_record(**extra: Any) -> dict[str, Any]:
    """Everything known about the environment, plus the caller's facts (device, hashes, seeds…)."""
    return {
        "versions": package_versions(),
        "git_commit": git_commit(),
        **container_image(),
        **host_facts(),
        **extra,
    }

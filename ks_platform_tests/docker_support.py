"""A real Docker engine and the ``ks-platform:cpu`` image for tests (built offline once, then cached by Docker).

``docker_engine()`` starts dockerd when needed (scripts/start_docker.sh; root on CI) and returns a docker-py
client; ``cpu_image()`` builds the local base + cpu image (docker/build_images.sh: a fresh machine takes a few
minutes, later calls only rebuild what changed) and returns its tag. Both raise with the script's output when
they cannot: a missing engine is a failure, not a skip.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import docker

REPO = Path(__file__).resolve().parent.parent
CPU_IMAGE = "ks-platform:cpu"


def _run(script: str, *args: str, timeout: float) -> str:
    done = subprocess.run(["bash", str(REPO / script), *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed (rc {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


@functools.cache
def docker_engine() -> docker.DockerClient:
    _run("scripts/start_docker.sh", timeout=600)
    client = docker.from_env(timeout=120)
    client.ping()
    return client


@functools.cache
def cpu_image() -> str:
    docker_engine()
    _run("docker/build_images.sh", "cpu", timeout=2400)
    return CPU_IMAGE


def image_id(tag: str) -> str:
    return docker_engine().images.get(tag).id

"""What the executors' tests share (test_executor.py, test_executor_remote.py, test_slurm.py, test_slurm_orphan.py).

``pg_instance``: a Dagster instance on the test PostgreSQL server (the module that uses it also imports the
``postgres_url`` session fixture of ``ks_platform_tests.postgres_support``); ``engine_and_cpu_image``: the Docker engine
and the ``ks-platform:cpu`` image (``ks_platform_tests.docker_support``); ``cpu_inventory``: an inventory of one
local CPU host for that image.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ks_platform_tests.postgres_support import dagster_pg_env

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pg_instance(postgres_url) -> Iterator[dg.DagsterInstance]:
    """An instance configured by deploy/dagster.postgres.yaml (env-based settings) on the test server."""
    env = dagster_pg_env(postgres_url)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    config = yaml.safe_load((REPO / "deploy" / "dagster.postgres.yaml").read_text())
    config.pop("concurrency")  # the deployment caps the kilosort pool at 1; the tests set their own slots
    try:
        with dg.instance_for_test(overrides=config) as instance:
            yield instance
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def engine_and_cpu_image():
    """(docker client, cpu image tag) from the images fixtures (docker_support starts dockerd and builds the image)."""
    from ks_platform_tests import docker_support as support

    return support.docker_engine(), support.cpu_image()


def cpu_inventory(
    tmp_path: Path, image: str, docker_url: str = "unix:///var/run/docker.sock", cpu_slots: int = 1
) -> dict:
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    store.chmod(0o777)  # the image's uid 1000 writes it (the executor checks before launching)
    return {
        "store": str(store),
        "poll_seconds": 1,
        "exit_grace_seconds": 30,
        "hosts": [
            {
                "name": "local",
                "docker_url": docker_url,
                "backend": "cpu",
                "cpu_slots": cpu_slots,
                "images": {"cpu": image},
                "network_mode": "host",
            }
        ],
    }

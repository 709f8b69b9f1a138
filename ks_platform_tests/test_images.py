"""Images (issue #5): Dockerfile lint for every backend, and the ``cpu`` image built offline and run for real.

The cpu image is built by ``docker/build_images.sh`` from a local debootstrap base (no registry is reachable);
the sort inside it must equal the in-process sort spike for spike.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dockerfile_parse import DockerfileParser

from ks_platform_tests import docker_support

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "docker" / "Dockerfile"
#: Build arguments of each backend's real-world build (docker/build_images.sh passes the local base instead).
BACKEND_BASES = {
    "cpu": "python:3.11-slim-bookworm",
    "cuda": "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
    "rocm": "rocm/pytorch:rocm6.2_ubuntu22.04_py3.10_pytorch_release_2.3.0",
}


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run([str(hadolint), "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("backend", sorted(BACKEND_BASES))
def test_each_backend_builds_from_a_pinned_real_base_as_non_root_with_the_cli_entry_point(backend):
    parser = DockerfileParser(path=str(DOCKERFILE), build_args={"BASE_IMAGE": BACKEND_BASES[backend], "BACKEND": backend})
    assert parser.baseimage == BACKEND_BASES[backend] and ":latest" not in parser.baseimage
    instructions = [(i["instruction"], i["value"]) for i in parser.structure]
    users = [value for op, value in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert ("ENTRYPOINT", '["ks-platform"]') in instructions
    runs = " ".join(value for op, value in instructions if op == "RUN")
    assert "pip install -r /tmp/requirements.lock" in runs, "dependencies come from the pinned lock file"
    # nothing may install at run time: no pip in the entry point, command or healthcheck
    assert all("pip" not in value for op, value in instructions if op in {"ENTRYPOINT", "CMD", "HEALTHCHECK"})


def test_the_lock_pins_every_dependency_the_platform_declares():
    lock = {line.split("==")[0].lower().replace("_", "-") for line in (REPO / "docker" / "requirements.lock").read_text().splitlines() if "==" in line and not line.startswith("#")}
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower().replace("_", "-") for d in declared}
    assert names - {"torch"} <= lock, f"missing from docker/requirements.lock: {sorted(names - {'torch'} - lock)}"
    assert "torch" not in lock, "torch is per backend, not in the shared lock"


@pytest.fixture(scope="session")
def cpu_image():
    return docker_support.cpu_image()


def _docker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def test_cpu_image_works_offline_as_non_root(cpu_image):
    done = _docker("run", "--rm", "--network", "none", "--entrypoint", "id", cpu_image, "-u")
    assert done.returncode == 0 and done.stdout.strip() != "0"
    doctor = _docker("run", "--rm", "--network", "none", cpu_image, "doctor", "--backend", "cpu")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "healthy" in doctor.stdout
    versions = _docker("run", "--rm", "--network", "none", "--entrypoint", "python", cpu_image, "-c", "import kilosort, torch, spikeinterface, dagster; print(kilosort.__version__, torch.__version__, spikeinterface.__version__, dagster.__version__)")
    assert versions.returncode == 0 and versions.stdout.split() == ["4.1.7", "2.13.0+cpu", "0.105.3", "1.13.27"]


@pytest.mark.slow
def test_sort_inside_the_cpu_image_equals_the_in_process_sort(cpu_image, tmp_path, generated_session, sorted_workspace):
    landing = tmp_path / "landing"
    shutil.copytree(generated_session, landing / generated_session.name)
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o777)  # the image's user (uid 1000) writes here
    digest = docker_support.image_id(cpu_image)
    done = _docker(
        "run", "--rm", "--network", "none", "--user", "1000:1000",
        "-v", f"{landing}:/data/landing:ro", "-v", f"{out}:/data/out",
        "-e", f"KS_PLATFORM_IMAGE_DIGEST={digest}",
        cpu_image, "sort", f"/data/landing/{generated_session.name}", "--out", "/data/out/session", "--backend", "cpu",
        timeout=1500,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Phy folder: /data/out/session/phy" in done.stdout
    ws, key, _ = sorted_workspace
    reference = ws.store(key).sorting_dir
    for name in ("spike_times.npy", "spike_clusters.npy", "templates.npy", "amplitudes.npy"):
        assert np.array_equal(np.load(out / "session" / "sorting" / name), np.load(reference / name)), name
    lineage = json.loads((out / "session" / "sorting" / "lineage.json").read_text())
    assert lineage["image"] == cpu_image and lineage["image_digest"] == digest
    assert (out / "session" / "phy" / "params.py").read_text().count("../binary/recording.bin") == 1

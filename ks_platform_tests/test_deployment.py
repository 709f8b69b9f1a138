"""One deployment file: its engine picks the executor, each engine reads its part, earlier files still work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ks_platform.cli import main as cli
from ks_platform.core.errors import PlatformConfigError
from ks_platform.execution.deployment import (
    Deployment,
    SlurmSettings,
    convert,
    deployment_from_env,
    load_deployment,
)

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
VARIABLES = ("KS_PLATFORM_DEPLOYMENT", "KS_PLATFORM_INVENTORY", "KS_PLATFORM_SLURM", "KS_PLATFORM_KUBERNETES")


def test_the_examples_describe_the_same_hosts_and_each_engine_gets_its_part():
    full = load_deployment(DEPLOY / "deployment.example.yaml")
    hosts = load_deployment(DEPLOY / "inventory.example.yaml")  # a hosts file alone: an earlier Docker deployment
    kubernetes = load_deployment(DEPLOY / "kubernetes.example.yaml")  # names the hosts file by its path
    slurm = load_deployment(DEPLOY / "slurm.example.yaml")
    assert (full.engine, hosts.engine, kubernetes.engine, slurm.engine) == ("docker", "docker", "kubernetes", "slurm")
    assert full.inventory.model_dump() == hosts.inventory.model_dump() == kubernetes.inventory.model_dump()
    assert full.kubernetes == kubernetes.kubernetes
    assert slurm.slurm == SlurmSettings()
    assert full.slurm is not None and full.slurm.gpu_memory_mib == 40960 and full.slurm.cpu_partition == "cpu"
    assert [h.name for h in full.inventory.hosts] == ["gpu-nvidia-1", "gpu-amd-1", "cpu-1"]


@pytest.mark.parametrize(
    ("engine", "executor"),
    [
        ("local", "multiprocess"),
        ("docker", "ks_platform_docker"),
        ("slurm", "ks_platform_slurm"),
        ("kubernetes", "k8s"),
    ],
)
def test_the_engine_of_the_file_picks_the_code_locations_executor(monkeypatch, tmp_path, engine, executor):
    from ks_platform.definitions import executor_from_env

    data = yaml.safe_load((DEPLOY / "deployment.example.yaml").read_text())
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump({**data, "engine": engine}))
    for name in (*VARIABLES, "KS_PLATFORM_EXECUTOR"):
        monkeypatch.delenv(name, raising=False)
    assert executor_from_env().name == "multiprocess", "no file: this machine"
    monkeypatch.setenv("KS_PLATFORM_DEPLOYMENT", str(path))
    assert executor_from_env().name == executor


def earlier_files(folder: Path) -> dict[str, Path]:
    """An earlier version's file for each engine, with the example's contents."""
    full = yaml.safe_load((DEPLOY / "deployment.example.yaml").read_text())
    files = {
        "KS_PLATFORM_INVENTORY": ("inventory.yaml", full["inventory"]),
        "KS_PLATFORM_SLURM": ("slurm.yaml", {"slurm": full["slurm"]}),
        "KS_PLATFORM_KUBERNETES": ("kubernetes.yaml", {"inventory": "inventory.yaml", **full["kubernetes"]}),
    }
    paths = {}
    for variable, (name, content) in files.items():
        paths[variable] = folder / name
        paths[variable].write_text(yaml.safe_dump(content))
    return paths


@pytest.mark.parametrize(
    ("variable", "engine"),
    [("KS_PLATFORM_INVENTORY", "docker"), ("KS_PLATFORM_SLURM", "slurm"), ("KS_PLATFORM_KUBERNETES", "kubernetes")],
)
def test_an_earlier_versions_file_is_the_same_deployment_and_converts_to_one_file(tmp_path, variable, engine, capsys):
    old = earlier_files(tmp_path)[variable]
    deployment = deployment_from_env({variable: str(old)})
    assert deployment is not None and deployment.engine == engine
    full = load_deployment(DEPLOY / "deployment.example.yaml")
    if engine in ("docker", "kubernetes"):
        assert deployment.inventory.model_dump() == full.inventory.model_dump()
    if engine == "slurm":
        assert deployment.slurm == full.slurm
    if engine == "kubernetes":
        assert deployment.kubernetes == full.kubernetes
    assert cli(["deployment", "convert", str(old)]) == 0
    converted = tmp_path / "converted.yaml"
    converted.write_text(capsys.readouterr().out)
    assert yaml.safe_load(converted.read_text())["engine"] == engine
    assert load_deployment(converted).model_dump() == deployment.model_dump()
    assert convert(converted).split("\n", 2)[2] == convert(old).split("\n", 2)[2]


def test_the_deployment_variable_wins_and_an_earlier_variable_naming_another_engine_is_refused(tmp_path):
    files = earlier_files(tmp_path)
    both = {
        "KS_PLATFORM_DEPLOYMENT": str(DEPLOY / "slurm.example.yaml"),
        "KS_PLATFORM_INVENTORY": str(files["KS_PLATFORM_INVENTORY"]),
    }
    assert deployment_from_env(both).engine == "slurm"
    assert deployment_from_env({}) is None
    with pytest.raises(
        PlatformConfigError, match="KS_PLATFORM_SLURM names a file for engine docker.*KS_PLATFORM_DEPLOYMENT"
    ):
        deployment_from_env({"KS_PLATFORM_SLURM": str(files["KS_PLATFORM_INVENTORY"])})


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[1, 2]", "a deployment is a mapping with 'engine:', not list"),
        ("engine: docker\n", "engine docker needs 'inventory:'"),
        ("engine: kubernetes\ninventory: inventory.yaml\n", "engine kubernetes needs 'kubernetes:"),
        ("engine: cloud\n", "engine: Input should be 'local', 'docker', 'slurm' or 'kubernetes'"),
        ("engine: slurm\nslurm: {partition: a100}\n", "slurm.partition: Extra inputs are not permitted"),
        ("engine: local\nhosts: []\n", "hosts: Extra inputs are not permitted"),
        ("gpu_partition: [\n", "cannot be read"),
        ("color: blue\n", "no 'engine:'"),
        ("{}\n", "no 'engine:'"),
        ("engine: docker\ninventory: missing.yaml\n", "missing.yaml: the deployment file does not exist"),
    ],
)
def test_a_bad_deployment_file_is_one_error_naming_the_file_and_the_fix(tmp_path, content, problem, capsys):
    (tmp_path / "inventory.yaml").write_text((DEPLOY / "inventory.example.yaml").read_text())
    path = tmp_path / "deployment.yaml"
    path.write_text(content)
    with pytest.raises(PlatformConfigError) as caught:
        load_deployment(path)
    message = str(caught.value)
    assert problem in message and str(tmp_path) in message and "Fix:" in message, message
    assert cli(["deployment", "check", str(path)]) == 2
    assert capsys.readouterr().err.count("error:") == 1


def test_check_prints_each_host_with_its_gpus_and_slots(capsys, monkeypatch):
    monkeypatch.setenv("KS_PLATFORM_DEPLOYMENT", str(DEPLOY / "deployment.example.yaml"))
    assert cli(["deployment", "check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("engine: docker")
    assert "gpu-nvidia-1: cuda, 0 (24576 MiB), 1 (11264 MiB), 2 CPU slot(s)" in out
    assert "cpu-1: cpu, no GPU, 4 CPU slot(s), image ks-platform:cpu" in out
    assert isinstance(load_deployment(DEPLOY / "deployment.example.yaml"), Deployment)

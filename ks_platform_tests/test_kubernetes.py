"""Kubernetes without a cluster: the job's executor is dagster-k8s's, and every step's Job validates against the API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

from ks_platform.core.errors import PlatformConfigError
from ks_platform.core.names import DEPLOYMENT_ENV, KUBERNETES_ENV
from ks_platform.execution.deployment import load_deployment
from ks_platform.execution.kubernetes import helm_values

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "kubernetes.example.yaml"
#: The Kubernetes API version the rendered objects are checked against (strict: unknown fields are errors).
K8S_VERSION = "1.33.0"


def _job_ops() -> dict[str, dict]:
    from ks_platform.definitions import build_definitions

    job = build_definitions(sensors=[]).resolve_job_def("sort_session")
    return {node.name: dict(node.definition.tags) for node in job.graph.node_dict.values()}


def _location_context() -> K8sContainerContext:
    """What the Helm values give every run and step pod of the code location (``includeConfigInLaunchedRuns``):
    the chart puts the location's env in a ConfigMap and its volumes and mounts in the container context."""
    values = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    [location] = values["dagster-user-deployments"]["deployments"]
    return K8sContainerContext(
        env_config_maps=["ks-platform-user-env"], volumes=location["volumes"], volume_mounts=location["volumeMounts"]
    )


def _step_job(executor_config: dict, op: str) -> dict:
    """The Job dagster-k8s's step handler submits for ``op``: the location's context, then the executor's defaults,
    then the op's own config (the order of ``K8sStepHandler._get_container_context``)."""
    defaults = K8sContainerContext(
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(executor_config["step_k8s_config"])
    )
    override = K8sContainerContext(
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(executor_config["per_step_k8s_config"].get(op, {}))
    )
    merged = _location_context().merge(defaults).merge(override).run_k8s_config
    job_config = DagsterK8sJobConfig(
        job_image="registry.lab/ks-platform:cpu",
        dagster_home="/opt/dagster/dagster_home",
        instance_config_map="dagster-instance",
    )
    job = construct_dagster_k8s_job(
        job_config,
        ["dagster", "api", "execute_step"],
        f"dagster-step-{op.replace('_', '-')}",
        merged,
        component="step_worker",
        env_vars=[{"name": "DAGSTER_RUN_STEP_KEY", "value": op}],
    )
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict]:
    """Every step's Job as the code location's executor (``KS_PLATFORM_DEPLOYMENT``, engine kubernetes) configures it."""
    from ks_platform.definitions import kubernetes_executor_config

    executor_config = kubernetes_executor_config(load_deployment(EXAMPLE))
    assert set(executor_config["per_step_k8s_config"]) == {"sorted_units"}
    return {op: _step_job(executor_config, op) for op in _job_ops()}


def test_every_step_job_validates_against_the_kubernetes_api_schema(rendered):
    assert "sorted_units" in rendered and len(rendered) >= 6
    for op, job in rendered.items():
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)  # raises ValidationError on any wrong field
        assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1", op


def test_each_pod_sets_one_backend_and_mounts_the_declared_storage_once(rendered):
    deployment = load_deployment(EXAMPLE)
    for op, job in rendered.items():
        pod = job["spec"]["template"]["spec"]
        [container] = pod["containers"]
        names = [item["name"] for item in container["env"]]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        assert duplicated == [], f"{op}: {duplicated} set twice"
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert [source["configMapRef"]["name"] for source in container["envFrom"]] == ["ks-platform-user-env"], op
        volumes = [volume["name"] for volume in pod["volumes"]]
        assert sorted(volumes) == ["ks-platform-deployment", "landing-rig1", "store"], op
        mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
        assert mounts["store"]["mountPath"] == deployment.inventory.store and not mounts["store"].get("readOnly")
        assert mounts["landing-rig1"]["readOnly"] is True
        if op == "sorted_units":
            assert env["KS_PLATFORM_BACKEND"] in ("cuda:0", "rocm:0") and "KS_PLATFORM_BATCH_SIZE" in env
            assert set(container["resources"]["limits"]) & {"nvidia.com/gpu", "amd.com/gpu"}
            assert pod["nodeSelector"] and pod["tolerations"]
        else:
            assert env["KS_PLATFORM_BACKEND"] == "cpu" and not container["resources"].get("limits"), op


@pytest.mark.parametrize("variable", [DEPLOYMENT_ENV, KUBERNETES_ENV])
def test_the_code_location_runs_its_steps_with_dagster_k8s_executor(monkeypatch, tmp_path, variable):
    """The deployment file picks the executor; an earlier version's Kubernetes file (``KS_PLATFORM_KUBERNETES``,
    ``storage:`` at the top) is read as the same deployment."""
    path = EXAMPLE
    if variable == KUBERNETES_ENV:
        path = tmp_path / "kubernetes.yaml"
        (tmp_path / "inventory.example.yaml").write_text((EXAMPLE.parent / "inventory.example.yaml").read_text())
        storage = yaml.safe_load(EXAMPLE.read_text())["kubernetes"]["storage"]
        path.write_text(yaml.safe_dump({"inventory": "inventory.example.yaml", "storage": storage}))
        assert load_deployment(path).model_dump() == load_deployment(EXAMPLE).model_dump()
    for name in ("KS_PLATFORM_DEPLOYMENT", "KS_PLATFORM_INVENTORY", "KS_PLATFORM_SLURM", "KS_PLATFORM_EXECUTOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, str(path))
    from ks_platform.definitions import build_definitions, executor_from_env

    executor = executor_from_env()
    assert executor is not None and executor.name == "k8s"
    job = build_definitions(sensors=[], executor=executor).resolve_job_def("sort_session")
    assert job.executor_def.name == "k8s"


def test_a_bad_deployment_file_names_the_file_and_the_fix(tmp_path):
    (tmp_path / "inventory.yaml").write_text((EXAMPLE.parent / "inventory.example.yaml").read_text())
    bad = tmp_path / "kubernetes.yaml"
    head = "engine: kubernetes\ninventory: inventory.yaml\nkubernetes:\n  storage:\n"
    bad.write_text(head + "    store: {claim: a, host_path: /b}\n")
    with pytest.raises(PlatformConfigError) as caught:
        load_deployment(bad)
    assert str(bad) in str(caught.value) and "Fix:" in str(caught.value) and "exactly one" in str(caught.value)
    bad.write_text(head + "    store: {claim: a}\n    landing: {rig9: {claim: c}}\n")
    with pytest.raises(PlatformConfigError, match="rig9"):
        load_deployment(bad)


def test_helm_values_are_generated_from_the_one_storage_declaration():
    deployment = load_deployment(EXAMPLE)
    shipped = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    assert shipped == json.loads(json.dumps(helm_values(deployment, str(EXAMPLE), "registry.lab/ks-platform"))), (
        "deploy/helm/values.yaml is stale: python -m ks_platform.execution.kubernetes deploy/kubernetes.example.yaml > "
        "deploy/helm/values.yaml"
    )
    [location] = shipped["dagster-user-deployments"]["deployments"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in location["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"ephys-store", "ephys-landing-rig1"}
    kubernetes_validate.validate(  # the volumes and mounts are valid core/v1 objects of one Pod
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "x"},
            "spec": {
                "containers": [{"name": "c", "image": "i", "volumeMounts": location["volumeMounts"]}],
                "volumes": location["volumes"],
            },
        },
        K8S_VERSION,
        strict=True,
    )
    done = subprocess.run(
        [sys.executable, "-m", "ks_platform.execution.kubernetes", str(EXAMPLE.relative_to(REPO))],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and yaml.safe_load(done.stdout) == shipped, done.stderr

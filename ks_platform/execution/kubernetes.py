"""The same placement policy for Kubernetes: ``dagster-k8s/config`` for steps run by ``k8s_job_executor``.

On Kubernetes the scheduler picks the node and the device plugin picks the GPU, so the policy only says what
kind of node and how many GPUs: each inventory host stands for a node pool (``node_selector`` +
``tolerations``), its backend chooses the image and the GPU resource name (``nvidia.com/gpu`` /
``amd.com/gpu``), and its smallest GPU sets the planned batch size. Storage (the store read-write, the landing
roots read-only, at the inventory's paths) is declared once in a deployment file; the Helm values generated from it
give it to the code location, which passes it to every run and step pod (``includeConfigInLaunchedRuns``).
Per-step configs replace the defaults key by key (``merge_behavior: SHALLOW``). Plain Python, no Dagster import.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ks_platform.core.errors import PlatformConfigError
from ks_platform.core.hardware import recommended_batch_size
from ks_platform.core.names import (
    BACKEND_ENV,
    BATCH_SIZE_ENV,
    COMPARED_SORTERS,
    DEPLOYMENT_ENV,
    LANDING_ENV,
    NEEDS_TAG,
    PARTITION_TAG,
    SORTERS_TAG,
    STORE_ENV,
)
from ks_platform.execution.deployment import Deployment, KubernetesStorage, load_deployment
from ks_platform.execution.inventory import HostSpec, Inventory
from ks_platform.execution.placement import (
    CONSERVATIVE_CHANNELS,
    MIB,
    NEEDS_GPU,
    PlacementError,
    gpu_memory_needed_bytes,
)

K8S_CONFIG_TAG = "dagster-k8s/config"
GPU_RESOURCE = {"cuda": "nvidia.com/gpu", "rocm": "amd.com/gpu"}
#: CPU steps: enough for conversion and Phy export of one session (override per deployment in the inventory env).
CPU_REQUESTS = {"cpu": "1", "memory": "4Gi"}


def _env_list(env: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in sorted(env.items())]


def _pod_spec(host: HostSpec) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if host.node_selector:
        spec["node_selector"] = dict(host.node_selector)
    if host.tolerations:
        spec["tolerations"] = [dict(toleration) for toleration in host.tolerations]
    return spec


def gpu_node_pool(inventory: Inventory, n_channels: int | None = None) -> HostSpec | None:
    """The GPU pool a sorting step targets: the one whose smallest GPU is largest (None: no GPU pool)."""
    channels = n_channels or CONSERVATIVE_CHANNELS
    pools = [
        host
        for host in inventory.gpu_hosts
        if min(gpu.memory_mib for gpu in host.gpus) * MIB >= gpu_memory_needed_bytes(channels)
    ]
    if inventory.gpu_hosts and not pools:
        raise PlacementError(
            inventory.source,
            f"no GPU node pool has ≥ {gpu_memory_needed_bytes(channels) // MIB} MiB per GPU for {channels} channels",
            "add a node pool with larger GPUs",
        )
    return max(pools, key=lambda host: min(gpu.memory_mib for gpu in host.gpus), default=None)


def k8s_step_config(
    inventory: Inventory, needs_gpu: bool, n_channels: int | None = None, storage: KubernetesStorage | None = None
) -> dict[str, Any]:
    """``dagster-k8s/config`` for one step (shape of ``dagster_k8s.job.USER_DEFINED_K8S_JOB_CONFIG_SCHEMA``).

    Marked ``merge_behavior: SHALLOW``: merged over the executor's defaults it replaces them instead of appending a
    second value of each variable. With ``storage`` the pod also mounts the store and landing roots itself (without
    the Helm values of :func:`helm_values`, whose code location passes them to every run and step pod).
    """
    pool = gpu_node_pool(inventory, n_channels) if needs_gpu else None
    env = dict(inventory.env)
    if storage is not None:  # standalone pods; under the Helm values the code location's context brings these
        env.update({STORE_ENV: inventory.store, LANDING_ENV: inventory.landing_spec()})
    if pool is None:
        cpu_pools = [host for host in inventory.hosts if not host.is_gpu_host] or inventory.hosts
        host = cpu_pools[0]
        env.update(host.env)
        env[BACKEND_ENV] = "cpu"
        container: dict[str, Any] = {"image": host.image_for("cpu"), "resources": {"requests": dict(CPU_REQUESTS)}}
    else:
        host = pool
        env.update(host.env)
        smallest = min(gpu.memory_mib for gpu in host.gpus)
        env[BACKEND_ENV] = f"{host.backend}:0"
        env[BATCH_SIZE_ENV] = str(recommended_batch_size(smallest * MIB, n_channels or CONSERVATIVE_CHANNELS))
        container = {
            "image": host.image_for(host.backend),
            "resources": {"limits": {GPU_RESOURCE[host.backend]: "1"}, "requests": dict(CPU_REQUESTS)},
        }
    container["env"] = _env_list(env)
    pod = _pod_spec(host)
    if storage is not None:
        container["volume_mounts"] = storage.volume_mounts(inventory)
        pod["volumes"] = storage.pod_volumes()
    config: dict[str, Any] = {"container_config": container, "merge_behavior": "SHALLOW"}
    if pod:
        config["pod_spec_config"] = pod
    return config


def k8s_op_tags(
    inventory: Inventory, needs_gpu: bool, n_channels: int | None = None, storage: KubernetesStorage | None = None
) -> dict[str, str]:
    """Op tags carrying the step's Kubernetes config (JSON-encoded, as Dagster passes tag values)."""
    return {K8S_CONFIG_TAG: json.dumps(k8s_step_config(inventory, needs_gpu, n_channels, storage), sort_keys=True)}


def k8s_executor_config(
    inventory: Inventory, op_tags: Mapping[str, Mapping[str, Any]], storage: KubernetesStorage | None = None
) -> dict[str, Any]:
    """``k8s_job_executor`` config: CPU defaults for every step, GPU config for ops tagged ``ks_platform/needs: gpu``.

    ``op_tags`` maps op names to their tags (asset checks are their own ops and carry no tags: CPU). The config is per
    op, not per partition, so it cannot follow a session's choice of sorter as the Docker and SLURM executors do:
    ``sorted_units`` (Kilosort 4 on nearly every probe) gets a GPU, ``compared_sortings`` (mostly CPU sorters) does
    not (a Kilosort 4 compared there runs on the pod's CPU).
    """
    return {
        "step_k8s_config": k8s_step_config(inventory, needs_gpu=False, storage=storage),
        "per_step_k8s_config": {
            op: k8s_step_config(inventory, needs_gpu=True, storage=storage)
            for op, tags in sorted(op_tags.items())
            if tags.get(NEEDS_TAG) == NEEDS_GPU and tags.get(SORTERS_TAG) != COMPARED_SORTERS
        },
    }


#: Where the Helm values mount the deployment files (a ConfigMap made from deploy/kubernetes*.yaml and the inventory).
DEPLOYMENT_MOUNT = "/etc/ks_platform"


def _camel_volume(volume: dict[str, Any]) -> dict[str, Any]:
    """A volume in the Kubernetes API's own spelling (Helm values), from the Python client's snake_case."""
    if "persistent_volume_claim" in volume:
        return {
            "name": volume["name"],
            "persistentVolumeClaim": {"claimName": volume["persistent_volume_claim"]["claim_name"]},
        }
    return {"name": volume["name"], "hostPath": dict(volume["host_path"])}


#: Days a sensor/schedule tick is kept, per tick status: the same as ``retention:`` in dagster.yaml and
#: deploy/dagster.postgres.yaml (most landing-sensor ticks are "skipped": kept one day).
TICK_RETENTION_DAYS = {"skipped": 1, "success": 30, "failure": 90, "started": 30}
#: Seconds after a run ended before run monitoring frees the concurrency slots it still holds (``run_monitoring`` in
#: dagster.yaml and deploy/dagster.postgres.yaml): a terminated or crashed run never keeps the ``kilosort`` pool.
FREE_SLOTS_AFTER_RUN_END_SECONDS = 30
#: One run per session at a time (``tag_concurrency_limits`` in dagster.yaml and deploy/dagster.postgres.yaml).
PARTITION_RUN_LIMIT = {"key": PARTITION_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}


def helm_values(
    deployment: Deployment, deployment_file: str, image_repository: str, image_tag: str = "cpu"
) -> dict[str, Any]:
    """Values for the ``dagster/dagster`` chart's code location, generated from the one storage declaration.

    The code server (sensors read the landing roots) and, through ``includeConfigInLaunchedRuns``, every run worker
    (where ``k8s_job_executor`` runs) get the store, the landing roots, the deployment ConfigMap and the variables
    that select the Kubernetes executor; step pods get the same storage from :func:`k8s_executor_config`.
    """
    if deployment.engine != "kubernetes" or deployment.inventory is None or deployment.kubernetes is None:
        raise PlatformConfigError(
            f"{deployment_file}: engine {deployment.engine} is not a Kubernetes deployment. Fix: set 'engine: "
            "kubernetes' with 'inventory:' (the node pools) and 'kubernetes: {storage: ...}'"
        )
    inventory, storage = deployment.inventory, deployment.kubernetes.storage
    mounts = [
        {"name": m["name"], "mountPath": m["mount_path"], **({"readOnly": True} if m.get("read_only") else {})}
        for m in storage.volume_mounts(inventory)
    ]
    volumes = [_camel_volume(v) for v in storage.pod_volumes()]
    volumes.append({"name": "ks-platform-deployment", "configMap": {"name": "ks-platform-deployment"}})
    mounts.append({"name": "ks-platform-deployment", "mountPath": DEPLOYMENT_MOUNT, "readOnly": True})
    env = {
        STORE_ENV: inventory.store,
        LANDING_ENV: inventory.landing_spec(),
        DEPLOYMENT_ENV: f"{DEPLOYMENT_MOUNT}/{Path(deployment_file).name}",
    }
    code_location = {
        "name": "ks-platform",
        "image": {"repository": image_repository, "tag": image_tag, "pullPolicy": "IfNotPresent"},
        "dagsterApiGrpcArgs": ["--module-name", "ks_platform.definitions"],
        "port": 3030,
        "includeConfigInLaunchedRuns": {"enabled": True},
        "env": [{"name": name, "value": value} for name, value in env.items()],
        "envSecrets": [{"name": "dagster-postgresql-env"}],
        "volumes": volumes,
        "volumeMounts": mounts,
    }
    return {
        "dagster-user-deployments": {"enabled": True, "enableSubchart": True, "deployments": [code_location]},
        "runLauncher": {
            "type": "K8sRunLauncher",
            "config": {"k8sRunLauncher": {"imagePullPolicy": "IfNotPresent", "loadInclusterConfig": True}},
        },
        "dagsterDaemon": {
            "runCoordinator": {
                "enabled": True,
                "type": "QueuedRunCoordinator",
                "config": {
                    "queuedRunCoordinator": {"maxConcurrentRuns": 8, "tagConcurrencyLimits": [PARTITION_RUN_LIMIT]}
                },
            },
            "runMonitoring": {"enabled": True, "freeSlotsAfterRunEndSeconds": FREE_SLOTS_AFTER_RUN_END_SECONDS},
        },
        "retention": {
            "enabled": True,
            "sensor": {"purgeAfterDays": dict(TICK_RETENTION_DAYS)},
            "schedule": {"purgeAfterDays": dict(TICK_RETENTION_DAYS)},
        },
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m ks_platform.execution.kubernetes DEPLOYMENT.yaml [REPOSITORY [TAG]]``: print the Helm values."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(main.__doc__, file=sys.stderr)
        return 2
    deployment = load_deployment(args[0])
    values = helm_values(
        deployment,
        args[0],
        args[1] if len(args) > 1 else "registry.lab/ks-platform",
        args[2] if len(args) > 2 else "cpu",
    )
    print("# Generated by: python -m ks_platform.execution.kubernetes " + " ".join(args) + " (do not edit by hand)")
    print(yaml.safe_dump(values, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

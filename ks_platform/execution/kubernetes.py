"""The same placement policy for Kubernetes: ``dagster-k8s/config`` for steps run by ``k8s_job_executor``.

On Kubernetes the scheduler picks the node and the device plugin picks the GPU, so the policy only says what
kind of node and how many GPUs: each inventory host stands for a node pool (``node_selector`` +
``tolerations``), its backend chooses the image and the GPU resource name (``nvidia.com/gpu`` /
``amd.com/gpu``), and its smallest GPU sets the planned batch size. Plain Python, no Dagster import.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ks_platform.core.hardware import recommended_batch_size
from ks_platform.execution.inventory import HostSpec, Inventory
from ks_platform.execution.placement import BACKEND_ENV, BATCH_SIZE_ENV, CONSERVATIVE_CHANNELS, MIB, NEEDS_GPU, NEEDS_TAG, PlacementError, gpu_memory_needed_bytes

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
    pools = [host for host in inventory.gpu_hosts if min(gpu.memory_mib for gpu in host.gpus) * MIB >= gpu_memory_needed_bytes(channels)]
    if inventory.gpu_hosts and not pools:
        raise PlacementError(inventory.source, f"no GPU node pool has ≥ {gpu_memory_needed_bytes(channels) // MIB} MiB per GPU for {channels} channels", "add a node pool with larger GPUs")
    return max(pools, key=lambda host: min(gpu.memory_mib for gpu in host.gpus), default=None)


def k8s_step_config(inventory: Inventory, needs_gpu: bool, n_channels: int | None = None) -> dict[str, Any]:
    """``dagster-k8s/config`` for one step (shape of ``dagster_k8s.job.USER_DEFINED_K8S_JOB_CONFIG_SCHEMA``)."""
    pool = gpu_node_pool(inventory, n_channels) if needs_gpu else None
    env = dict(inventory.env)
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
        container = {"image": host.image_for(host.backend), "resources": {"limits": {GPU_RESOURCE[host.backend]: "1"}, "requests": dict(CPU_REQUESTS)}}
    container["env"] = _env_list(env)
    config: dict[str, Any] = {"container_config": container}
    pod = _pod_spec(host)
    if pod:
        config["pod_spec_config"] = pod
    return config


def k8s_op_tags(inventory: Inventory, needs_gpu: bool, n_channels: int | None = None) -> dict[str, str]:
    """Op tags carrying the step's Kubernetes config (JSON-encoded, as Dagster passes tag values)."""
    return {K8S_CONFIG_TAG: json.dumps(k8s_step_config(inventory, needs_gpu, n_channels), sort_keys=True)}


def k8s_executor_config(inventory: Inventory, op_tags: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``k8s_job_executor`` config: CPU defaults for every step, GPU config for ops tagged ``ks_platform/needs: gpu``.

    ``op_tags`` maps op names to their tags (asset checks are their own ops and carry no tags: CPU).
    """
    return {
        "step_k8s_config": k8s_step_config(inventory, needs_gpu=False),
        "per_step_k8s_config": {op: k8s_step_config(inventory, needs_gpu=True) for op, tags in sorted(op_tags.items()) if tags.get(NEEDS_TAG) == NEEDS_GPU},
    }

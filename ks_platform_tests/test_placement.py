"""Placement policy, inventory validation and Kubernetes tags (no Docker engine, no GPU needed)."""

from __future__ import annotations

import grp
import json

import dagster as dg
import pytest
from dagster._config import validate_config
from dagster_k8s import k8s_job_executor
from dagster_k8s.job import (
    USER_DEFINED_K8S_JOB_CONFIG_SCHEMA,
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

from ks_platform.core.hardware import recommended_batch_size
from ks_platform.core.names import BATCH_SIZE_ENV
from ks_platform.execution.inventory import Inventory, InventoryError, load_inventory
from ks_platform.execution.kubernetes import K8S_CONFIG_TAG, k8s_executor_config, k8s_op_tags, k8s_step_config
from ks_platform.execution.placement import (
    MIB,
    PlacementError,
    StepRequest,
    all_slots,
    candidate_placements,
    container_spec,
    gpu_memory_needed_bytes,
)

LOCAL = "unix:///var/run/docker.sock"


def three_hosts(**overrides) -> Inventory:
    """A CUDA host (2 GPUs), a ROCm host (1 GPU) and a CPU host, all on the local engine."""
    data = {
        "store": "/srv/store",
        "landing": {"rig1": "/srv/landing/rig1"},
        "hosts": [
            {
                "name": "nv",
                "docker_url": LOCAL,
                "backend": "cuda",
                "cpu_slots": 1,
                "gpus": [{"id": "0", "memory_mib": 8192}, {"id": "1", "memory_mib": 24576}],
                "node_selector": {"accelerator": "nvidia"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
            {
                "name": "amd",
                "docker_url": LOCAL,
                "backend": "rocm",
                "cpu_slots": 0,
                "gpus": [{"id": "1", "memory_mib": 16368}],
                "env": {"HSA_OVERRIDE_GFX_VERSION": "10.3.0"},
                "node_selector": {"accelerator": "amd"},
            },
            {"name": "cpu", "docker_url": LOCAL, "backend": "cpu", "cpu_slots": 3},
        ],
        **overrides,
    }
    return Inventory.from_mapping(data, source="test inventory")


def sort_request(channels: int | None = 32, attempt: int = 0) -> StepRequest:
    return StepRequest.from_tags(
        "run-1234",
        "sorted_units",
        {"ks_platform/needs": "gpu"},
        n_channels=channels,
        session="2024-03-01__rig1__m1__imec0",
        job_name="sort_session",
        attempt=attempt,
    )


def test_gpu_step_prefers_largest_gpu_and_batch_follows_its_memory():
    inventory = three_hosts()
    ranked = candidate_placements(inventory, sort_request(channels=384))
    assert [(p.host.name, p.gpu.id) for p in ranked] == [("nv", "1"), ("amd", "1"), ("nv", "0")]
    assert [p.batch_size for p in ranked] == [recommended_batch_size(m * MIB, 384) for m in (24576, 16368, 8192)]
    assert ranked[-1].batch_size < 60_000  # an 8 GiB GPU with 384 channels gets a smaller batch


def test_cuda_container_spec():
    inventory = three_hosts()
    nvidia = candidate_placements(inventory, sort_request())[0]
    spec = container_spec(inventory, nvidia, sort_request(), ["api", "execute_step"], image_digest="sha256:feed")
    assert spec.image == "ks-platform:cuda"
    assert spec.device_requests == [{"driver": "nvidia", "device_ids": ["1"], "capabilities": [["gpu"]]}]
    assert spec.devices == [] and spec.group_add == []
    assert spec.entrypoint + spec.command == ["python", "-m", "dagster", "api", "execute_step"]
    env = spec.environment
    assert env["KS_PLATFORM_BACKEND"] == "cuda:0"  # the container sees only the chosen GPU
    assert env["KS_PLATFORM_IMAGE"] == "ks-platform:cuda" and env["KS_PLATFORM_IMAGE_DIGEST"] == "sha256:feed"
    assert env[BATCH_SIZE_ENV] == str(nvidia.batch_size)
    assert env["KS_PLATFORM_STORE"] == "/srv/store" and env["KS_PLATFORM_LANDING"] == "rig1=/srv/landing/rig1"
    assert spec.labels == {
        "ks_platform.managed": "true",
        "ks_platform.run_id": "run-1234",
        "ks_platform.step": "sorted_units",
        "ks_platform.session": "2024-03-01__rig1__m1__imec0",
        "ks_platform.host": "nv",
        "ks_platform.device": "1",
    }
    assert {(m["target"], m["read_only"]) for m in spec.mounts} == {("/srv/store", False), ("/srv/landing/rig1", True)}
    kwargs = spec.docker_kwargs()
    assert kwargs["device_requests"] == spec.device_requests and "devices" not in kwargs


def test_rocm_container_spec():
    inventory = three_hosts()
    amd = next(p for p in candidate_placements(inventory, sort_request()) if p.host.name == "amd")
    spec = container_spec(inventory, amd, sort_request(attempt=1), ["api", "execute_step"])
    assert spec.image == "ks-platform:rocm"
    assert spec.devices == ["/dev/kfd", "/dev/dri"]
    assert spec.group_add == [str(grp.getgrnam(name).gr_gid) for name in ("video", "render")]  # numeric host gids
    assert spec.security_opt == ["seccomp=unconfined"]
    assert spec.device_requests == []
    assert spec.environment["HSA_OVERRIDE_GFX_VERSION"] == "10.3.0"
    assert spec.environment["ROCR_VISIBLE_DEVICES"] == "1" and spec.environment["KS_PLATFORM_BACKEND"] == "rocm:0"
    assert spec.name.endswith("-1")  # retries get their own container name
    assert spec.labels["ks_platform.device"] == "1" and spec.labels["ks_platform.host"] == "amd"


def test_cpu_steps_and_checks_go_to_cpu_slots_cpu_hosts_first():
    inventory = three_hosts()
    for step in ("recording_binary", "sorted_units_not_empty"):  # asset checks carry no op_tags
        ranked = candidate_placements(inventory, StepRequest.from_tags("r", step, {}))
        assert [(p.host.name, p.backend, p.image) for p in ranked] == [
            ("cpu", "cpu", "ks-platform:cpu"),
            ("nv", "cpu", "ks-platform:cpu"),
        ]
        spec = container_spec(inventory, ranked[0], StepRequest.from_tags("r", step, {}), ["api", "execute_step"])
        assert spec.device_requests == [] and spec.devices == [] and spec.environment["KS_PLATFORM_BACKEND"] == "cpu"
        assert BATCH_SIZE_ENV not in spec.environment


def test_no_gpu_host_means_cpu_image_for_the_sort():
    inventory = Inventory.from_mapping({"store": "/s", "hosts": [{"name": "laptop", "backend": "cpu", "cpu_slots": 2}]})
    [only] = candidate_placements(inventory, sort_request())
    assert (only.backend, only.image, only.gpu, only.device_backend) == ("cpu", "ks-platform:cpu", None, "cpu")


def test_gpu_too_small_for_channels_is_a_clear_placement_error():
    inventory = Inventory.from_mapping(
        {"store": "/s", "hosts": [{"name": "tiny", "backend": "cuda", "gpus": [{"id": "0", "memory_mib": 512}]}]},
        source="/etc/inv.yaml",
    )
    assert gpu_memory_needed_bytes(384) > 512 * MIB
    with pytest.raises(
        PlacementError,
        match=r"/etc/inv.yaml: step sorted_units needs a GPU with ≥ \d+ MiB for 384 channels.*Fix: add a host",
    ):
        candidate_placements(inventory, sort_request(channels=384))
    assert candidate_placements(inventory, sort_request(channels=4))  # few channels fit


def test_slots_one_per_gpu_and_cpu_pools():
    slots = {slot.key: slot.capacity for slot in all_slots(three_hosts())}
    assert slots == {
        "ks_platform/gpu/nv/0": 1,
        "ks_platform/gpu/nv/1": 1,
        "ks_platform/cpu/nv": 1,
        "ks_platform/gpu/amd/1": 1,
        "ks_platform/cpu/cpu": 3,
    }


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (
            {"name": "x", "backend": "tpu"},
            r"hosts\.0\.backend: unknown backend 'tpu'.*Fix: set each host's backend .* cuda, rocm, cpu",
        ),
        ({"name": "x", "backend": "cuda"}, r"has backend cuda but no gpus.*Fix: list each GPU"),
        ({"name": "x", "backend": "cpu", "images": {"metal": "img"}}, r"images for unknown backend\(s\) \['metal'\]"),
        ({"name": "x", "backend": "rocm", "gpus": [{"id": 0, "memory_mib": 0}]}, r"memory_mib"),
    ],
)
def test_bad_inventory_names_file_and_fix(tmp_path, host, expected):
    path = tmp_path / "inventory.yaml"
    path.write_text(json.dumps({"store": "/s", "hosts": [host]}))  # JSON is YAML
    with pytest.raises(InventoryError, match=expected) as caught:
        load_inventory(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_inventory_file_missing_or_unparsable(tmp_path):
    with pytest.raises(InventoryError, match="does not exist.*inventory.example.yaml"):
        load_inventory(tmp_path / "nope.yaml")
    bad = tmp_path / "inv.yaml"
    bad.write_text("hosts: [\n")
    with pytest.raises(InventoryError, match="cannot be parsed"):
        load_inventory(bad)


def test_example_inventory_loads():
    from pathlib import Path

    inventory = load_inventory(Path(__file__).resolve().parent.parent / "deploy" / "inventory.example.yaml")
    assert {host.backend for host in inventory.hosts} == {"cuda", "rocm", "cpu"}


# -- Kubernetes -----------------------------------------------------------------------------------------------
def _v1_job(config: dict):
    """Build the real Kubernetes Job dagster-k8s would submit for a step with these tags."""
    user_defined = get_user_defined_k8s_config({K8S_CONFIG_TAG: json.dumps(config)})
    job_config = DagsterK8sJobConfig(
        job_image="ks-platform:cpu", dagster_home="/opt/dagster/dagster_home", instance_config_map="dagster-instance"
    )
    return construct_dagster_k8s_job(job_config, ["dagster", "api", "execute_step"], "dagster-step-abc", user_defined)


def test_k8s_gpu_tags_are_schema_valid_and_build_a_job():
    inventory = three_hosts()
    tags = k8s_op_tags(inventory, needs_gpu=True, n_channels=384)
    config = json.loads(tags[K8S_CONFIG_TAG])
    assert validate_config(USER_DEFINED_K8S_JOB_CONFIG_SCHEMA, config).success
    job = _v1_job(config)
    container = job.spec.template.spec.containers[0]
    # the pool whose smallest GPU is largest: the AMD host (16 GiB) beats nv (8 GiB smallest)
    assert container.image == "ks-platform:rocm"
    assert container.resources.limits == {"amd.com/gpu": "1"}
    env = {item.name: item.value for item in container.env}
    assert env["HSA_OVERRIDE_GFX_VERSION"] == "10.3.0" and env["KS_PLATFORM_BACKEND"] == "rocm:0"
    assert env[BATCH_SIZE_ENV] == str(recommended_batch_size(16368 * MIB, 384))
    assert job.spec.template.spec.node_selector == {"accelerator": "amd"}


def test_k8s_nvidia_pool_tolerations():
    inventory = three_hosts(hosts=[h for h in three_hosts().model_dump()["hosts"] if h["backend"] != "rocm"])
    config = k8s_step_config(inventory, needs_gpu=True)
    job = _v1_job(config)
    spec = job.spec.template.spec
    assert (
        spec.containers[0].resources.limits == {"nvidia.com/gpu": "1"}
        and spec.containers[0].image == "ks-platform:cuda"
    )
    assert spec.node_selector == {"accelerator": "nvidia"}
    assert [(t.key, t.operator, t.effect) for t in spec.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]


def test_k8s_executor_config_is_valid_for_k8s_job_executor():
    from ks_platform.definitions import build_definitions

    job = build_definitions().resolve_job_def("sort_session")
    op_tags = {node.name: dict(node.definition.tags) for node in job.graph.node_dict.values()}
    assert op_tags["sorted_units"]["ks_platform/needs"] == "gpu"
    config = k8s_executor_config(three_hosts(), op_tags)
    assert set(config["per_step_k8s_config"]) == {"sorted_units"}  # checks and other steps: CPU defaults
    result = validate_config(k8s_job_executor.config_schema.config_type, config)
    assert result.success, result.errors
    cpu = _v1_job(config["step_k8s_config"]).spec.template.spec.containers[0]
    assert cpu.image == "ks-platform:cpu" and not (cpu.resources.limits or {})
    # the merge k8s_job_executor's step handler applies: executor defaults, then the per-op override
    from dagster_k8s.container_context import K8sContainerContext

    defaults = K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config["step_k8s_config"]))
    merged = defaults.merge(
        K8sContainerContext(
            run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config["per_step_k8s_config"]["sorted_units"])
        )
    ).run_k8s_config
    assert merged.container_config["image"] == "ks-platform:rocm" and merged.container_config["resources"][
        "limits"
    ] == {"amd.com/gpu": "1"}


def test_executor_definition_takes_the_inventory_as_config():
    from ks_platform.execution.docker_executor import placing_docker_executor

    schema = placing_docker_executor.config_schema.config_type
    assert validate_config(
        schema, {"inventory": three_hosts().model_dump(exclude={"source"}), "retries": {"enabled": {}}}
    ).success
    assert isinstance(placing_docker_executor, dg.ExecutorDefinition)


def test_ks_platform_executor_in_process_selects_dagsters_in_process_executor(monkeypatch):
    """The backfill-friendly route: a run's steps in its run worker (no process start per step)."""
    from ks_platform.definitions import build_definitions, executor_from_env

    for name in ("KS_PLATFORM_DEPLOYMENT", "KS_PLATFORM_KUBERNETES", "KS_PLATFORM_SLURM", "KS_PLATFORM_INVENTORY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KS_PLATFORM_EXECUTOR", "in_process")
    executor = executor_from_env()
    assert executor is not None and executor.name == "in_process"
    assert build_definitions(sensors=[], executor=executor).resolve_job_def("sort_session").executor_def.name == (
        "in_process"
    )
    monkeypatch.delenv("KS_PLATFORM_EXECUTOR")
    assert executor_from_env().name == "multiprocess"  # steps forked from a preloaded forkserver

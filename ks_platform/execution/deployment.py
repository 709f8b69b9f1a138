"""Where steps run: one deployment file, one model, one loader. Plain Python (no Dagster import).

``KS_PLATFORM_DEPLOYMENT`` names a YAML/JSON file; its ``engine`` picks the executor and each engine reads its own
part of the same file:

* ``local``: this machine (Dagster's multiprocess executor, steps forked from a preloaded server) — the embedded
  default, also when no file is named;
* ``docker``: the placing Docker executor over ``inventory.hosts`` (local, ``tcp://`` + TLS or ``ssh://`` engines,
  each with its backend, GPUs and their memory, CPU slots and image per backend);
* ``slurm``: SLURM jobs as ``slurm:`` says (partitions, GRES, the GPU memory the batch size is planned for, limits);
* ``kubernetes``: ``k8s_job_executor`` with the inventory's hosts as node pools and ``kubernetes.storage`` mounted
  in every pod.

The files of earlier versions keep working: an inventory file (``KS_PLATFORM_INVENTORY``), a SLURM settings file
(``KS_PLATFORM_SLURM``) and a Kubernetes deployment file (``KS_PLATFORM_KUBERNETES``) are each read as the deployment
they describe; ``ks-platform deployment convert`` writes them as one deployment file (docs/operations.md).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ks_platform.core.errors import PlatformConfigError
from ks_platform.core.names import DEPLOYMENT_ENV, INVENTORY_ENV, KUBERNETES_ENV, SLURM_SETTINGS_ENV, STORE_ENV
from ks_platform.execution.inventory import Inventory, InventoryError

Engine = Literal["local", "docker", "slurm", "kubernetes"]
ENGINES: tuple[str, ...] = ("local", "docker", "slurm", "kubernetes")
EXAMPLE = "deploy/deployment.example.yaml"


# -- SLURM ---------------------------------------------------------------------------------------------------------
CpuSteps = Literal["run_job", "step_jobs", "orchestrator"]


class SlurmSettings(BaseModel):
    """Where and how steps run on the cluster (a ``slurm:`` section of a YAML file, or the executor config).

    deploy/slurm.example.yaml lists every field with its default (a test keeps the two equal)."""

    model_config = ConfigDict(extra="forbid")

    #: Partition of steps tagged ``ks_platform/needs: gpu`` (Kilosort) and the GRES they request.
    gpu_partition: str = "gpu"
    #: GRES the sort job requests (``--gres``): ``gpu:1``, or ``gpu:a100:1`` with typed GRES.
    gres: str = "gpu:1"
    #: What the sorter gets on the GPU partition: ``cuda`` (NVIDIA), ``rocm`` (AMD) or ``cpu`` (no GPU visible).
    backend: Literal["cuda", "rocm", "cpu"] = "cuda"
    #: Memory of one GPU of the partition: the batch size is planned from it (as the Docker path does per GPU).
    gpu_memory_mib: int | None = Field(default=None, gt=0)
    #: The sort job's limits: ``--time``, ``--mem`` and ``--cpus-per-task``.
    time_limit: str = "04:00:00"
    #: The sort job's memory (``--mem``).
    mem: str = "32G"
    #: The sort job's CPUs (``--cpus-per-task``).
    cpus_per_task: int = Field(default=4, gt=0)
    #: Partition of every other step (None: the GPU partition, without GRES).
    cpu_partition: str | None = None
    #: How the other steps run: ``run_job`` (one job of the run runs them all, started when one is due, ended after
    #: ``cpu_idle_seconds`` without any), ``step_jobs`` (one job each) or ``orchestrator`` (on the run worker's machine).
    cpu_steps: CpuSteps = "run_job"
    #: With ``run_job``: the run's CPU job ends after this many seconds without a step.
    cpu_idle_seconds: float = Field(default=20.0, ge=0)
    #: Limits of a CPU job (with ``run_job``: shared by the steps it runs at once, for as long as it lives).
    cpu_time_limit: str = "01:00:00"
    #: A CPU job's memory (``--mem``).
    cpu_mem: str = "8G"
    #: A CPU job's CPUs (``--cpus-per-task``).
    cpu_cpus_per_task: int = Field(default=2, gt=0)
    #: ``--account`` of every job (None: the user's default).
    account: str | None = None
    #: ``--qos`` of every job (None: the default).
    qos: str | None = None
    #: More ``sbatch`` arguments for every job, as written (e.g. ``["--constraint=a100"]``).
    extra_sbatch_args: list[str] = []
    #: The platform's environment on the shared filesystem (its Python); None: the run worker's own.
    python: str | None = None
    #: Run the step in this Apptainer/Singularity image (``.sif`` on the shared filesystem) instead of ``python``.
    apptainer_image: str | None = None
    #: The Apptainer (or ``singularity``) command on the compute nodes.
    apptainer: str = "apptainer"
    #: Shared folder for job scripts, job output and attempt files (None: ``<store>/.slurm``).
    workdir: str | None = None
    #: Store root (None: ``$KS_PLATFORM_STORE``): read for the session's channel count.
    store: str | None = None
    #: Variables set in every job.
    env: dict[str, str] = {}
    #: Variables of the orchestrator's environment a job gets besides ``KS_PLATFORM_*`` and the basics (names; those
    #: ``dagster.yaml`` reads, e.g. ``DAGSTER_PG_PASSWORD``, must be listed: nothing else reaches a job).
    export: list[str] = []
    #: Seconds between ``squeue``/``scontrol`` polls of a step's job.
    poll_seconds: float = Field(default=2.0, gt=0)
    #: A job that ended COMPLETED but whose step reported nothing fails after this long.
    exit_grace_seconds: float = Field(default=30.0, ge=0)
    #: A job SLURM ended (TIMEOUT, CANCELLED, …) whose step may still be reporting its interruption waits this long
    #: before the health check fails it (a step killed outright never reports).
    failure_grace_seconds: float = Field(default=10.0, ge=0)

    def store_root(self) -> str:
        return self.store or os.environ.get(STORE_ENV, "data/store")

    def job_dir(self) -> Path:
        return Path(self.workdir or os.path.join(self.store_root(), ".slurm")).absolute()

    def python_path(self) -> str:
        return self.python or sys.executable


# -- Kubernetes ----------------------------------------------------------------------------------------------------
class VolumeSource(BaseModel):
    """Where one mounted folder comes from: a PersistentVolumeClaim (ReadWriteMany for the store) or a node path."""

    model_config = ConfigDict(extra="forbid")

    #: Name of a PersistentVolumeClaim in the release's namespace (ReadWriteMany for the store).
    claim: str | None = None
    #: A folder on every node that may run a step pod.
    host_path: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> VolumeSource:
        if (self.claim is None) == (self.host_path is None):
            raise ValueError("give exactly one of 'claim' (a PersistentVolumeClaim) or 'host_path'")
        return self

    def volume(self, name: str) -> dict[str, Any]:
        if self.claim is not None:
            return {"name": name, "persistent_volume_claim": {"claim_name": self.claim}}
        return {"name": name, "host_path": {"path": self.host_path, "type": "Directory"}}


class KubernetesStorage(BaseModel):
    """The store and each landing root, declared once; mounted at the inventory's paths in every step pod."""

    model_config = ConfigDict(extra="forbid")

    #: The store, mounted read-write at the inventory's ``store`` path.
    store: VolumeSource
    #: Each landing root by its inventory name, mounted read-only at the inventory's path for it.
    landing: dict[str, VolumeSource] = Field(default_factory=dict)

    def pod_volumes(self) -> list[dict[str, Any]]:
        return [
            self.store.volume("store"),
            *(source.volume(f"landing-{name}") for name, source in sorted(self.landing.items())),
        ]

    def volume_mounts(self, inventory: Inventory) -> list[dict[str, Any]]:
        missing = sorted(set(self.landing) - set(inventory.landing))
        if missing:
            raise InventoryError(
                inventory.source,
                f"storage declares landing root(s) {missing} the inventory does not list",
                "add them under 'landing' in the inventory or remove them from 'storage'",
            )
        mounts = [{"name": "store", "mount_path": inventory.store}]
        mounts += [
            {"name": f"landing-{name}", "mount_path": inventory.landing[name], "read_only": True}
            for name in sorted(self.landing)
        ]
        return mounts


class KubernetesSettings(BaseModel):
    """The ``kubernetes:`` section: the storage every pod mounts (the node pools are the inventory's hosts)."""

    model_config = ConfigDict(extra="forbid")

    storage: KubernetesStorage


class Deployment(BaseModel):
    """Where a deployment's steps run: the engine and every engine's part (only the engine's part is required)."""

    model_config = ConfigDict(extra="forbid")

    #: Which engine runs the steps: ``local``, ``docker``, ``slurm`` or ``kubernetes``.
    engine: Engine
    #: The hosts (Docker engines; Kubernetes node pools) and what every container shares: store, landing roots, env;
    #: in a file, the inventory itself or the path of an inventory file (relative to the deployment file).
    inventory: Inventory | None = None
    #: Partitions, GRES, limits and environment of SLURM jobs (all defaults when the section is empty).
    slurm: SlurmSettings | None = None
    #: Storage of the Kubernetes pods.
    kubernetes: KubernetesSettings | None = None
    #: Where this deployment came from (a file, converted or not), for messages.
    source: str = Field(default="deployment", exclude=True)

    @model_validator(mode="after")
    def _engine_has_its_part(self) -> Deployment:
        if self.engine in ("docker", "kubernetes") and self.inventory is None:
            raise ValueError(f"engine {self.engine} needs 'inventory:' (hosts, store, landing)")
        if self.engine == "kubernetes" and self.kubernetes is None:
            raise ValueError("engine kubernetes needs 'kubernetes: {storage: {store: ..., landing: ...}}'")
        if self.engine == "slurm" and self.slurm is None:
            self.slurm = SlurmSettings()
        return self

    def as_file(self) -> dict[str, Any]:
        """The deployment as a file would hold it (defaults left out)."""
        return self.model_dump(mode="json", exclude_defaults=True, exclude_none=True) | {"engine": self.engine}


class DeploymentError(PlatformConfigError):
    """A deployment file that cannot be used: names the file, the problem and the fix."""

    def __init__(self, source: str, problem: str, fix: str = f"see {EXAMPLE} (every engine's part, commented)") -> None:
        super().__init__(f"{source}: {problem}. Fix: {fix}")


def _read(path: Path) -> Any:
    if not path.is_file():
        raise DeploymentError(str(path), "the deployment file does not exist", f"create it (see {EXAMPLE})")
    try:
        text = path.read_text()
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise DeploymentError(str(path), f"cannot be read ({exc})", "fix the YAML/JSON syntax") from None


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'deployment'}: {str(error['msg']).removeprefix('Value error, ')}"
        for error in exc.errors()
    )


def from_mapping(data: Any, source: str) -> Deployment:
    """A deployment from a file's contents; an earlier version's file (inventory, SLURM or Kubernetes) is converted."""
    if not isinstance(data, Mapping):
        raise DeploymentError(source, f"a deployment is a mapping with 'engine:', not {type(data).__name__}")
    data = dict(data)
    if "engine" not in data:
        data = _converted(data, source)
    if isinstance(data.get("inventory"), str):  # a host inventory file beside this one, shared by deployments
        data["inventory"] = _read(Path(source).parent / data["inventory"])
    try:
        return Deployment.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise DeploymentError(source, _problems(exc)) from None


def _converted(data: dict[str, Any], source: str) -> dict[str, Any]:
    """An earlier version's file as a deployment: an inventory (``hosts:``), SLURM settings (``slurm:`` or its
    fields) or a Kubernetes deployment (``inventory:`` a path beside it, ``storage:``)."""
    if "hosts" in data:
        return {"engine": "docker", "inventory": data}
    if "storage" in data and "inventory" in data:
        return {"engine": "kubernetes", "inventory": data["inventory"], "kubernetes": {"storage": data["storage"]}}
    if "slurm" in data and len(data) == 1:
        return {"engine": "slurm", "slurm": data["slurm"] or {}}
    if data and set(data) <= set(SlurmSettings.model_fields):  # an empty file is no deployment at all
        return {"engine": "slurm", "slurm": data}
    raise DeploymentError(
        source,
        f"no 'engine:' (one of {', '.join(ENGINES)}), and not a file of an earlier version (inventory, SLURM settings "
        "or Kubernetes deployment)",
    )


def load_deployment(path: Path | str) -> Deployment:
    """Read a deployment file (``.yaml``/``.yml``/``.json``); every problem names the file and the fix."""
    path = Path(path).expanduser()
    deployment = from_mapping(_read(path), str(path))
    if deployment.inventory is not None:
        deployment.inventory.source = str(path)
    if deployment.kubernetes is not None and deployment.inventory is not None:
        deployment.kubernetes.storage.volume_mounts(deployment.inventory)  # its landing roots are the inventory's
    return deployment


#: The variables of earlier versions, each naming one engine's file, in the order they were honoured.
LEGACY_VARIABLES = (KUBERNETES_ENV, SLURM_SETTINGS_ENV, INVENTORY_ENV)


def deployment_from_env(environ: Mapping[str, str] | None = None) -> Deployment | None:
    """The deployment ``KS_PLATFORM_DEPLOYMENT`` names, or the one an earlier version's variable names; None: none
    is configured (the embedded default: this machine)."""
    environ = os.environ if environ is None else environ
    if environ.get(DEPLOYMENT_ENV):
        return load_deployment(environ[DEPLOYMENT_ENV])
    for name in LEGACY_VARIABLES:
        if environ.get(name):
            deployment = load_deployment(environ[name])
            expected = {KUBERNETES_ENV: "kubernetes", SLURM_SETTINGS_ENV: "slurm", INVENTORY_ENV: "docker"}[name]
            if deployment.engine != expected:
                raise DeploymentError(
                    environ[name],
                    f"{name} names a file for engine {deployment.engine}, not {expected}",
                    f"name it in {DEPLOYMENT_ENV} instead",
                )
            return deployment
    return None


def convert(path: Path | str) -> str:
    """An earlier version's file (or a deployment file) as one deployment file's YAML."""
    deployment = load_deployment(path)
    header = (
        f"# Converted from {path} by `ks-platform deployment convert` (engine {deployment.engine}).\n"
        f"# Use it with {DEPLOYMENT_ENV}=<this file>; every field: {EXAMPLE}.\n"
    )
    return header + yaml.safe_dump(deployment.as_file(), sort_keys=False)


def describe(deployment: Deployment) -> list[str]:
    """What a deployment means, a line each: the engine, its hosts or partitions, their GPUs and slots."""
    lines = [f"engine: {deployment.engine} ({deployment.source})"]
    if deployment.engine in ("docker", "kubernetes") and deployment.inventory is not None:
        for host in deployment.inventory.hosts:
            gpus = ", ".join(f"{g.id} ({g.memory_mib} MiB)" for g in host.gpus) or "no GPU"
            where = host.docker_url if deployment.engine == "docker" else f"node pool {host.node_selector or '{}'}"
            lines.append(
                f"  {host.name}: {host.backend}, {gpus}, {host.cpu_slots} CPU slot(s), image "
                f"{host.image_for(host.backend)}, {where}"
            )
        lines.append(f"  store {deployment.inventory.store}; landing {deployment.inventory.landing_spec() or '-'}")
    if deployment.engine == "slurm" and deployment.slurm is not None:
        s = deployment.slurm
        lines.append(
            f"  sorts on partition {s.gpu_partition} with --gres={s.gres} ({s.backend}, "
            f"{s.gpu_memory_mib or 'unknown'} MiB per GPU); other steps: {s.cpu_steps} on "
            f"{s.cpu_partition or s.gpu_partition}"
        )
    return lines

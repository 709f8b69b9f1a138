"""Placement policy: which host, device and image a step gets, and the container it runs in.

Plain Python (no Dagster, no Docker client): the Docker step handler, the Kubernetes tag builder and the
tests all use these functions. Rules:

* a step tagged ``ks_platform/needs: gpu`` (the sort steps; one tagged ``ks_platform/sorters`` too only when a sorter
  it runs for this partition uses a GPU, see :func:`step_needs_gpu`) goes to a GPU of a ``cuda``/``rocm`` host with enough memory for
  the session's channel count (the smallest batch Kilosort is allowed to run must fit, see
  :func:`gpu_memory_needed_bytes`); GPUs with more memory come first, since they get larger batches;
* when the inventory has no GPU host at all, such a step runs on CPU capacity with the ``cpu`` image;
* every other step (ingest, conversion, asset checks — checks do not inherit ``op_tags``, Phy export) takes
  a CPU slot, ``cpu`` hosts first;
* the batch size follows the chosen GPU's memory (:func:`ks_platform.core.hardware.recommended_batch_size`).
"""

from __future__ import annotations

import grp
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ks_platform.core.hardware import (
    BYTES_PER_SAMPLE_CHANNEL,
    FIXED_OVERHEAD_BYTES,
    MIN_BATCH_SIZE,
    recommended_batch_size,
)
from ks_platform.core.names import (
    BACKEND_ENV,
    BATCH_SIZE_ENV,
    DOCKER_EXECUTOR_NAME,
    EXECUTOR_ENV,
    IMAGE_DIGEST_ENV,
    IMAGE_ENV,
    LANDING_ENV,
    NEEDS_TAG,
    PROBE_MANIFEST,
    SORTERS_TAG,
    STORE_ENV,
)
from ks_platform.core.sorters import step_needs_gpu as sorters_need_gpu
from ks_platform.core.store import SessionStore, read_json
from ks_platform.execution.inventory import GpuSpec, HostSpec, Inventory, InventoryError

NEEDS_GPU = "gpu"
#: Channel count assumed when the session's probe map cannot be read yet (Neuropixels 1.0/2.0: 384).
CONSERVATIVE_CHANNELS = 384
MIB = 1024**2
LABEL_PREFIX = "ks_platform."
MANAGED_LABEL = f"{LABEL_PREFIX}managed"
RUN_LABEL = f"{LABEL_PREFIX}run_id"
STEP_LABEL = f"{LABEL_PREFIX}step"
SESSION_LABEL = f"{LABEL_PREFIX}session"
HOST_LABEL = f"{LABEL_PREFIX}host"
DEVICE_LABEL = f"{LABEL_PREFIX}device"
ROCM_DEVICES = ("/dev/kfd", "/dev/dri")
ROCM_GROUPS = ("video", "render")


class PlacementError(InventoryError):
    """The step can never be placed with this inventory (not: all slots are busy right now)."""


@dataclass(frozen=True)
class StepRequest:
    """What the policy needs to know about one step."""

    run_id: str
    step_key: str
    needs_gpu: bool
    n_channels: int | None = None
    session: str | None = None
    job_name: str = ""
    attempt: int = 0

    @classmethod
    def from_tags(cls, run_id: str, step_key: str, tags: dict[str, str], **kwargs: Any) -> StepRequest:
        return cls(run_id=run_id, step_key=step_key, needs_gpu=tags.get(NEEDS_TAG) == NEEDS_GPU, **kwargs)


def step_needs_gpu(store_root: str | Path, session: str | None, tags: dict[str, str]) -> bool:
    """Whether a step needs a GPU: it is tagged ``gpu`` and, for a sort step (tagged ``ks_platform/sorters``), a
    sorter it runs for this partition uses one (``raw_recording.json``'s sorters; unknown: yes). A CPU-only sorter
    (SpykingCircus2, Tridesclous2, MountainSort5) thus never takes a GPU slot."""
    if tags.get(NEEDS_TAG) != NEEDS_GPU:
        return False
    if not session or SORTERS_TAG not in tags:
        return True
    try:
        manifest = SessionStore(Path(store_root).absolute(), session).raw_manifest
    except ValueError:
        return True
    return sorters_need_gpu(manifest, tags[SORTERS_TAG])


def sorted_channel_count(store_root: str | Path, session: str | None) -> int | None:
    """Sorted channels of a session from its probe map in the store (None when not readable yet): what a GPU step's
    batch size is planned for."""
    if not session:
        return None
    try:
        manifest = read_json(SessionStore(Path(store_root).absolute(), session).probe_dir / PROBE_MANIFEST)
        return int(manifest["n_sorted_channels"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class Slot:
    """A unit of capacity: one GPU, or the CPU slots of one host. ``key`` names its Dagster concurrency pool."""

    host: str
    kind: Literal["gpu", "cpu"]
    device: str | None = None
    capacity: int = 1

    @property
    def key(self) -> str:
        return f"ks_platform/gpu/{self.host}/{self.device}" if self.kind == "gpu" else f"ks_platform/cpu/{self.host}"

    def __str__(self) -> str:
        return f"{self.host} GPU {self.device}" if self.kind == "gpu" else f"{self.host} CPU"


@dataclass(frozen=True)
class Placement:
    """A candidate (or chosen) home for a step."""

    host: HostSpec
    backend: str
    slot: Slot
    gpu: GpuSpec | None = None
    batch_size: int | None = None

    @property
    def image(self) -> str:
        return self.host.image_for(self.backend)

    @property
    def device_backend(self) -> str:
        """The backend string the sorter gets: the container sees only the chosen GPU, as index 0."""
        return f"{self.backend}:0" if self.gpu is not None else "cpu"

    def describe(self) -> str:
        extra = f", batch_size {self.batch_size}" if self.batch_size else ""
        return f"{self.slot} ({self.backend}, {self.image}{extra})"


@dataclass
class ContainerSpec:
    """Everything ``docker create`` needs, as plain data (the tests assert on it)."""

    name: str
    image: str
    entrypoint: list[str]
    command: list[str]
    environment: dict[str, str]
    labels: dict[str, str]
    mounts: list[dict[str, Any]]
    device_requests: list[dict[str, Any]] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    group_add: list[str] = field(default_factory=list)
    security_opt: list[str] = field(default_factory=list)
    user: str | None = None
    network_mode: str | None = None

    def docker_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for docker-py's ``containers.create`` (mounts/device requests as plain dicts)."""
        kwargs: dict[str, Any] = {
            "image": self.image,
            "name": self.name,
            "entrypoint": self.entrypoint,
            "command": self.command,
            "environment": self.environment,
            "labels": self.labels,
            "detach": True,
        }
        optional = {
            "device_requests": self.device_requests,
            "devices": self.devices,
            "group_add": self.group_add,
            "security_opt": self.security_opt,
            "user": self.user,
            "network_mode": self.network_mode,
        }
        kwargs.update({key: value for key, value in optional.items() if value})
        return kwargs


def gpu_memory_needed_bytes(n_channels: int) -> int:
    """The least GPU memory that still runs Kilosort at the smallest batch (same model as the batch rule)."""
    return FIXED_OVERHEAD_BYTES + max(n_channels, 1) * BYTES_PER_SAMPLE_CHANNEL * MIN_BATCH_SIZE


def all_slots(inventory: Inventory) -> list[Slot]:
    """Every slot of the inventory (one per GPU, one CPU pool per host with CPU slots)."""
    slots: list[Slot] = []
    for host in inventory.hosts:
        slots.extend(Slot(host.name, "gpu", gpu.id) for gpu in host.gpus)
        if host.cpu_slots:
            slots.append(Slot(host.name, "cpu", capacity=host.cpu_slots))
    return slots


def sort_slot_count(inventory: Inventory) -> int:
    """How many sorts the inventory runs at once: one per GPU, or (no GPU host) the CPU slots of all hosts.

    The executor sets the ``kilosort`` pool to this, so the pool never serializes sorts the slots could run together.
    """
    gpus = sum(len(host.gpus) for host in inventory.gpu_hosts)
    return gpus or sum(host.cpu_slots for host in inventory.hosts)


def candidate_placements(inventory: Inventory, request: StepRequest) -> list[Placement]:
    """The placements a step may take, best first. Raises :class:`PlacementError` when there is none at all."""
    if request.needs_gpu and inventory.gpu_hosts:
        channels = request.n_channels or CONSERVATIVE_CHANNELS
        needed = gpu_memory_needed_bytes(channels)
        gpus = [(host, gpu) for host in inventory.gpu_hosts for gpu in host.gpus]
        usable = [(host, gpu) for host, gpu in gpus if gpu.memory_mib * MIB >= needed]
        if not usable:
            largest = max(gpu.memory_mib for _, gpu in gpus)
            raise PlacementError(
                inventory.source,
                f"step {request.step_key} needs a GPU with ≥ {needed // MIB} MiB for {channels} channels, the largest "
                f"listed has {largest} MiB",
                "add a host with a larger GPU to the inventory, or sort fewer channels",
            )
        usable.sort(key=lambda pair: -pair[1].memory_mib)
        return [
            Placement(
                host,
                host.backend,
                Slot(host.name, "gpu", gpu.id),
                gpu,
                recommended_batch_size(gpu.memory_mib * MIB, channels),
            )
            for host, gpu in usable
        ]
    hosts = sorted((host for host in inventory.hosts if host.cpu_slots > 0), key=lambda host: host.is_gpu_host)
    if not hosts:
        raise PlacementError(
            inventory.source,
            f"step {request.step_key} needs CPU capacity and no host has cpu_slots > 0",
            "give at least one host cpu_slots ≥ 1",
        )
    return [Placement(host, "cpu", Slot(host.name, "cpu", capacity=host.cpu_slots)) for host in hosts]


def container_name(request: StepRequest) -> str:
    """Stable, unique per run/step/attempt, valid for Docker (``[a-zA-Z0-9][a-zA-Z0-9_.-]``)."""
    import hashlib

    digest = hashlib.sha1(f"{request.run_id}/{request.step_key}".encode()).hexdigest()[:12]
    suffix = f"-{request.attempt}" if request.attempt else ""
    step = "".join(c if c.isalnum() or c in "_.-" else "-" for c in request.step_key)[:40]
    return f"ks-step-{step}-{digest}{suffix}"


def container_spec(
    inventory: Inventory,
    placement: Placement,
    request: StepRequest,
    command: list[str],
    image_digest: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> ContainerSpec:
    """The container a placed step runs in: image, devices, groups, environment, labels, mounts."""
    host = placement.host
    env: dict[str, str] = {
        STORE_ENV: inventory.store,
        BACKEND_ENV: placement.device_backend,
        IMAGE_ENV: placement.image,
        "DAGSTER_RUN_JOB_NAME": request.job_name,
        "DAGSTER_RUN_STEP_KEY": request.step_key,
        EXECUTOR_ENV: DOCKER_EXECUTOR_NAME,  # the code location in the container loads this executor too
    }
    if inventory.landing:
        env[LANDING_ENV] = inventory.landing_spec()
    if image_digest:
        env[IMAGE_DIGEST_ENV] = image_digest
    if placement.batch_size:
        env[BATCH_SIZE_ENV] = str(placement.batch_size)
    labels = {
        MANAGED_LABEL: "true",
        RUN_LABEL: request.run_id,
        STEP_LABEL: request.step_key,
        SESSION_LABEL: request.session or "",
        HOST_LABEL: host.name,
        DEVICE_LABEL: placement.gpu.id if placement.gpu else "cpu",
    }
    mounts = [{"source": inventory.store, "target": inventory.store, "type": "bind", "read_only": False}]
    mounts += [
        {"source": path, "target": path, "type": "bind", "read_only": True} for path in inventory.landing.values()
    ]
    mounts += [
        {"source": source, "target": target, "type": "bind", "read_only": True}
        for source, target in inventory.extra_mounts.items()
    ]
    spec = ContainerSpec(
        name=container_name(request),
        image=placement.image,
        entrypoint=list(inventory.step_entrypoint),
        command=list(command),
        environment={},
        labels=labels,
        mounts=mounts,
        user=host.user,
        network_mode=host.network_mode,
    )
    if placement.gpu is not None and placement.backend == "cuda":
        spec.device_requests = [{"driver": "nvidia", "device_ids": [placement.gpu.id], "capabilities": [["gpu"]]}]
    elif placement.gpu is not None and placement.backend == "rocm":
        spec.devices = list(ROCM_DEVICES)
        spec.group_add = [str(gid) for gid in rocm_group_ids(inventory, host)]
        spec.security_opt = ["seccomp=unconfined"]
        # /dev/dri exposes every GPU of the host: the ROCm runtime shows only the chosen one (as HIP index 0).
        env["ROCR_VISIBLE_DEVICES"] = placement.gpu.id
    spec.environment = {**env, **inventory.env, **host.env, **(extra_env or {})}
    return spec


def rocm_group_ids(inventory: Inventory, host: HostSpec) -> list[int]:
    """Numeric gids for ``group_add``: the host's ``group_ids``, else (local engine) this machine's video/render.

    Never group names: Docker resolves those in the image's /etc/group, which rarely matches the host's numbers.
    """
    if host.group_ids is not None:
        return list(host.group_ids)
    if not host.is_local:
        raise InventoryError(
            inventory.source,
            f"host {host.name} is remote and has no group_ids",
            "set group_ids: [<gid of video>, <gid of render>] for it",
        )
    found = []
    for name in ROCM_GROUPS:
        try:
            found.append(grp.getgrnam(name).gr_gid)
        except KeyError:
            continue
    if not found:
        raise InventoryError(
            inventory.source,
            f"host {host.name}: this machine has neither a video nor a render group, so the ROCm devices' groups are "
            "unknown",
            f"set group_ids of host {host.name} to the gids owning /dev/kfd and /dev/dri/renderD*",
        )
    return found


def parse_user(user: str | None) -> tuple[int, int] | None:
    """``uid[:gid]`` as numbers (gid defaults to uid); None for names or an empty user (root)."""
    if not user:
        return (0, 0)
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        return None
    return int(uid), int(gid or uid)


def _writable(path: Path, uid: int, gid: int) -> bool:
    info = path.stat()
    if uid == 0:
        return True
    need = stat.S_IWUSR | stat.S_IXUSR
    if info.st_uid == uid:
        return info.st_mode & need == need
    if info.st_gid == gid:
        return info.st_mode & (need >> 3) == need >> 3
    return info.st_mode & (need >> 6) == need >> 6


def store_write_problem(
    inventory: Inventory, placement: Placement, session: str | None, user: str | None, image: str
) -> str | None:
    """Why ``user`` (the container's) cannot write the store folders a step writes, with the fix; None when it can.

    Checks, as seen from this machine (the store is mounted at the same path everywhere), the store root,
    ``sessions/``, the session's folder and its output folders that exist already.
    """
    ids = parse_user(user)
    root = Path(inventory.store)
    if ids is None or not root.is_dir():
        return None
    uid, gid = ids
    paths = [root, root / "sessions"]
    if session:
        folder = root / "sessions" / session
        paths.append(folder)
        if folder.is_dir():
            paths += sorted(child for child in folder.iterdir() if child.is_dir() and not child.name.startswith("."))
    for path in paths:
        if path.is_dir() and not _writable(path, uid, gid):
            info = path.stat()
            host = placement.host.name
            as_owner = (
                f', or run the containers as the store\'s owner (user: "{info.st_uid}:{info.st_gid}" of host {host} in '
                f"{inventory.source})"
                if info.st_uid
                else ""
            )
            return (
                f"store folder {path} (owner {info.st_uid}:{info.st_gid}, mode {stat.filemode(info.st_mode)}) is not "
                f"writable by uid {uid}:{gid}, "
                f"the user step containers of image {image} run as on host {host}. Fix: chown -R {uid}:{gid} {path} "
                f"(or chmod -R a+rwX {path}){as_owner}"
            )
    return None

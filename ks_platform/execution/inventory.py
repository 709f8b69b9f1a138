"""Host inventory: which Docker engines exist, their backend, GPUs, CPU slots, images and mounts.

Loaded from a YAML/JSON file (``KS_PLATFORM_INVENTORY``) or from the executor's run config. Plain Python
(pydantic), no Dagster: the placement policy and the Kubernetes tag builder read the same model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ks_platform.core.errors import PlatformConfigError

BACKENDS: tuple[str, ...] = ("cuda", "rocm", "cpu")
Backend = Literal["cuda", "rocm", "cpu"]
DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"
PASS_ENV_DEFAULT = ("DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST", "DAGSTER_PG_DB", "DAGSTER_PG_PORT")


class InventoryError(PlatformConfigError):
    """A bad inventory: names its source (file or executor config), the problem and the fix."""

    def __init__(self, source: str, problem: str, fix: str) -> None:
        self.source = source
        self.problem = problem
        self.fix = fix
        super().__init__(f"{source}: {problem}. Fix: {fix}")


class GpuSpec(BaseModel):
    """One GPU of a host: the device id the engine knows it by and its memory."""

    model_config = ConfigDict(extra="forbid")

    #: Device id as the engine knows it (NVIDIA: ``device_ids`` of the device request, e.g. "0"; ROCm: the index).
    id: str
    #: The GPU's memory in MiB: which sessions fit it, and the batch size planned for it.
    memory_mib: int = Field(gt=0)

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> str:
        return str(value)


class TlsSpec(BaseModel):
    """Client TLS settings for a ``tcp://host:2376`` engine started with ``--tlsverify`` (paths on the orchestrator)."""

    model_config = ConfigDict(extra="forbid")

    #: CA that signed the engine's server certificate (None: the system's CA bundle).
    ca_cert: str | None = None
    #: Client certificate and key the engine accepts (both or neither).
    client_cert: str | None = None
    #: The client certificate's key (with ``client_cert``).
    client_key: str | None = None
    #: Check the engine's certificate against ``ca_cert`` and its host name.
    verify: bool = True

    @model_validator(mode="after")
    def _cert_with_key(self) -> TlsSpec:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("tls needs client_cert and client_key together")
        return self


class SshSpec(BaseModel):
    """Client settings for an ``ssh://user@host[:port]`` engine (paths on the orchestrator; docker-py's paramiko
    transport runs ``docker system dial-stdio`` there). Unset fields fall back to the orchestrator's ~/.ssh."""

    model_config = ConfigDict(extra="forbid")

    #: Private key (unencrypted) whose public half is in the remote user's authorized_keys. None: ``IdentityFile``
    #: of ~/.ssh/config, the ssh agent or ~/.ssh/id_*.
    identity_file: str | None = None
    #: known_hosts file holding the engine host's key (``ssh-keyscan -p <port> <host>``, fingerprint checked); only
    #: this file is read. None: ~/.ssh/known_hosts. A host whose key is not there is refused, never added.
    known_hosts: str | None = None


class HostSpec(BaseModel):
    """A Docker engine that runs step containers."""

    model_config = ConfigDict(extra="forbid")

    #: The host's name in pools, container labels and messages (letters, digits, ``_``, ``.``, ``-``).
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    #: The Docker engine: ``unix://`` (local), ``tcp://host:2376`` (with ``tls``) or ``ssh://user@host[:port]``.
    docker_url: str = DEFAULT_DOCKER_URL
    #: What its GPUs are: ``cuda`` (NVIDIA), ``rocm`` (AMD) or ``cpu`` (no GPU); picks the image and the devices.
    backend: Backend = "cpu"
    #: Its GPUs (none for a ``cpu`` host): each sorts one session at a time.
    gpus: list[GpuSpec] = Field(default_factory=list)
    #: Concurrent non-GPU steps (ingest, conversion, checks, Phy export) this host takes.
    cpu_slots: int = Field(default=1, ge=0)
    #: Extra environment for every container on this host (e.g. ``HSA_OVERRIDE_GFX_VERSION: 10.3.0``).
    env: dict[str, str] = Field(default_factory=dict)
    #: Image per backend; missing entries default to ``ks-platform:<backend>``.
    images: dict[Backend, str] = Field(default_factory=dict)
    #: ``host`` lets containers reach services on the host's loopback (e.g. a local PostgreSQL).
    network_mode: str | None = None
    #: ``uid:gid`` to run as (must own the store); None keeps the image's non-root user.
    user: str | None = None
    #: TLS client settings for a ``tcp://`` engine.
    tls: TlsSpec | None = None
    #: Key and known_hosts for an ``ssh://`` engine (else the orchestrator's ~/.ssh: config, agent, known_hosts).
    ssh: SshSpec | None = None
    #: Pull a missing image: ``true`` for any image of this host, or a list of image names; else a missing image fails.
    pull: bool | list[str] = False
    #: ROCm: numeric group ids for ``/dev/kfd``/``/dev/dri`` (default on a local engine: this machine's video, render).
    group_ids: list[int] | None = None
    #: Kubernetes: node selector and tolerations for pods placed like this host.
    node_selector: dict[str, str] = Field(default_factory=dict)
    #: Kubernetes: tolerations of those pods (e.g. of a GPU node pool's taint).
    tolerations: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("backend", mode="before")
    @classmethod
    def _known_backend(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() in BACKENDS:
            return value.lower()
        raise ValueError(f"unknown backend {value!r}")

    @field_validator("images", mode="before")
    @classmethod
    def _known_image_backends(cls, value: Any) -> Any:
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(BACKENDS))
            if unknown:
                raise ValueError(f"images for unknown backend(s) {unknown}")
        return value

    @model_validator(mode="after")
    def _gpus_match_backend(self) -> HostSpec:
        ids = [gpu.id for gpu in self.gpus]
        if len(ids) != len(set(ids)):
            raise ValueError(f"host {self.name!r} lists a GPU id twice: {ids}")
        if self.backend == "cpu" and self.gpus:
            raise ValueError(f"host {self.name!r} has backend cpu but lists GPUs")
        if self.backend != "cpu" and not self.gpus:
            raise ValueError(f"host {self.name!r} has backend {self.backend} but no gpus")
        if self.backend == "rocm" and self.group_ids is None and not self.is_local:
            raise ValueError(
                f"host {self.name!r} is a remote rocm engine without group_ids: the video/render group ids of that "
                "machine are unknown here; set group_ids: [<gid of video>, <gid of render>] (`getent group video "
                f"render` on {self.name})"
            )
        if self.tls is not None and not self.docker_url.startswith("tcp://"):
            raise ValueError(f"host {self.name!r} has tls settings but docker_url {self.docker_url} is not tcp://")
        if self.ssh is not None and not self.docker_url.startswith("ssh://"):
            raise ValueError(f"host {self.name!r} has ssh settings but docker_url {self.docker_url} is not ssh://")
        return self

    @property
    def is_local(self) -> bool:
        """The engine runs on the machine of the executor (a unix socket)."""
        return self.docker_url.startswith("unix://")

    def pulls(self, image: str) -> bool:
        """Whether a missing ``image`` may be pulled on this host."""
        return self.pull is True or (isinstance(self.pull, list) and image in self.pull)

    @property
    def is_gpu_host(self) -> bool:
        return self.backend != "cpu"

    def image_for(self, backend: str) -> str:
        return self.images.get(backend, f"ks-platform:{backend}")  # type: ignore[call-overload]


class Inventory(BaseModel):
    """All hosts plus what every container shares: the store (rw), landing roots (ro), environment."""

    model_config = ConfigDict(extra="forbid")

    #: The Docker engines (at least one); on Kubernetes, the node pools.
    hosts: list[HostSpec] = Field(min_length=1)
    #: Store root; mounted read-write at the same path (results are written there).
    store: str
    #: Landing roots ``name → path``; mounted read-only at the same paths.
    landing: dict[str, str] = Field(default_factory=dict)
    #: Extra mounts ``host path → container path`` (read-only), e.g. a shared settings folder.
    extra_mounts: dict[str, str] = Field(default_factory=dict)
    #: Environment for every container (e.g. ``DAGSTER_PG_PASSWORD`` for the instance storage).
    env: dict[str, str] = Field(default_factory=dict)
    #: Variables copied from the orchestrator's environment into every container when set there (the
    #: instance storage settings of deploy/dagster.postgres.yaml are read from the environment).
    pass_env: list[str] = Field(default_factory=lambda: list(PASS_ENV_DEFAULT))
    #: How the image starts Dagster's step worker (the image's own entry point is ``ks-platform``).
    step_entrypoint: list[str] = Field(default_factory=lambda: ["python", "-m", "dagster"])
    #: Seconds between placement attempts of a waiting step / container health checks.
    poll_seconds: int = Field(default=2, ge=1)
    #: Seconds to wait for a finished step's container to exit before its logs are captured.
    exit_grace_seconds: float = Field(default=60.0, ge=0)
    #: Where this inventory came from (file path or "executor config"), for error messages.
    source: str = Field(default="executor config", exclude=True)

    @model_validator(mode="after")
    def _unique_hosts(self) -> Inventory:
        names = [host.name for host in self.hosts]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"host name(s) {duplicates} appear more than once")
        return self

    @property
    def gpu_hosts(self) -> list[HostSpec]:
        return [host for host in self.hosts if host.is_gpu_host]

    def host(self, name: str) -> HostSpec:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def landing_spec(self) -> str:
        """``name=path,…`` as :class:`~ks_platform.defs.resources.PlatformResource` reads it."""
        return ",".join(f"{name}={path}" for name, path in self.landing.items())

    @classmethod
    def from_mapping(cls, data: Any, source: str = "executor config") -> Inventory:
        """Validate ``data``; every problem is reported against ``source`` with how to fix it."""
        if not isinstance(data, dict):
            raise InventoryError(
                source,
                f"the inventory must be a mapping with 'hosts' and 'store', not {type(data).__name__}",
                "see deploy/inventory.example.yaml",
            )
        try:
            return cls.model_validate({**data, "source": source})
        except ValidationError as exc:
            problems = "; ".join(_describe(error) for error in exc.errors())
            raise InventoryError(source, problems, _fix_for(exc)) from None


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "inventory"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def _fix_for(exc: ValidationError) -> str:
    text = " ".join(f"{'.'.join(str(p) for p in error['loc'])} {error['msg']}" for error in exc.errors())
    if "group_ids" in text:
        return "give each remote rocm host group_ids: the numeric gids of its video and render groups"
    if "tls" in text:
        return "give tls (ca_cert, client_cert + client_key, verify) only to tcp:// hosts, with cert and key together"
    if "ssh settings" in text or ".ssh" in text:
        return "give ssh (identity_file, known_hosts: files on this machine) only to ssh://user@host[:port] hosts"
    if "gpus" in text or "memory_mib" in text:
        return "list each GPU of a cuda/rocm host as {id: <device id>, memory_mib: <MiB>}, and none on cpu hosts"
    if "backend" in text:
        return f"set each host's backend (and images keys) to one of {', '.join(BACKENDS)}"
    return "correct the listed fields (see deploy/inventory.example.yaml for a complete inventory)"


def load_inventory(path: Path | str) -> Inventory:
    """Read an inventory from a ``.yaml``/``.yml``/``.json`` file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InventoryError(
            str(path),
            "the inventory file does not exist",
            "create it (see deploy/inventory.example.yaml) or name an existing one",
        )
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InventoryError(str(path), f"cannot be parsed: {exc}", "fix the YAML/JSON syntax") from None
    return Inventory.from_mapping(data, source=str(path))

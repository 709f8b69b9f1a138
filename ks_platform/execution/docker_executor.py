"""A resource-aware Docker executor: each step goes to the host/GPU the placement policy picks.

Built like dagster-docker's ``docker_executor`` (``StepDelegatingExecutor`` + a step handler; the step runs
``dagster api execute_step`` in its container and reports to the shared instance storage), with what that
executor lacks (dagster-docker 0.29 reads no per-step tags, one image per run, containers neither labelled nor
removed): per-step host, image and devices from the inventory, slot accounting per GPU in the instance, steps
that wait instead of failing when every usable GPU is busy, labelled containers whose logs are captured into the
run before they are removed, and termination that stops them.
"""

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import docker
import docker.constants
import docker.errors
import docker.tls

from ks_platform.core.errors import PlatformConfigError
from ks_platform.core.names import DEPLOYMENT_ENV, DOCKER_EXECUTOR_NAME, PARTITION_TAG, SORT_POOL
from ks_platform.dagster_internals import (
    CheckStepHealthResult,
    DagsterEvent,
    EngineEventData,
    RetryMode,
    StepHandler,
    StepHandlerContext,
    multiple_process_executor_requirements,
)
from ks_platform.execution.deployment import deployment_from_env
from ks_platform.execution.docker_engines import EngineConnectionError, docker_client, image_digest
from ks_platform.execution.inventory import Inventory, InventoryError, load_inventory
from ks_platform.execution.placement import (
    Placement,
    PlacementError,
    StepRequest,
    all_slots,
    candidate_placements,
    container_spec,
    sort_slot_count,
    sorted_channel_count,
    step_needs_gpu,
    store_write_problem,
)
from ks_platform.execution.slots import SlotLedger
from ks_platform.execution.step_executor import FinishingStepExecutor, executor_config_schema, require_shared_storage

#: Characters of a container's log kept in the run's event log.
LOG_TAIL_CHARS = 20_000
#: Lines of a failed container's output put into the step failure message (the cause is usually at the end).
FAILURE_TAIL_LINES = 15
#: Repeat the "waiting for a GPU" line this often while a step waits.
WAIT_LOG_EVERY_SECONDS = 300.0


@dataclass
class _StepState:
    """What the handler knows about one step of this run (one attempt)."""

    request: StepRequest
    candidates: list[Placement]
    step_context: Any
    placement: Placement | None = None
    container_id: str | None = None
    error: str | None = None
    error_reported: bool = False
    waiting_since: float = field(default_factory=time.monotonic)
    last_wait_log: float | None = None
    #: Container removed and slot given back (cleanup is idempotent).
    released: bool = False
    #: When the container was first seen exited with code 0 while its step had not reported an outcome yet.
    exited_ok_at: float | None = None


def output_tail(container: Any, lines: int = FAILURE_TAIL_LINES) -> str:
    """The container's last output lines that say something: Python traceback frames (indented lines) are left
    out, so a chained exception's cause (e.g. psycopg2's "Connection refused") stays in view; "" if unreadable."""
    try:
        text = container.logs(stdout=True, stderr=True, tail=500).decode(errors="replace")
    except Exception:  # noqa: BLE001 - the exit code alone still makes a failure message
        return ""
    kept = [
        line.rstrip()
        for line in text.splitlines()
        if line.strip() and not line[0].isspace() and not line.startswith("Traceback (most recent call last)")
    ]
    return "\n".join(kept[-lines:])


class PlacingDockerStepHandler(StepHandler):
    """Places each step with :mod:`ks_platform.execution.placement` and runs it in a container on that host."""

    def __init__(self, inventory: Inventory) -> None:
        super().__init__()
        self.inventory = inventory
        self._steps: dict[str, _StepState] = {}
        self._clients: dict[str, docker.DockerClient] = {}
        self._ledger: SlotLedger | None = None

    @property
    def name(self) -> str:
        return "PlacingDockerStepHandler"

    # -- helpers ------------------------------------------------------------------------------------------------
    def _ledger_for(self, instance: dg.DagsterInstance) -> SlotLedger:
        if self._ledger is None:
            self._ledger = SlotLedger(instance)
            self._ledger.ensure_capacity(all_slots(self.inventory))
        return self._ledger

    def _client(self, placement: Placement) -> docker.DockerClient:
        host = placement.host
        if host.name not in self._clients:
            self._clients[host.name] = docker_client(host, self.inventory.source)
        return self._clients[host.name]

    @staticmethod
    def _step_key(ctx: StepHandlerContext) -> str:
        keys = ctx.execute_step_args.step_keys_to_execute or []
        assert len(keys) == 1, "one step per launch"
        return keys[0]

    def _request(self, ctx: StepHandlerContext, step_key: str) -> StepRequest:
        run = ctx.dagster_run
        session = run.tags.get(PARTITION_TAG)
        known = ctx.execute_step_args.known_state
        attempt = known.get_retry_state().get_attempt_count(step_key) if known else 0
        tags = dict(ctx.step_tags[step_key])
        needs_gpu = step_needs_gpu(self.inventory.store, session, tags)
        channels = sorted_channel_count(self.inventory.store, session) if needs_gpu else None
        return StepRequest(
            run.run_id,
            step_key,
            needs_gpu,
            n_channels=channels,
            session=session,
            job_name=run.job_name,
            attempt=attempt,
        )

    def _engine_event(self, state: _StepState, message: str, metadata: dict[str, Any] | None = None) -> DagsterEvent:
        return DagsterEvent.engine_event(state.step_context, message, EngineEventData(metadata=metadata or {}))

    # -- StepHandler ---------------------------------------------------------------------------------------------
    def launch_step(self, step_handler_context: StepHandlerContext) -> Iterator[DagsterEvent]:
        ctx = step_handler_context
        step_key = self._step_key(ctx)
        request = self._request(ctx, step_key)
        state = _StepState(request=request, candidates=[], step_context=ctx.get_step_context(step_key))
        self._steps[step_key] = state
        try:
            state.candidates = candidate_placements(self.inventory, request)
        except PlacementError as exc:
            state.error = str(exc)
            yield self._engine_event(state, f"{step_key} cannot be placed: {exc}")
            return
        yield from self._check_hosts(state)
        if state.error is None:
            yield from self._try_start(ctx, state)

    def _check_hosts(self, state: _StepState) -> Iterator[DagsterEvent]:
        """Before any slot is taken: drop candidates whose image is missing (pulling it where the inventory allows)
        or whose container user cannot write the store; the step fails when no candidate is left."""
        problems: list[str] = []
        usable: list[Placement] = []
        for placement in state.candidates:
            host, image = placement.host, placement.image
            try:
                client = self._client(placement)
                try:
                    found = client.images.get(image)
                except docker.errors.ImageNotFound:
                    if not host.pulls(image):
                        problems.append(
                            f"image {image} is missing on host {host.name} ({host.docker_url}). Fix: build/load it "
                            "there "
                            f"(docker/README.md, e.g. docker save {image} | docker -H {host.docker_url} load) or set "
                            f"pull: true for host {host.name} in {self.inventory.source}"
                        )
                        continue
                    yield self._engine_event(
                        state,
                        f"Pulling {image} on host {host.name} (missing there, pull allowed by {self.inventory.source})",
                    )
                    try:
                        found = client.images.pull(image)
                    except docker.errors.APIError as exc:
                        problems.append(
                            f"image {image} is missing on host {host.name} and pulling it failed: "
                            f"{exc.explanation or exc}. Fix: check the image name and the host's registry access, or "
                            "build/load it there (docker/README.md)"
                        )
                        continue
            except InventoryError as exc:
                problems.append(str(exc))
                continue
            except Exception:  # noqa: BLE001 - engine unreachable now: keep it, the start reports it (it may come back)
                usable.append(placement)
                continue
            user = host.user if host.user is not None else found.attrs.get("Config", {}).get("User")
            problem = store_write_problem(self.inventory, placement, state.request.session, user, image)
            if problem:
                problems.append(problem)
                continue
            usable.append(placement)
        if not usable:
            state.error = "; ".join(dict.fromkeys(problems))
            yield self._engine_event(state, f"{state.request.step_key} cannot start: {state.error}")
        elif problems:
            yield self._engine_event(
                state,
                f"{state.request.step_key} skips {len(state.candidates) - len(usable)} host(s): "
                + "; ".join(dict.fromkeys(problems)),
            )
        state.candidates = usable

    def _try_start(self, ctx: StepHandlerContext, state: _StepState) -> Iterator[DagsterEvent]:
        request = state.request
        ledger = self._ledger_for(ctx.instance)
        placement = ledger.try_claim(request.run_id, request.step_key, state.candidates)
        if placement is None:
            now = time.monotonic()
            if state.last_wait_log is None or now - state.last_wait_log >= WAIT_LOG_EVERY_SECONDS:
                state.last_wait_log = now
                busy = "; ".join(f"{c.slot}: {', '.join(ledger.holders(c.slot)) or 'queued'}" for c in state.candidates)
                kind = "a GPU" if request.needs_gpu and state.candidates[0].gpu is not None else "a CPU slot"
                yield self._engine_event(
                    state,
                    f"{request.step_key} waits for {kind} ({int(now - state.waiting_since)} s so far): every usable "
                    f"slot is busy — {busy}. It starts when one frees; nothing has failed.",
                    {"candidates": dg.MetadataValue.json([c.slot.key for c in state.candidates])},
                )
            return
        state.placement = placement
        try:
            client = self._client(placement)
            digest = image_digest(client, placement.image)
            command = [*ctx.execute_step_args.get_command_args(skip_serialized_namedtuple=True)[-2:]]
            extra_env = {name: os.environ[name] for name in self.inventory.pass_env if name in os.environ}
            extra_env.update({item["name"]: item["value"] for item in ctx.execute_step_args.get_command_env()})
            spec = container_spec(self.inventory, placement, request, command, image_digest=digest, extra_env=extra_env)
            kwargs = spec.docker_kwargs()
            kwargs["mounts"] = [
                docker.types.Mount(m["target"], m["source"], type=m["type"], read_only=m["read_only"])
                for m in spec.mounts
            ]
            container = client.containers.create(**kwargs)
            state.container_id = container.id
            container.start()
        except Exception as exc:  # noqa: BLE001 - every engine problem becomes one clear step failure
            state.error = self._explain(placement, exc)
            self._cleanup(state, capture_logs=state.container_id is not None)
            yield self._engine_event(state, f"{request.step_key} could not start on {placement.slot}: {state.error}")
            return
        waited = time.monotonic() - state.waiting_since
        yield DagsterEvent.step_worker_starting(
            state.step_context,
            message=f"Launching {request.step_key} on {placement.describe()} in container {spec.name}"
            + (f" after waiting {waited:.0f} s" if waited > 1 else ""),
            metadata={
                "host": placement.host.name,
                "device": placement.gpu.id if placement.gpu else "cpu",
                "backend": placement.backend,
                "image": placement.image,
                "image_digest": digest,
                "batch_size": placement.batch_size or "Kilosort default",
                "container": spec.name,
                "Docker container id": container.id,
            },
        )

    def _explain(self, placement: Placement, exc: Exception) -> str:
        source = self.inventory.source
        host = placement.host
        if isinstance(exc, (InventoryError, EngineConnectionError)):
            return str(exc)
        if isinstance(exc, docker.errors.ImageNotFound) or (
            isinstance(exc, docker.errors.NotFound) and "image" in str(exc).lower()
        ):
            return (
                f"image {placement.image} is missing on host {host.name} ({host.docker_url}). Fix: build/load it "
                f"there (docker/README.md) or set pull: true for host {host.name} in {source}"
            )
        if isinstance(exc, docker.errors.APIError):
            return (
                f"the Docker engine of host {host.name} refused the container: {exc.explanation or exc}. Fix: check "
                f"the host's devices/runtime, or its entry in {source}"
            )
        if "ssl" in f"{type(exc).__name__} {exc}".lower():
            return (
                f"the Docker engine of host {host.name} at {host.docker_url} refused the TLS connection "
                f"({type(exc).__name__}: {str(exc)[:300]}). Fix: set tls (ca_cert, client_cert, client_key) of host "
                f"{host.name} in {source} to certificates that engine's --tlscacert trusts"
            )
        return (
            f"the Docker engine of host {host.name} at {host.docker_url} is unreachable ({type(exc).__name__}: "
            f"{str(exc)[:300]}). Fix: start dockerd there or correct docker_url of host {host.name} in {source}"
        )

    def check_step_health(self, step_handler_context: StepHandlerContext) -> CheckStepHealthResult:
        ctx = step_handler_context
        state = self._steps.get(self._step_key(ctx))
        if state is None or (state.released and state.error is None) or state.error_reported:
            return CheckStepHealthResult.healthy()
        if state.error is None and state.container_id is None:
            list(self._try_start(ctx, state))  # still waiting for a slot: try again
        if state.error is not None:
            state.error_reported = True
            return CheckStepHealthResult.unhealthy(state.error)
        if state.container_id is None:
            return CheckStepHealthResult.healthy()
        try:
            container = self._client(state.placement).containers.get(state.container_id)  # type: ignore[arg-type]
            container_state = container.attrs.get("State", {})
            status, code = container.status, container_state.get("ExitCode")
        except docker.errors.NotFound:
            state.error_reported = True
            self._cleanup(state, capture_logs=False)
            return CheckStepHealthResult.unhealthy(
                f"container of {state.request.step_key} on {state.placement.slot} disappeared"
            )  # type: ignore[union-attr]
        if status in ("created", "running", "restarting"):
            return CheckStepHealthResult.healthy()
        if code == 0:
            # Its success/failure event is normally in the database already; give a lagging one the grace period,
            # then fail the attempt rather than wait for ever on an outcome that was lost.
            state.exited_ok_at = state.exited_ok_at or time.monotonic()
            if time.monotonic() - state.exited_ok_at < self.inventory.exit_grace_seconds:
                return CheckStepHealthResult.healthy()
            state.error_reported = True
            self._cleanup(state, capture_logs=True)
            return CheckStepHealthResult.unhealthy(
                f"container of {state.request.step_key} on {state.placement.slot} exited with code 0 but its step "
                f"reported no outcome within {self.inventory.exit_grace_seconds} s "  # type: ignore[union-attr]
                "(its events did not reach the instance database. Fix: check that step containers reach the same "
                "PostgreSQL as the run)"
            )
        state.error_reported = True
        if container_state.get("OOMKilled"):
            cause = (
                " (out of memory: the host's kernel killed it. Fix: free memory on that host, or sort with a "
                "smaller batch_size in kilosort4-settings.json)"
            )
        else:
            cause = " (killed)" if code == 137 else ""
        reason = f"container of {state.request.step_key} on {state.placement.slot} exited with code {code}{cause}"  # type: ignore[union-attr]
        tail = output_tail(container)
        if tail:
            reason += f". Its last output lines (all of it is attached to the run's engine events):\n{tail}"
        self._cleanup(state, capture_logs=True)
        return CheckStepHealthResult.unhealthy(reason)

    def terminate_step(self, step_handler_context: StepHandlerContext) -> Iterator[DagsterEvent]:
        state = self._steps.get(self._step_key(step_handler_context))
        if state is None or state.released:
            return
        yield self._engine_event(
            state,
            f"Stopping {state.request.step_key}"
            + (
                f" (container on {state.placement.slot})"
                if state.container_id and state.placement
                else " (was waiting for a slot)"
            ),
        )
        self._cleanup(state, capture_logs=True, stop=True)

    # -- lifecycle hooks called by PlacingDockerExecutor ---------------------------------------------------------
    def finish_step(self, step_key: str, failed: bool = False) -> None:
        """The step reported success/failure/retry: wait for its container to exit, keep its logs, remove it."""
        state = self._steps.get(step_key)
        if state is not None and not state.released:
            self._cleanup(state, capture_logs=True, wait=True)

    def finish_run(self) -> None:
        """End of the run (also on errors/termination): nothing of it may outlive the run."""
        for state in list(self._steps.values()):
            if not state.released:
                self._cleanup(state, capture_logs=True, stop=True)

    def _cleanup(self, state: _StepState, capture_logs: bool, stop: bool = False, wait: bool = False) -> None:
        """Stop/wait, capture the container's logs into the run, remove it, give back its slot and queue entries."""
        if state.released:
            return
        state.released = True
        request = state.request
        if state.container_id and state.placement is not None:
            try:
                client = self._client(state.placement)
                container = client.containers.get(state.container_id)
                if stop:
                    container.stop(timeout=10)
                elif wait:
                    try:
                        container.wait(timeout=self.inventory.exit_grace_seconds)
                    except Exception:  # noqa: BLE001 - still running after the grace period: stop it
                        container.stop(timeout=10)
                container.reload()
                code = container.attrs.get("State", {}).get("ExitCode")
                if capture_logs:
                    logs = container.logs(stdout=True, stderr=True).decode(errors="replace")
                    self._engine_event(
                        state,
                        f"Container {container.name} of {request.step_key} on {state.placement.slot} exited with code "
                        f"{code}; its output is attached and the container was removed",
                        {
                            "container logs": dg.MetadataValue.text(logs[-LOG_TAIL_CHARS:]),
                            "exit code": code if code is not None else -1,
                        },
                    )
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except Exception as exc:  # noqa: BLE001 - report, never mask the step's own outcome
                self._engine_event(state, f"Could not clean up the container of {request.step_key}: {exc}")
        if self._ledger is not None:
            self._ledger.withdraw(request.run_id, request.step_key, state.candidates)


class PlacingDockerExecutor(FinishingStepExecutor):
    """Steps in containers placed by the inventory; the handler hears when steps and runs end."""

    def __init__(
        self, handler: PlacingDockerStepHandler, retries: RetryMode, max_concurrent: int | None = None
    ) -> None:
        super().__init__(handler, retries, handler.inventory.poll_seconds, max_concurrent)


def inventory_from_config(config: dict[str, Any]) -> Inventory:
    """The inventory from executor config (``inventory_file`` or inline ``inventory``), else the deployment file's
    (``$KS_PLATFORM_DEPLOYMENT``, or an earlier version's ``$KS_PLATFORM_INVENTORY``)."""
    inline = config.get("inventory")
    path = config.get("inventory_file")
    if inline and path:
        raise PlatformConfigError(
            f"executor config: give either inventory_file or inventory, not both. Fix: remove one of them ({path})"
        )
    if path:
        return load_inventory(path)
    if inline:
        return Inventory.from_mapping(inline, source="executor config (execution.config.inventory)")
    deployment = deployment_from_env()
    if deployment is not None and deployment.inventory is not None:
        return deployment.inventory
    raise PlatformConfigError(
        f"{deployment.source if deployment else 'executor config'}: no host inventory. Fix: give the deployment file "
        f"({DEPLOYMENT_ENV}) an 'inventory:' with the Docker hosts, or set execution.config.inventory_file"
    )


@dg.executor(
    name=DOCKER_EXECUTOR_NAME,
    config_schema=executor_config_schema(
        "inventory_file",
        f"YAML/JSON host inventory (default: the inventory of ${DEPLOYMENT_ENV}).",
        "inventory",
        "The inventory inline (same fields as the file).",
        "Containers of one run at a time (slots limit across runs).",
    ),
    requirements=multiple_process_executor_requirements(),
)
def placing_docker_executor(init_context: dg.InitExecutorContext) -> PlacingDockerExecutor:
    """Runs each step in a container on the host/GPU the placement policy picks (see ks_platform.execution)."""
    config = init_context.executor_config
    inventory = inventory_from_config(config)
    require_shared_storage(init_context.instance, "Docker executor", "step containers")
    # The inventory's sort slots set the kilosort pool before any step is queued on it (else the pool's limit, 1 in
    # dagster.yaml, would serialize sorts that several GPUs could run at once).
    ledger = SlotLedger(init_context.instance)
    ledger.ensure_capacity(all_slots(inventory))
    ledger.ensure_pool(SORT_POOL, sort_slot_count(inventory))
    retries = RetryMode.from_config(config["retries"])
    assert retries is not None
    return PlacingDockerExecutor(
        PlacingDockerStepHandler(inventory), retries=retries, max_concurrent=config.get("max_concurrent")
    )

"""A SLURM executor: every step of a run is a SLURM batch job; GPU steps get ``--gres`` on the GPU partition.

Built like the Docker executor (``StepDelegatingExecutor`` + a step handler; the job runs ``dagster api
execute_step`` and reports to the shared PostgreSQL instance storage), over SLURM's own commands: ``sbatch`` to
submit, ``scontrol show job`` (``sacct`` once slurmctld has forgotten the job) to watch, ``scancel`` to stop.
Why not submitit / dagster-slurm / Pipes: docs/decisions.md. The job runs the platform's environment on the
shared filesystem (``python``), or the backend image through Apptainer (``apptainer_image``); the step records
the job id, node, partition, GRES and environment hash in the lineage (:mod:`ks_platform.core.lineage`).

A job that ends in any final state but COMPLETED fails its step (the op's retry policy then applies); how each
ending is reported: docs/decisions.md, "SLURM: how a job's end reaches the step". Jobs are submitted
``--no-requeue``; terminating the run scancels its jobs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import yaml
from dagster import Field, IntSource, Permissive, StringSource
from dagster._core.definitions.executor_definition import multiple_process_executor_requirements
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.retries import RetryMode, get_retries_config
from dagster._core.executor.step_delegating.step_handler.base import (
    CheckStepHealthResult,
    StepHandler,
    StepHandlerContext,
)
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic import Field as PydanticField

from ks_platform.core.errors import PlatformConfigError
from ks_platform.core.hardware import recommended_batch_size
from ks_platform.core.names import (
    BACKEND_ENV,
    BATCH_SIZE_ENV,
    ENVIRONMENT_KIND_ENV,
    EXECUTOR_ENV,
    IMAGE_DIGEST_ENV,
    IMAGE_ENV,
    PARTITION_TAG,
    PROBE_MANIFEST,
    REQUESTED_GRES_ENV,
    SLURM_EXECUTOR_NAME,
    SLURM_SETTINGS_ENV,
    STORE_ENV,
)
from ks_platform.core.store import SessionStore, read_json
from ks_platform.execution.placement import (
    CONSERVATIVE_CHANNELS,
    MIB,
    gpu_memory_needed_bytes,
    step_needs_gpu,
)
from ks_platform.execution.step_executor import FinishingStepExecutor, require_shared_storage

#: SLURM states in which the job may still run (or start) — everything else is final.
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "RESIZING",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "RESV_DEL_HOLD",
    }
)
FAILURE_TAIL_LINES = 15
COMMAND_TIMEOUT_SECONDS = 60


class SlurmSettings(BaseModel):
    """Where and how steps run on the cluster (a ``slurm:`` section of a YAML file, or the executor config)."""

    model_config = ConfigDict(extra="forbid")

    #: Partition of steps tagged ``ks_platform/needs: gpu`` (Kilosort) and the GRES they request.
    gpu_partition: str = "gpu"
    gres: str = "gpu:1"
    #: What the sorter gets on the GPU partition: ``cuda`` (NVIDIA), ``rocm`` (AMD) or ``cpu`` (no GPU visible).
    backend: Literal["cuda", "rocm", "cpu"] = "cuda"
    #: Memory of one GPU of the partition: the batch size is planned from it (as the Docker path does per GPU).
    gpu_memory_mib: int | None = PydanticField(default=None, gt=0)
    #: Partition of every other step (None: the GPU partition, without GRES).
    cpu_partition: str | None = None
    time_limit: str = "04:00:00"
    cpu_time_limit: str = "01:00:00"
    mem: str = "32G"
    cpu_mem: str = "8G"
    cpus_per_task: int = PydanticField(default=4, gt=0)
    cpu_cpus_per_task: int = PydanticField(default=1, gt=0)
    account: str | None = None
    qos: str | None = None
    extra_sbatch_args: list[str] = []
    #: The platform's environment on the shared filesystem (its Python); default: the orchestrator's.
    python: str = sys.executable
    #: Run the step in this Apptainer/Singularity image (``.sif`` on the shared filesystem) instead of ``python``.
    apptainer_image: str | None = None
    apptainer: str = "apptainer"
    #: Shared folder for job scripts and job output (default: ``<store>/.slurm``).
    workdir: str | None = None
    #: Store root (default ``$KS_PLATFORM_STORE``): read for the session's channel count.
    store: str | None = None
    env: dict[str, str] = {}
    #: More variables of the orchestrator's environment a job gets (names; e.g. ones ``dagster.yaml`` reads).
    export: list[str] = []
    poll_seconds: float = PydanticField(default=2.0, gt=0)
    #: A job that ended COMPLETED but whose step reported nothing fails after this long.
    exit_grace_seconds: float = PydanticField(default=30.0, ge=0)
    #: A job SLURM ended (TIMEOUT, CANCELLED, …) whose step may still be reporting its interruption waits this long
    #: before the health check fails it (a step killed outright never reports).
    failure_grace_seconds: float = PydanticField(default=10.0, ge=0)

    def store_root(self) -> str:
        return self.store or os.environ.get(STORE_ENV, "data/store")

    def job_dir(self) -> Path:
        return Path(self.workdir or os.path.join(self.store_root(), ".slurm")).absolute()


def load_slurm_settings(config: dict[str, Any]) -> SlurmSettings:
    """Settings from executor config: ``settings_file`` (or ``$KS_PLATFORM_SLURM``) or inline ``settings``."""
    inline = config.get("settings")
    path = config.get("settings_file") or (None if inline else os.environ.get(SLURM_SETTINGS_ENV))
    if inline and path:
        raise PlatformConfigError(f"executor config: give either settings_file or settings, not both ({path})")
    source = path or "executor config (execution.config.settings)"
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise PlatformConfigError(
                f"{path}: cannot read the SLURM settings ({exc}). Fix: correct the file or {SLURM_SETTINGS_ENV}"
            ) from None
        inline = loaded.get("slurm", loaded) if isinstance(loaded, dict) else loaded
    try:
        return SlurmSettings.model_validate(inline or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PlatformConfigError(
            f"{source}: bad SLURM settings: {problems}. "
            "Fix: see SlurmSettings in ks_platform/execution/slurm_executor.py"
        ) from None


@dataclass(frozen=True)
class JobRequest:
    """One step as a batch job: its partition, GRES, limits and the environment it gets."""

    partition: str
    gres: str | None
    time_limit: str
    mem: str
    cpus: int
    env: dict[str, str]

    def describe(self) -> str:
        return (
            f"partition {self.partition}"
            + (f", --gres={self.gres}" if self.gres else "")
            + f", {self.cpus} CPU, {self.mem}, {self.time_limit}"
        )


def read_channel_count(store_root: str, session: str | None) -> int | None:
    """Sorted channels of a session from its probe map in the store (None when not readable yet)."""
    if not session:
        return None
    try:
        manifest = read_json(SessionStore(Path(store_root).absolute(), session).probe_dir / PROBE_MANIFEST)
        return int(manifest["n_sorted_channels"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plan_job(settings: SlurmSettings, needs_gpu: bool, n_channels: int | None = None) -> JobRequest:
    """Partition, GRES, limits and sorter environment of a step (GPU steps: batch size from the GPU's memory)."""
    if not needs_gpu:
        return JobRequest(
            settings.cpu_partition or settings.gpu_partition,
            None,
            settings.cpu_time_limit,
            settings.cpu_mem,
            settings.cpu_cpus_per_task,
            {BACKEND_ENV: "cpu"},
        )
    env = {
        BACKEND_ENV: "cpu" if settings.backend == "cpu" else f"{settings.backend}:0",
        REQUESTED_GRES_ENV: settings.gres,
    }
    if settings.gpu_memory_mib and settings.backend != "cpu":
        channels = n_channels or CONSERVATIVE_CHANNELS
        if settings.gpu_memory_mib * MIB < gpu_memory_needed_bytes(channels):
            raise PlatformConfigError(
                f"SLURM settings: the GPUs of partition {settings.gpu_partition} ({settings.gpu_memory_mib} MiB) "
                f"are too small for {channels} channels (≥ {gpu_memory_needed_bytes(channels) // MIB} MiB). "
                "Fix: use a partition with larger GPUs"
            )
        env[BATCH_SIZE_ENV] = str(recommended_batch_size(settings.gpu_memory_mib * MIB, channels))
    return JobRequest(
        settings.gpu_partition, settings.gres, settings.time_limit, settings.mem, settings.cpus_per_task, env
    )


#: What a step job gets of the orchestrator's environment besides what the executor sets (prefixes and names).
EXPORTED_PREFIXES = ("KS_PLATFORM_", "DAGSTER_")
EXPORTED_NAMES = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "SLURM_CONF")


def exported_names(env: dict[str, str], extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The variables of ``env`` a job may see (``--export`` allow-list): the platform's, Dagster's, a few basics
    and ``extra``; every other variable of the orchestrator (tokens, cloud keys, …) stays out of the job."""
    allowed = set(EXPORTED_NAMES) | set(extra)
    return sorted(name for name in env if name in allowed or name.startswith(EXPORTED_PREFIXES))


def sbatch_args(
    settings: SlurmSettings, job: JobRequest, name: str, output: Path, exported: list[str] | None = None
) -> list[str]:
    """The ``sbatch`` options of one step (never requeued by SLURM: Dagster owns retries); ``exported`` are the
    names of the variables the job gets (``--export``; values from sbatch's environment), none but SLURM's when
    empty."""
    args = [
        f"--job-name={name}",
        f"--partition={job.partition}",
        f"--time={job.time_limit}",
        f"--mem={job.mem}",
        f"--cpus-per-task={job.cpus}",
        "--ntasks=1",
        "--nodes=1",
        "--no-requeue",
        f"--output={output}",
        "--export=" + (",".join(exported) if exported else "NONE"),
        "--parsable",
    ]
    if job.gres:
        args.append(f"--gres={job.gres}")
    if settings.account:
        args.append(f"--account={settings.account}")
    if settings.qos:
        args.append(f"--qos={settings.qos}")
    return args + list(settings.extra_sbatch_args)


def job_script(settings: SlurmSettings, gpu: bool) -> str:
    """The batch script: ``dagster api execute_step`` in the venv, or in the image through Apptainer."""
    step = "-m dagster api execute_step"
    if settings.apptainer_image:
        flags = {"cuda": " --nv", "rocm": " --rocm"}.get(settings.backend, "") if gpu else ""
        command = (
            f"exec {shlex.quote(settings.apptainer)} exec{flags} {shlex.quote(settings.apptainer_image)} python {step}"
        )
    else:
        command = f"exec {shlex.quote(settings.python)} {step}"
    return f"#!/bin/bash\n# ks_platform step job (ks_platform/execution/slurm_executor.py)\n{command}\n"


def file_digest(path: str) -> str:
    """``sha256:…`` of a file (the Apptainer image that ran)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def run_slurm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a SLURM command (``sbatch``, ``scontrol`` …) and return what it printed (never raises on exit codes)."""
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS, env=env, check=False
    )


@dataclass(frozen=True)
class JobStatus:
    """What SLURM says about a job: state, reason, node list, exit code; ``None`` state when it is unknown."""

    state: str | None
    reason: str = ""
    nodes: str = ""
    exit_code: str = ""
    source: str = "scontrol"

    def describe(self) -> str:
        reason = f", reason {self.reason}" if self.reason and self.reason != "None" else ""
        nodes = f" on {self.nodes}" if self.nodes and self.nodes != "(null)" else ""
        return f"{self.state}{reason}{nodes}, exit code {self.exit_code or '?'}"


def parse_scontrol(text: str) -> dict[str, str]:
    """``scontrol show job -o`` output (``Key=Value`` pairs) as a dict."""
    return dict(match.groups() for match in re.finditer(r"(\w+(?:/\w+)?)=(\S*)", text))


def job_status(job_id: str) -> JobStatus:
    """The job's state from slurmctld, or from accounting (``sacct``) once slurmctld has purged it."""
    shown = run_slurm("scontrol", "show", "job", "-o", job_id)
    if shown.returncode == 0 and shown.stdout.strip():
        fields = parse_scontrol(shown.stdout)
        state = fields.get("JobState", "").split("+")[0] or None
        return JobStatus(state, fields.get("Reason", ""), fields.get("NodeList", ""), fields.get("ExitCode", ""))
    acct = run_slurm("sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,Reason,NodeList,ExitCode")
    line = acct.stdout.strip().splitlines()[0] if acct.returncode == 0 and acct.stdout.strip() else ""
    if line:
        state, reason, nodes, exit_code = (line.split("|") + ["", "", "", ""])[:4]
        return JobStatus(state.split()[0], reason, nodes, exit_code, source="sacct")
    return JobStatus(None, (shown.stderr or acct.stderr).strip()[:300], source="none")


def output_tail(path: Path, lines: int = FAILURE_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


@dataclass
class _Job:
    """One submitted step attempt."""

    step_key: str
    step_context: Any
    job_id: str | None = None
    output: Path | None = None
    request: JobRequest | None = None
    error: str | None = None
    error_reported: bool = False
    finished: bool = False
    completed_at: float | None = None
    ended_at: float | None = None


class SlurmStepHandler(StepHandler):
    """Submits each step as a batch job and follows it until SLURM says it ended."""

    def __init__(self, settings: SlurmSettings) -> None:
        super().__init__()
        self.settings = settings
        self._jobs: dict[str, _Job] = {}

    @property
    def name(self) -> str:
        return "SlurmStepHandler"

    @staticmethod
    def _step_key(ctx: StepHandlerContext) -> str:
        keys = ctx.execute_step_args.step_keys_to_execute or []
        assert len(keys) == 1, "one step per launch"
        return keys[0]

    def _event(self, job: _Job, message: str, metadata: dict[str, Any] | None = None) -> DagsterEvent:
        return DagsterEvent.engine_event(job.step_context, message, EngineEventData(metadata=metadata or {}))

    def launch_step(self, step_handler_context: StepHandlerContext) -> Iterator[DagsterEvent]:
        ctx = step_handler_context
        step_key = self._step_key(ctx)
        run = ctx.dagster_run
        job = _Job(step_key, ctx.get_step_context(step_key))
        self._jobs[step_key] = job
        known = ctx.execute_step_args.known_state
        attempt = known.get_retry_state().get_attempt_count(step_key) if known else 0
        session = run.tags.get(PARTITION_TAG)
        settings = self.settings
        try:
            needs_gpu = step_needs_gpu(settings.store_root(), session, dict(ctx.step_tags[step_key]))
            channels = read_channel_count(settings.store_root(), session) if needs_gpu else None
            job.request = plan_job(settings, needs_gpu, channels)
            folder = settings.job_dir() / run.run_id
            folder.mkdir(parents=True, exist_ok=True)
            base = f"{re.sub(r'[^A-Za-z0-9_.-]', '-', step_key)[:60]}-{attempt}"
            script = folder / f"{base}.sh"
            script.write_text(job_script(settings, needs_gpu))
            job.output = folder / f"{base}.out"
            own = {  # what this executor sets for the job (always exported)
                **settings.env,
                **job.request.env,
                "DAGSTER_RUN_JOB_NAME": run.job_name,
                "DAGSTER_RUN_STEP_KEY": step_key,
                EXECUTOR_ENV: SLURM_EXECUTOR_NAME,
            }
            own.update({item["name"]: item["value"] for item in ctx.execute_step_args.get_command_env()})
            if settings.apptainer_image:
                own.update(
                    {
                        ENVIRONMENT_KIND_ENV: "apptainer",
                        IMAGE_ENV: settings.apptainer_image,
                        IMAGE_DIGEST_ENV: file_digest(settings.apptainer_image),
                    }
                )
            else:
                own[ENVIRONMENT_KIND_ENV] = "venv"
            env = {**os.environ, **own}
            name = f"ks_platform:{run.run_id[:8]}:{step_key}"[:120]
            done = run_slurm(
                "sbatch",
                *sbatch_args(settings, job.request, name, job.output, exported_names(env, [*settings.export, *own])),
                f"--chdir={folder}",
                str(script),
                env=env,
            )
            if done.returncode != 0:
                raise PlatformConfigError(
                    f"sbatch refused {step_key} ({job.request.describe()}): {done.stderr.strip()[-500:]}. "
                    "Fix: check the partition, GRES and limits in the SLURM settings against "
                    "`sinfo`/`scontrol show partition`"
                )
            job.job_id = done.stdout.strip().split(";")[0]
        except (OSError, subprocess.SubprocessError, PlatformConfigError) as exc:
            job.error = (
                str(exc)
                if isinstance(exc, PlatformConfigError)
                else f"could not submit {step_key} to SLURM ({type(exc).__name__}: {exc}). "
                "Fix: install the SLURM client (sbatch) and check SLURM_CONF"
            )
            yield self._event(job, f"{step_key} was not submitted: {job.error}")
            return
        yield DagsterEvent.step_worker_starting(
            job.step_context,
            message=f"Submitted {step_key} as SLURM job {job.job_id} ({job.request.describe()})",
            metadata={
                "SLURM job id": job.job_id,
                "partition": job.request.partition,
                "gres": job.request.gres or "none",
                "backend": job.request.env[BACKEND_ENV],
                "batch_size": job.request.env.get(BATCH_SIZE_ENV, "Kilosort default"),
                "job output": str(job.output),
            },
        )

    def check_step_health(self, step_handler_context: StepHandlerContext) -> CheckStepHealthResult:
        job = self._jobs.get(self._step_key(step_handler_context))
        if job is None or job.error_reported or (job.finished and job.error is None):
            return CheckStepHealthResult.healthy()
        if job.error is not None:
            job.error_reported = True
            return CheckStepHealthResult.unhealthy(job.error)
        status = job_status(job.job_id)  # type: ignore[arg-type]
        if status.state in ACTIVE_STATES:
            return CheckStepHealthResult.healthy()
        if status.state == "COMPLETED":
            # Its success/failure event is normally in the database already; give a lagging one the grace period.
            job.completed_at = job.completed_at or time.monotonic()
            if time.monotonic() - job.completed_at < self.settings.exit_grace_seconds:
                return CheckStepHealthResult.healthy()
            reason = (
                f"SLURM job {job.job_id} of {job.step_key} completed but its step reported no outcome within "
                f"{self.settings.exit_grace_seconds} s (its events did not reach the instance database. "
                "Fix: check that compute nodes reach the run's PostgreSQL)"
            )
        elif status.state is None:
            reason = f"SLURM no longer knows job {job.job_id} of {job.step_key} ({status.reason})"
        else:
            job.ended_at = job.ended_at or time.monotonic()
            if time.monotonic() - job.ended_at < self.settings.failure_grace_seconds:
                return CheckStepHealthResult.healthy()  # its own failure event may be on its way
            reason = f"SLURM job {job.job_id} of {job.step_key} ended {status.describe()}"
        tail = output_tail(job.output) if job.output else ""
        if tail:
            reason += f". Last lines of its output ({job.output}):\n{tail}"
        job.error_reported = job.finished = True
        return CheckStepHealthResult.unhealthy(reason)

    def terminate_step(self, step_handler_context: StepHandlerContext) -> Iterator[DagsterEvent]:
        job = self._jobs.get(self._step_key(step_handler_context))
        if job is None or job.job_id is None or job.finished:
            return
        yield self._event(job, f"Cancelling SLURM job {job.job_id} of {job.step_key}")
        self._cancel(job)

    def _cancel(self, job: _Job) -> None:
        job.finished = True
        if job.job_id:
            done = run_slurm("scancel", job.job_id)
            if done.returncode != 0:
                self._event(job, f"scancel {job.job_id} failed: {done.stderr.strip()[:300]}")

    def finish_step(self, step_key: str, failed: bool = False) -> None:
        """The step reported an outcome: its job is done (or finishing) — nothing to cancel.

        A step that SLURM interrupted (time limit, preemption, scancel) reports its own failure
        (``DagsterExecutionInterruptedError``: SLURM's SIGTERM reaches it first); SLURM's state and reason for it are
        logged right after, on the step, as an engine event.
        """
        job = self._jobs.get(step_key)
        if job is None or job.finished:
            return
        job.finished = True
        if failed and job.job_id:
            deadline = time.monotonic() + self.settings.failure_grace_seconds + 20
            status = job_status(job.job_id)
            while status.state in ACTIVE_STATES and time.monotonic() < deadline:  # COMPLETING while SLURM kills it
                time.sleep(0.5)
                status = job_status(job.job_id)
            if status.state is not None and status.state not in ACTIVE_STATES and status.state != "COMPLETED":
                self._event(
                    job,
                    f"SLURM job {job.job_id} of {step_key} ended {status.describe()}: SLURM interrupted the step",
                    {"SLURM job id": job.job_id, "state": status.state, "reason": status.reason},
                )

    def finish_run(self) -> None:
        """End of the run (also on errors or termination): cancel every job that may still be queued or running."""
        for job in self._jobs.values():
            if not job.finished:
                self._cancel(job)


class SlurmExecutor(FinishingStepExecutor):
    """Steps as SLURM jobs; the handler hears when steps end (to clean up) and when the run ends (to scancel)."""

    def __init__(self, handler: SlurmStepHandler, retries: RetryMode, max_concurrent: int | None = None) -> None:
        super().__init__(handler, retries, handler.settings.poll_seconds, max_concurrent)


@dg.executor(
    name=SLURM_EXECUTOR_NAME,
    config_schema={
        "settings_file": Field(
            StringSource, is_required=False, description=f"YAML with a slurm: section (default: ${SLURM_SETTINGS_ENV})."
        ),
        "settings": Field(
            Permissive(), is_required=False, description="The SLURM settings inline (fields of SlurmSettings)."
        ),
        "retries": get_retries_config(),
        "max_concurrent": Field(
            IntSource, is_required=False, description="Jobs of one run queued or running at a time."
        ),
    },
    requirements=multiple_process_executor_requirements(),
)
def slurm_executor(init_context: dg.InitExecutorContext) -> SlurmExecutor:
    """Runs each step as a SLURM batch job (GPU steps with --gres on the GPU partition), see docs/decisions.md."""
    config = init_context.executor_config
    settings = load_slurm_settings(config)
    require_shared_storage(init_context.instance, "SLURM executor", "SLURM jobs on other nodes")
    retries = RetryMode.from_config(config["retries"])
    assert retries is not None
    return SlurmExecutor(SlurmStepHandler(settings), retries=retries, max_concurrent=config.get("max_concurrent"))

"""A SLURM executor: the sort is a batch job with ``--gres`` on the GPU partition; the other steps of a run share one job.

Built like the Docker executor (``StepDelegatingExecutor`` + a step handler; a step runs ``dagster api execute_step``
and reports to the shared PostgreSQL instance storage), over SLURM's own commands: ``sbatch`` to submit, ``scontrol
show job`` (``sacct`` once slurmctld has forgotten the job) to watch, ``scancel`` to stop. Why not submitit /
dagster-slurm / Pipes, and why the CPU steps share a job: docs/decisions.md.

* **CPU steps** (``cpu_steps``): ``run_job`` (default) hands them to one job of the run, a runner
  (:func:`serve_steps`) that imported Dagster and the code location once and forks each step; it is started when a CPU
  step is due and ends after ``cpu_idle_seconds`` without one, so it is not held through the sort. ``step_jobs``
  submits one job per step; ``orchestrator`` runs the same runner on the run worker's machine.
* **Attempts**: each step attempt has a token; ``<workdir>/<run>/<step>.attempt`` names the live one. When the
  executor gives up on an attempt (failed health check, cancel, retry, end of run) it rewrites that file and
  scancels the job; the store refuses a publish by any other attempt (:func:`ks_platform.core.store.live_attempt`),
  so a job that outlives its step (its node stopped answering) never replaces outputs.
* **Environment**: a job gets ``KS_PLATFORM_*``, a few basics and the names in ``export``; nothing else of the
  orchestrator's environment. The variables the instance's ``dagster.yaml`` reads must be named there.
* **Logs**: each step's job output is attached to the run; when the sort's job starts, the GRES slurmctld allocated
  (``scontrol -d show job``: ``JOB_GRES`` and the node's ``GRES=…(IDX:…)``) is logged.
* **End of run**: every job still queued or running is scancelled and the run's concurrency slots are given back
  (:class:`~ks_platform.execution.step_executor.FinishingStepExecutor`), so a terminated run keeps no ``kilosort``
  pool slot.

A job that ends in any final state but COMPLETED fails its step (the op's retry policy then applies); how each ending
is reported: docs/decisions.md, "SLURM: how a job's end reaches the step". Jobs are submitted ``--no-requeue``.

``python -m ks_platform.execution.slurm_executor check [--submit]`` checks a deployment (docs/slurm.md, "Setting up").
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from pydantic import ValidationError

from ks_platform.core.errors import PlatformConfigError
from ks_platform.core.hardware import recommended_batch_size
from ks_platform.core.names import (
    BACKEND_ENV,
    BATCH_SIZE_ENV,
    DEPLOYMENT_ENV,
    ENVIRONMENT_KIND_ENV,
    EXECUTOR_ENV,
    IMAGE_DIGEST_ENV,
    IMAGE_ENV,
    PARTITION_TAG,
    REQUESTED_GRES_ENV,
    SLURM_EXECUTOR_NAME,
)
from ks_platform.core.store import ATTEMPT_FILE_ENV, ATTEMPT_TOKEN_ENV
from ks_platform.dagster_internals import (
    STEP_COMMAND_MODULE,
    CheckStepHealthResult,
    DagsterEvent,
    EngineEventData,
    RetryMode,
    StepHandler,
    StepHandlerContext,
    execute_step_in_this_process,
    multiple_process_executor_requirements,
)
from ks_platform.execution.deployment import SlurmSettings, deployment_from_env, load_deployment
from ks_platform.execution.placement import (
    CONSERVATIVE_CHANNELS,
    MIB,
    gpu_memory_needed_bytes,
    sorted_channel_count,
    step_needs_gpu,
)
from ks_platform.execution.step_executor import FinishingStepExecutor, executor_config_schema, require_shared_storage

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
#: Reasons a PENDING job never leaves PENDING by waiting: the request exceeds what the partition, account or QOS
#: allow (SLURM accepts such a job unless ``EnforcePartLimits`` is set). The step fails at once, naming the settings.
NEVER_STARTS = frozenset(
    {
        "PartitionConfig",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
        "DependencyNeverSatisfied",
    }
)
FAILURE_TAIL_LINES = 15
#: Characters of a step's job output attached to the run (its end: where the cause is).
OUTPUT_ATTACH_CHARS = 20_000
COMMAND_TIMEOUT_SECONDS = 60
#: Seconds the executor waits for a publish in progress before it rewrites a step's attempt file anyway.
ATTEMPT_LOCK_SECONDS = 30.0


def resolve_slurm_settings(config: dict[str, Any]) -> tuple[SlurmSettings, str]:
    """Settings from executor config (``settings_file`` or inline ``settings``), else the deployment file's ``slurm:``
    (``$KS_PLATFORM_DEPLOYMENT``, or an earlier version's ``$KS_PLATFORM_SLURM``), else the defaults; with where they
    came from, for messages."""
    inline = config.get("settings")
    path = config.get("settings_file")
    if inline and path:
        raise PlatformConfigError(f"executor config: give either settings_file or settings, not both ({path})")
    if path:
        deployment = load_deployment(path)
        if deployment.slurm is None:
            raise PlatformConfigError(
                f"{path}: engine {deployment.engine} has no 'slurm:' section. Fix: add one (see "
                "deploy/deployment.example.yaml)"
            )
        return deployment.slurm, str(path)
    if not inline:
        deployment = deployment_from_env()
        if deployment is not None and deployment.slurm is not None:
            return deployment.slurm, deployment.source
    try:
        settings = SlurmSettings.model_validate(inline or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PlatformConfigError(
            "executor config (execution.config.settings): bad SLURM settings: "
            f"{problems}. Fix: see deploy/slurm.example.yaml (every key, its default)"
        ) from None
    return settings, "executor config (execution.config.settings)" if inline else "the default SLURM settings"


def load_slurm_settings(config: dict[str, Any]) -> SlurmSettings:
    """The SLURM settings of an executor config (:func:`resolve_slurm_settings`)."""
    return resolve_slurm_settings(config)[0]


@dataclass(frozen=True)
class JobRequest:
    """One job: its partition, GRES, limits and the environment it gets."""

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

    def settings_keys(self) -> str:
        """The settings that size this job (named when sbatch refuses it)."""
        if self.gres:
            return "gpu_partition, gres, mem, cpus_per_task, time_limit"
        return "cpu_partition, cpu_mem, cpu_cpus_per_task, cpu_time_limit"


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


#: What a job gets of the orchestrator's environment besides what the executor sets and ``export`` names.
EXPORTED_PREFIXES = ("KS_PLATFORM_",)
EXPORTED_NAMES = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "SLURM_CONF", "DAGSTER_HOME")


def exported_names(env: dict[str, str], extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The variables of ``env`` a job may see (``--export`` allow-list): the platform's, a few basics and ``extra``;
    every other variable of the orchestrator (database passwords, tokens, cloud keys, …) stays out of the job."""
    allowed = set(EXPORTED_NAMES) | set(extra)
    return sorted(name for name in env if name in allowed or name.startswith(EXPORTED_PREFIXES))


#: Parts of the instance's configuration a step process loads (where ``{env: NAME}`` makes it read a variable).
INSTANCE_STEP_CONFIG = (
    "storage_data",
    "run_storage_data",
    "event_storage_data",
    "schedule_storage_data",
    "local_artifact_storage_data",
    "compute_logs_data",
    "secrets_loader_data",
    "defs_state_storage_data",
)


def _env_references(value: Any) -> set[str]:
    if isinstance(value, dict):
        if set(value) == {"env"} and isinstance(value["env"], str):
            return {value["env"]}
        return set().union(*(_env_references(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(_env_references(item) for item in value))
    return set()


def instance_env_names(instance: dg.DagsterInstance) -> list[str]:
    """Variables a step needs to open this instance: the ``{env: NAME}`` of its storage configuration."""
    ref = instance.get_ref()
    names: set[str] = set()
    for name in INSTANCE_STEP_CONFIG:
        data = getattr(ref, name, None)
        if data is not None and data.config_yaml:
            names |= _env_references(yaml.safe_load(data.config_yaml))
    return sorted(names)


def check_instance_env(instance: dg.DagsterInstance, settings: SlurmSettings, source: str) -> None:
    """Refuse to start when a job could not open the instance: a variable ``dagster.yaml`` reads is not exported."""
    needed = instance_env_names(instance)
    allowed = set(exported_names({name: "" for name in needed}, settings.export)) | set(settings.env)
    missing = [name for name in needed if name not in allowed]
    if missing:
        raise PlatformConfigError(
            f"{instance.root_directory}/dagster.yaml reads {', '.join(missing)} from the environment, and SLURM jobs "
            f"get only the variables their settings name. Fix: add {', '.join(missing)} to `export:` in {source} "
            "(they then reach every job; a password can stay out of jobs: leave it empty and give libpq a PGPASSFILE "
            "on the shared filesystem)"
        )


def sbatch_args(
    settings: SlurmSettings, job: JobRequest, name: str, output: Path, exported: list[str] | None = None
) -> list[str]:
    """The ``sbatch`` options of one job (never requeued by SLURM: Dagster owns retries); ``exported`` are the
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


#: The Python arguments of a step job and of the CPU-step runner.
STEP_COMMAND = ("-m", "dagster", "api", "execute_step")
RUNNER_MODULE = "ks_platform.execution.slurm_executor"


def runner_command(folder: Path, idle_seconds: float) -> tuple[str, ...]:
    return ("-m", RUNNER_MODULE, "serve-steps", str(folder), "--idle-seconds", str(idle_seconds))


def job_script(settings: SlurmSettings, gpu: bool, python_args: tuple[str, ...] = STEP_COMMAND) -> str:
    """The batch script: ``python <python_args>`` in the venv, or in the image through Apptainer."""
    arguments = " ".join(shlex.quote(arg) for arg in python_args)
    if settings.apptainer_image:
        flags = {"cuda": " --nv", "rocm": " --rocm"}.get(settings.backend, "") if gpu else ""
        command = (
            f"exec {shlex.quote(settings.apptainer)} exec{flags} {shlex.quote(settings.apptainer_image)} "
            f"python {arguments}"
        )
    else:
        command = f"exec {shlex.quote(settings.python_path())} {arguments}"
    return f"#!/bin/bash\n# ks_platform job (ks_platform/execution/slurm_executor.py)\n{command}\n"


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
    """``scontrol show job -o`` output (``Key=Value`` pairs) as a dict (a repeated key keeps its last value)."""
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


def granted_gres(job_id: str) -> dict[str, str]:
    """The GRES slurmctld allocated to a running job: ``JOB_GRES`` and the node's ``GRES=gpu:1(IDX:0)`` of
    ``scontrol -d show job`` (SLURM 22.05 has no AllocTRES there; ``TresPerNode`` is the request)."""
    shown = run_slurm("scontrol", "-d", "show", "job", "-o", job_id)
    fields = parse_scontrol(shown.stdout) if shown.returncode == 0 else {}
    return {name: fields[name] for name in ("JOB_GRES", "GRES", "NodeList") if fields.get(name)}


def output_tail(path: Path, lines: int = FAILURE_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def read_output(path: Path, chars: int = OUTPUT_ATTACH_CHARS) -> str:
    """The end of a job's output file ('' when there is none)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - chars * 2))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return text[-chars:]


def set_live_attempt(path: Path, content: str, wait_seconds: float = ATTEMPT_LOCK_SECONDS) -> bool:
    """Write the step's attempt file under an exclusive ``flock`` (a publish holds it shared, so one in progress
    ends first); False when a publisher kept the lock ``wait_seconds`` (written anyway)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+") as handle:
        deadline = time.monotonic() + wait_seconds
        locked = False
        while not locked:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(content + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return locked


# -- the CPU-step runner (runs in the run's CPU job, or on the orchestrator) --------------------------------------
REQUESTS = "requests"
CLOSED_REQUESTS = "requests.closed"
STOP_FILE = "stop"
#: Imported once by the runner, before it forks steps (the step's own imports then find them loaded).
RUNNER_PRELOAD = (STEP_COMMAND_MODULE, "ks_platform.definitions")
#: Seconds a cancelled step gets after SIGTERM (to report its interruption) before SIGKILL.
CANCEL_KILL_SECONDS = 20.0


def _fork_step(folder: Path, name: str, env: dict[str, str]) -> int:
    """Fork ``dagster api execute_step`` with ``env``, its output in ``<name>.out``; the child's pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        try:
            os.setpgid(pid, pid)  # also in the child: whichever runs first, a cancel finds the group
        except OSError:
            pass
        return pid
    code = 1
    try:
        os.setpgid(0, 0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        fd = os.open(folder / f"{name}.out", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        slurm = {name: value for name, value in os.environ.items() if name.startswith(("SLURM_", "SLURMD_"))}
        os.environ.clear()
        os.environ.update({**slurm, **env})  # the job's SLURM_JOB_ID … (lineage) and the step's own variables
        execute_step_in_this_process()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - the child reports whatever ended it, then exits
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _write_atomic(path: Path, text: str) -> None:
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(text)
    os.rename(staged, path)


def serve_steps(folder: Path, idle_seconds: float, poll_seconds: float = 0.2) -> int:
    """Run the CPU steps handed to ``folder/requests`` (``<name>.json``: the step's environment) as forked
    ``dagster api execute_step`` processes, write ``<name>.exit`` when each ends, SIGTERM one whose ``<name>.cancel``
    appears; end on ``stop``, or after ``idle_seconds`` without a step (the queue is first renamed to
    ``requests.closed``, so a request handed in at that moment is still run or, if too late, refused to the executor).
    """
    began = time.monotonic()
    for module in RUNNER_PRELOAD:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - the steps import it themselves then
            print(f"could not preload {module}: {exc}", flush=True)
    print(f"CPU-step runner on {socket.gethostname()} ready after {time.monotonic() - began:.1f} s", flush=True)
    requests, closed = folder / REQUESTS, folder / CLOSED_REQUESTS
    running: dict[int, str] = {}
    cancelled: dict[str, float] = {}
    started: set[str] = set()
    last_busy = time.monotonic()
    while True:
        now = time.monotonic()
        if (folder / STOP_FILE).exists():
            for pid, name in running.items():
                _signal_step(pid, signal.SIGTERM)
                print(f"stopping {name} (the run ended)", flush=True)
            deadline = now + CANCEL_KILL_SECONDS
            while running and time.monotonic() < deadline:
                _reap(folder, running)
                time.sleep(poll_seconds)
            for pid in running:
                _signal_step(pid, signal.SIGKILL)
            return 0
        queue = requests if requests.is_dir() else closed
        for path in sorted(queue.glob("*.json")):
            if path.stem not in started:
                started.add(path.stem)
                if (folder / f"{path.stem}.cancel").exists():  # given up on before it started
                    _write_atomic(folder / f"{path.stem}.exit", json.dumps({"code": -signal.SIGTERM}))
                    continue
                pid = _fork_step(folder, path.stem, json.loads(path.read_text()))
                running[pid] = path.stem
                _write_atomic(folder / f"{path.stem}.started", json.dumps({"pid": pid, "host": socket.gethostname()}))
                print(f"started {path.stem} (pid {pid})", flush=True)
        _reap(folder, running)
        for pid, name in running.items():
            if name not in cancelled and (folder / f"{name}.cancel").exists():
                cancelled[name] = now
                _signal_step(pid, signal.SIGTERM)
            elif name in cancelled and now - cancelled[name] > CANCEL_KILL_SECONDS:
                _signal_step(pid, signal.SIGKILL)
        if running:
            last_busy = now
        elif queue is requests and now - last_busy >= idle_seconds:
            os.rename(requests, closed)  # from now on the executor starts a new runner
            print(f"idle for {idle_seconds} s: closed the queue", flush=True)
            continue
        elif queue is closed:
            return 0
        time.sleep(poll_seconds)


def _signal_step(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def _reap(folder: Path, running: dict[int, str]) -> None:
    while running:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        name = running.pop(pid, None)
        if name is not None:
            code = os.waitstatus_to_exitcode(status)
            _write_atomic(folder / f"{name}.exit", json.dumps({"code": code}))
            print(f"{name} exited with code {code}", flush=True)


# -- the executor's side ------------------------------------------------------------------------------------------
@dataclass
class _Runner:
    """One CPU-step runner of the run: its folder and its SLURM job (or its process on this machine)."""

    folder: Path
    job_id: str | None = None
    process: subprocess.Popen | None = None
    closed: bool = False

    def describe(self) -> str:
        if self.process is not None:
            return f"the CPU-step runner on this machine (pid {self.process.pid}, {self.folder})"
        return f"the CPU-step job {self.job_id} of this run"

    def status(self) -> JobStatus:
        if self.process is None:
            return job_status(self.job_id or "")
        code = self.process.poll()
        if code is None:
            return JobStatus("RUNNING", source="process")
        return JobStatus("COMPLETED" if code == 0 else "FAILED", exit_code=str(code), source="process")

    def offer(self, name: str, env: dict[str, str]) -> bool:
        """Hand a step to the runner; False when it has closed its queue (start another)."""
        staged = self.folder / f".{name}.json.tmp"
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(env, handle)
        try:
            os.rename(staged, self.folder / REQUESTS / f"{name}.json")
            return True
        except FileNotFoundError:
            staged.unlink(missing_ok=True)
            self.closed = True
            return False


@dataclass
class _Job:
    """One step attempt: its own job, or a request to the run's CPU-step runner."""

    step_key: str
    step_context: Any
    name: str = ""
    job_id: str | None = None
    runner: _Runner | None = None
    output: Path | None = None
    request: JobRequest | None = None
    attempt_file: Path | None = None
    token: str = ""
    error: str | None = None
    error_reported: bool = False
    finished: bool = False
    output_attached: bool = False
    grant_logged: bool = False
    revoked: bool = False
    completed_at: float | None = None
    ended_at: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def where(self) -> str:
        if self.runner is not None:
            return self.runner.describe()
        return f"SLURM job {self.job_id}"


def _exit_code(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["code"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class SlurmStepHandler(StepHandler):
    """Submits steps as batch jobs (or to the run's CPU-step runner) and follows them until SLURM says they ended."""

    def __init__(self, settings: SlurmSettings) -> None:
        super().__init__()
        self.settings = settings
        self._jobs: dict[str, _Job] = {}
        self._runners: list[_Runner] = []

    @property
    def name(self) -> str:
        return "SlurmStepHandler"

    @staticmethod
    def _step_key(ctx: StepHandlerContext) -> str:
        keys = ctx.execute_step_args.step_keys_to_execute or []
        assert len(keys) == 1, "one step per launch"
        return keys[0]

    def _event(self, job: _Job, message: str, metadata: dict[str, Any] | None = None) -> DagsterEvent:
        """An engine event on the step (logged to the run when made)."""
        return DagsterEvent.engine_event(job.step_context, message, EngineEventData(metadata=metadata or {}))

    def _run_env(self, run: Any) -> dict[str, str]:
        """What every job of the run gets besides its step's own variables: the exported part of this environment."""
        settings = self.settings
        own = {**settings.env, "DAGSTER_RUN_JOB_NAME": run.job_name, EXECUTOR_ENV: SLURM_EXECUTOR_NAME}
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
        return {name: env[name] for name in exported_names(env, [*settings.export, *own])}

    def _submit(
        self, request: JobRequest, env: dict[str, str], name: str, script: Path, output: Path, what: str
    ) -> str:
        """``sbatch`` a job; its id (a clear error naming the settings when SLURM refuses it)."""
        done = run_slurm(
            "sbatch",
            *sbatch_args(self.settings, request, name, output, sorted(env)),
            f"--chdir={script.parent}",
            str(script),
            env={**os.environ, **env},  # sbatch reads its own settings (SLURM_CONF, SBATCH_*) from here
        )
        if done.returncode != 0:
            raise PlatformConfigError(
                f"sbatch refused {what} ({request.describe()}): {done.stderr.strip()[-500:]}. "
                f"Fix: check the partition, GRES and limits in the SLURM settings ({request.settings_keys()}) "
                "against `sinfo -o '%P %c %m %G'` / `scontrol show partition`"
            )
        return done.stdout.strip().split(";")[0]

    def _start_runner(self, run: Any, run_env: dict[str, str]) -> _Runner:
        settings = self.settings
        folder = settings.job_dir() / run.run_id / f"cpu-steps-{len(self._runners) + 1}"
        (folder / REQUESTS).mkdir(parents=True, mode=0o700)
        command = runner_command(folder, settings.cpu_idle_seconds)
        runner = _Runner(folder)
        if settings.cpu_steps == "orchestrator":
            with open(folder / "runner.out", "ab") as output:
                runner.process = subprocess.Popen(
                    [settings.python_path(), *command],
                    env=run_env,
                    cwd=folder,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        else:
            script = folder / "runner.sh"
            script.write_text(job_script(settings, False, command))
            name = f"ks_platform:{run.run_id[:8]}:cpu-steps-{len(self._runners) + 1}"
            runner.job_id = self._submit(
                plan_job(settings, False), run_env, name, script, folder / "runner.out", "the run's CPU-step job"
            )
        self._runners.append(runner)
        return runner

    def _hand_to_runner(self, run: Any, run_env: dict[str, str], name: str, env: dict[str, str]) -> _Runner:
        """Give a CPU step to the run's live runner, starting one when there is none (or it closed its queue)."""
        for _ in range(3):
            runner = next((r for r in reversed(self._runners) if not r.closed), None)
            if runner is not None and runner.status().state not in ACTIVE_STATES:
                runner.closed = True
                runner = None
            if runner is None:
                runner = self._start_runner(run, run_env)
            if runner.offer(name, env):
                return runner
        raise PlatformConfigError(
            f"the CPU-step runners of run {run.run_id} closed their queue three times in a row. "
            "Fix: raise cpu_idle_seconds in the SLURM settings"
        )

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
            channels = sorted_channel_count(settings.store_root(), session) if needs_gpu else None
            job.request = plan_job(settings, needs_gpu, channels)
            folder = settings.job_dir() / run.run_id
            folder.mkdir(parents=True, exist_ok=True)
            safe_key = re.sub(r"[^A-Za-z0-9_.-]", "-", step_key)[:60]
            job.name = f"{safe_key}-{attempt}"
            job.attempt_file = folder / f"{safe_key}.attempt"
            job.token = uuid.uuid4().hex
            set_live_attempt(job.attempt_file, job.token)
            run_env = self._run_env(run)
            env = {
                **run_env,
                **job.request.env,
                "DAGSTER_RUN_STEP_KEY": step_key,
                ATTEMPT_FILE_ENV: str(job.attempt_file),
                ATTEMPT_TOKEN_ENV: job.token,
            }
            env.update({item["name"]: item["value"] for item in ctx.execute_step_args.get_command_env()})
            if needs_gpu or settings.cpu_steps == "step_jobs":
                script = folder / f"{job.name}.sh"
                script.write_text(job_script(settings, needs_gpu))
                job.output = folder / f"{job.name}.out"
                name = f"ks_platform:{run.run_id[:8]}:{step_key}"[:120]
                job.job_id = self._submit(job.request, env, name, script, job.output, step_key)
                message = f"Submitted {step_key} as SLURM job {job.job_id} ({job.request.describe()})"
            else:
                job.runner = self._hand_to_runner(run, run_env, job.name, env)
                job.job_id = job.runner.job_id
                job.output = job.runner.folder / f"{job.name}.out"
                message = f"Handed {step_key} to {job.runner.describe()} ({job.request.describe()})"
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
            message=message,
            metadata={
                "SLURM job id": job.job_id or "none (this machine)",
                "cpu steps": "own job" if job.runner is None else settings.cpu_steps,
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
        reason = self._runner_step_problem(job) if job.runner is not None else self._job_problem(job)
        if reason is None:
            return CheckStepHealthResult.healthy()
        tail = output_tail(job.output) if job.output else ""
        if tail:
            reason += f". Last lines of its output ({job.output}):\n{tail}"
        self._give_up(job, reason)
        return CheckStepHealthResult.unhealthy(reason)

    def _waited(self, job: _Job, since: str, grace: float) -> bool:
        """True once ``grace`` seconds passed since this problem was first seen (its step may still report)."""
        first = getattr(job, since) or time.monotonic()
        setattr(job, since, first)
        return time.monotonic() - first >= grace

    @staticmethod
    def _never_starts(what: str, status: JobStatus, request: JobRequest) -> str | None:
        if status.state != "PENDING" or status.reason not in NEVER_STARTS:
            return None
        return (
            f"{what} will never start: SLURM keeps it PENDING with reason {status.reason} ({request.describe()}). "
            f"Fix: check the partition and limits in the SLURM settings ({request.settings_keys()}) against "
            "`sinfo -o '%P %c %m %G'` / `scontrol show partition`"
        )

    def _job_problem(self, job: _Job) -> str | None:
        """Why the step's own job cannot report any more (None: it may)."""
        status = job_status(job.job_id or "")
        assert job.request is not None
        never = self._never_starts(f"SLURM job {job.job_id} of {job.step_key}", status, job.request)
        if never:
            return never
        if status.state in ACTIVE_STATES:
            if status.state == "RUNNING" and job.request.gres and not job.grant_logged:
                job.grant_logged = True
                granted = granted_gres(job.job_id or "")
                self._event(
                    job,
                    f"SLURM job {job.job_id} of {job.step_key} runs on {granted.get('NodeList', status.nodes)}; "
                    f"slurmctld allocated GRES {granted.get('JOB_GRES', '?')} ({granted.get('GRES', '?')} on the node)",
                    {
                        "SLURM job id": job.job_id,
                        "granted gres": granted.get("JOB_GRES", ""),
                        "gres on the node": granted.get("GRES", ""),
                        "requested gres": job.request.gres,
                    },
                )
            return None
        if status.state == "COMPLETED":
            # Its success/failure event is normally in the database already; give a lagging one the grace period.
            if not self._waited(job, "completed_at", self.settings.exit_grace_seconds):
                return None
            return (
                f"SLURM job {job.job_id} of {job.step_key} completed but its step reported no outcome within "
                f"{self.settings.exit_grace_seconds} s (its events did not reach the instance database. "
                "Fix: check that compute nodes reach the run's PostgreSQL)"
            )
        if status.state is None:
            return f"SLURM no longer knows job {job.job_id} of {job.step_key} ({status.reason})"
        if not self._waited(job, "ended_at", self.settings.failure_grace_seconds):
            return None  # its own failure event may be on its way
        return f"SLURM job {job.job_id} of {job.step_key} ended {status.describe()}"

    def _runner_step_problem(self, job: _Job) -> str | None:
        """Why a step handed to a runner cannot report any more (None: it may)."""
        runner = job.runner
        assert runner is not None
        code = _exit_code(runner.folder / f"{job.name}.exit")
        if code == 0:
            if not self._waited(job, "completed_at", self.settings.exit_grace_seconds):
                return None
            return (
                f"{job.step_key} exited with code 0 in {runner.describe()} but reported no outcome within "
                f"{self.settings.exit_grace_seconds} s (its events did not reach the instance database. "
                "Fix: check that compute nodes reach the run's PostgreSQL)"
            )
        if code is not None:
            if not self._waited(job, "ended_at", self.settings.failure_grace_seconds):
                return None
            return f"{job.step_key} exited with code {code} in {runner.describe()}"
        status = runner.status()
        never = self._never_starts(runner.describe(), status, plan_job(self.settings, False))
        if never:
            return never
        if status.state in ACTIVE_STATES:
            return None
        if not self._waited(job, "ended_at", self.settings.failure_grace_seconds):
            return None
        return f"{runner.describe()} ended {status.describe()} before {job.step_key} did"

    def _give_up(self, job: _Job, reason: str) -> None:
        """The executor is done with this attempt: revoke its token (it can no longer publish), stop it, keep its
        output in the run."""
        job.error_reported = job.finished = job.revoked = True
        if job.attempt_file is not None:
            in_time = set_live_attempt(job.attempt_file, f"revoked {job.token}: {reason.splitlines()[0][:300]}")
            if not in_time:
                self._event(job, f"{job.attempt_file}: a publish held it {ATTEMPT_LOCK_SECONDS} s; revoked anyway")
        self._cancel(job)
        self._attach_output(job)

    def _cancel(self, job: _Job) -> None:
        if job.runner is not None:
            (job.runner.folder / f"{job.name}.cancel").touch()
            if job.runner.process is None and job.runner.status().state not in ACTIVE_STATES and job.runner.job_id:
                run_slurm("scancel", job.runner.job_id)  # a runner SLURM lost track of: make sure it is gone
            return
        if job.job_id:
            done = run_slurm("scancel", job.job_id)
            outcome = "done" if done.returncode == 0 else f"refused: {done.stderr.strip()[:300]}"
            self._event(job, f"scancel {job.job_id} ({job.step_key}): {outcome}", {"SLURM job id": job.job_id})

    def _attach_output(self, job: _Job) -> None:
        if job.output_attached or job.output is None:
            return
        job.output_attached = True
        text = read_output(job.output)
        if not text.strip():
            return
        self._event(
            job,
            f"Output of {job.step_key} in {job.where()} ({job.output})",
            {"job output": dg.MetadataValue.text(text), "file": dg.MetadataValue.path(str(job.output))},
        )

    def terminate_step(self, step_handler_context: StepHandlerContext) -> Iterator[DagsterEvent]:
        job = self._jobs.get(self._step_key(step_handler_context))
        if job is None or job.finished or (job.job_id is None and job.runner is None):
            return
        yield self._event(job, f"Cancelling {job.where()} of {job.step_key}: the run is being terminated")
        self._give_up(job, "the run was terminated")

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
        if failed and job.job_id and job.runner is None:
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
        elif job.runner is not None:
            deadline = time.monotonic() + 5
            while _exit_code(job.runner.folder / f"{job.name}.exit") is None and time.monotonic() < deadline:
                time.sleep(0.2)  # the step's process is ending: its last output lines come with it
        self._attach_output(job)

    def finish_run(self) -> None:
        """End of the run (also on errors or termination): nothing of it may publish or run on."""
        for job in self._jobs.values():
            if not job.finished:
                self._give_up(job, "the run ended")
            elif job.attempt_file is not None and not job.revoked:
                job.revoked = True
                set_live_attempt(job.attempt_file, f"ended {job.token}: the run ended", wait_seconds=5)
        for runner in self._runners:
            (runner.folder / STOP_FILE).touch()
        deadline = time.monotonic() + 5
        for runner in self._runners:
            while runner.status().state in ACTIVE_STATES and time.monotonic() < deadline:
                time.sleep(0.2)
            if runner.process is not None and runner.process.poll() is None:
                os.killpg(runner.process.pid, signal.SIGTERM)
            elif runner.job_id and runner.status().state in ACTIVE_STATES:
                run_slurm("scancel", runner.job_id)


class SlurmExecutor(FinishingStepExecutor):
    """Steps as SLURM jobs; the handler hears when steps end (to clean up) and when the run ends (to scancel)."""

    def __init__(self, handler: SlurmStepHandler, retries: RetryMode, max_concurrent: int | None = None) -> None:
        super().__init__(handler, retries, handler.settings.poll_seconds, max_concurrent)


@dg.executor(
    name=SLURM_EXECUTOR_NAME,
    config_schema=executor_config_schema(
        "settings_file",
        f"A deployment file with a slurm: section (default: ${DEPLOYMENT_ENV}).",
        "settings",
        "The SLURM settings inline (fields of SlurmSettings).",
        "Steps of one run queued or running at a time.",
    ),
    requirements=multiple_process_executor_requirements(),
)
def slurm_executor(init_context: dg.InitExecutorContext) -> SlurmExecutor:
    """Runs the sort as a SLURM batch job (--gres on the GPU partition) and the other steps in one job of the run,
    see docs/decisions.md."""
    config = init_context.executor_config
    settings, source = resolve_slurm_settings(config)
    require_shared_storage(init_context.instance, "SLURM executor", "SLURM jobs on other nodes")
    check_instance_env(init_context.instance, settings, source)
    retries = RetryMode.from_config(config["retries"])
    assert retries is not None
    return SlurmExecutor(SlurmStepHandler(settings), retries=retries, max_concurrent=config.get("max_concurrent"))


# -- `python -m ks_platform.execution.slurm_executor check`: a deployment's self-check ----------------------------
@dataclass
class Check:
    """One finding of :func:`check_deployment`."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def parse_memory_mib(text: str) -> int | None:
    """SLURM's ``--mem`` spelling (``8G``, ``512M``, ``1T``, plain MiB) in MiB."""
    match = re.fullmatch(r"(\d+)([KMGT]?)B?", text.strip().upper())
    if not match:
        return None
    factor = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[match.group(2)]
    return int(int(match.group(1)) * factor)


def parse_slurm_minutes(text: str) -> float | None:
    """A SLURM time (``--time`` / MaxTime: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``) in minutes;
    None for ``UNLIMITED``/``infinite`` or what does not parse."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        return None
    days, first, second, third = (int(part) if part else None for part in match.groups())
    if days is not None:  # D-H[:M[:S]]
        return days * 1440 + (first or 0) * 60 + (second or 0) + (third or 0) / 60
    if third is not None:  # H:M:S
        return (first or 0) * 60 + (second or 0) + third / 60
    return (first or 0) + (second or 0) / 60  # M[:S]


def _partition_max_minutes(partition: str) -> float | None:
    done = run_slurm("sinfo", "-h", "-p", partition, "-o", "%l")
    lines = done.stdout.split() if done.returncode == 0 else []
    return parse_slurm_minutes(lines[0]) if lines else None


def _partition_nodes(partition: str) -> list[dict[str, str]]:
    """``sinfo`` per node of a partition: CPUs, memory (MiB) and GRES."""
    done = run_slurm("sinfo", "-h", "-N", "-p", partition, "-o", "%N|%c|%m|%G")
    rows = []
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        node, cpus, memory, gres = (line.split("|") + ["", "", "", ""])[:4]
        rows.append({"node": node, "cpus": cpus.rstrip("+"), "memory": memory.rstrip("+"), "gres": gres})
    return rows


def check_deployment(settings: SlurmSettings, source: str, submit: bool = False) -> list[Check]:
    """What the orchestrator (daemon, webserver, code server) needs for SLURM jobs, each with its fix."""
    checks: list[Check] = []
    missing = [name for name in ("sbatch", "scontrol", "scancel", "sinfo", "squeue") if shutil.which(name) is None]
    checks.append(
        Check(
            "SLURM client",
            not missing,
            "sbatch, scontrol, scancel, sinfo, squeue on PATH"
            if not missing
            else f"{', '.join(missing)} not on PATH. Fix: install the SLURM client (Debian: slurm-client) on this host",
        )
    )
    if missing:
        return checks
    ping = run_slurm("scontrol", "ping")
    reached = ping.returncode == 0 and "UP" in ping.stdout
    checks.append(
        Check(
            "slurmctld reachable (munge)",
            reached,
            ping.stdout.strip().splitlines()[0]
            if reached
            else f"{(ping.stderr or ping.stdout).strip()[:300]}. Fix: run munged with the cluster's /etc/munge/munge.key "
            "on this host (`munge -n | unmunge` must say STATUS: Success) and point SLURM_CONF at the cluster's "
            "slurm.conf",
        )
    )
    if not reached:
        return checks
    config = dict(
        line.split("=", 1)
        for line in (item.replace(" ", "") for item in run_slurm("scontrol", "show", "config").stdout.splitlines())
        if "=" in line
    )
    accounting = config.get("AccountingStorageType", "accounting_storage/none") != "accounting_storage/none"
    min_job_age = int(re.sub(r"\D", "", config.get("MinJobAge", "300")) or 300)
    keeps = accounting or min_job_age >= 300
    checks.append(
        Check(
            "ended jobs stay visible",
            keeps,
            (
                "accounting (sacct) answers for purged jobs"
                if accounting
                else f"MinJobAge={min_job_age} s: slurmctld keeps ended jobs long enough"
            )
            if keeps
            else f"MinJobAge={min_job_age} s and no accounting database: the executor may not learn how a job ended. "
            "Fix: set MinJobAge=600 (or more) in slurm.conf, or run slurmdbd",
        )
    )
    for label, request in (("sort job", plan_job(settings, True)), ("CPU job", plan_job(settings, False))):
        nodes = _partition_nodes(request.partition)
        if not nodes:
            checks.append(
                Check(
                    f"{label} partition",
                    False,
                    f"partition {request.partition} has no nodes (or does not exist). "
                    f"Fix: set {'gpu_partition' if request.gres else 'cpu_partition'} in {source} to one of "
                    f"`sinfo -h -o %P`",
                )
            )
            continue
        want_mib = parse_memory_mib(request.mem) or 0
        fits = [
            row
            for row in nodes
            if int(row["cpus"] or 0) >= request.cpus
            and int(row["memory"] or 0) >= want_mib
            and (not request.gres or request.gres.split(":")[0] in row["gres"])
        ]
        keys = "mem, cpus_per_task, gres" if request.gres else "cpu_mem, cpu_cpus_per_task"
        max_minutes, wanted_minutes = _partition_max_minutes(request.partition), parse_slurm_minutes(request.time_limit)
        time_key = "time_limit" if request.gres else "cpu_time_limit"
        if max_minutes is not None and wanted_minutes is not None and wanted_minutes > max_minutes:
            checks.append(
                Check(
                    f"{label} time limit",
                    False,
                    f"{time_key}={request.time_limit} is more than partition {request.partition} allows "
                    f"({max_minutes:g} min): SLURM would keep the job pending (PartitionTimeLimit). "
                    f"Fix: lower {time_key} in {source}",
                )
            )
        largest = ", ".join(
            f"{row['node']}: {row['cpus']} CPUs, {row['memory']} MiB, GRES {row['gres']}" for row in nodes
        )
        checks.append(
            Check(
                f"{label} fits a node",
                bool(fits),
                f"{request.describe()} fits {len(fits)} of {len(nodes)} nodes of {request.partition}"
                if fits
                else f"{request.describe()} fits no node of {request.partition} ({largest[:400]}). "
                f"Fix: lower {keys} in {source}, or configure the nodes' GRES in slurm.conf + gres.conf",
            )
        )
    try:
        with dg.DagsterInstance.get() as instance:
            require_shared_storage(instance, "SLURM executor", "SLURM jobs on other nodes")
            check_instance_env(instance, settings, source)
            checks.append(
                Check("instance", True, f"{instance.root_directory}/dagster.yaml: shared storage, env exported")
            )
    except Exception as exc:  # noqa: BLE001 - every problem is a finding
        checks.append(Check("instance", False, str(exc)[:600]))
    workdir = settings.job_dir()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".check-{uuid.uuid4().hex[:8]}"
        probe.write_text("ok")
        probe.unlink()
        checks.append(Check("workdir", True, f"{workdir} is writable"))
    except OSError as exc:
        checks.append(Check("workdir", False, f"{workdir}: {exc.strerror}. Fix: set workdir in {source}"))
    if submit and all(check.ok for check in checks):
        checks.extend(_submit_probe_jobs(settings, workdir))
    return checks


def _submit_probe_jobs(settings: SlurmSettings, workdir: Path) -> list[Check]:
    """One small job per partition that imports the platform on the node and writes into the workdir."""
    results = []
    folder = workdir / f"check-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    env = {**os.environ}
    exported = exported_names(env, settings.export)
    for label, gpu in (("sort job", True), ("CPU job", False)):
        request = dataclasses.replace(plan_job(settings, gpu), time_limit="5")  # it only imports the platform
        marker = folder / f"{label.split()[0]}.ok"
        code = f"import dagster, ks_platform.execution.slurm_executor, pathlib; pathlib.Path({str(marker)!r}).touch()"
        script = folder / f"{label.split()[0]}.sh"
        script.write_text(job_script(settings, gpu, ("-c", code)))
        done = run_slurm(
            "sbatch",
            *sbatch_args(settings, request, f"ks_platform:check:{label}", folder / f"{marker.stem}.out", exported),
            f"--chdir={folder}",
            str(script),
            env=env,
        )
        if done.returncode != 0:
            results.append(Check(f"{label} submitted", False, f"sbatch: {done.stderr.strip()[-400:]}"))
            continue
        job_id = done.stdout.strip().split(";")[0]
        deadline = time.monotonic() + 600
        status = job_status(job_id)
        while status.state in ACTIVE_STATES and status.reason not in NEVER_STARTS and time.monotonic() < deadline:
            time.sleep(1)
            status = job_status(job_id)
        if status.state in ACTIVE_STATES:
            run_slurm("scancel", job_id)
        ok = status.state == "COMPLETED" and marker.exists()
        results.append(
            Check(
                f"{label} ran",
                ok,
                f"job {job_id} {status.describe()}: imported the platform on the node and wrote {marker.parent}"
                if ok
                else f"job {job_id} {status.describe()}; {output_tail(folder / f'{marker.stem}.out', 5)}. Fix: the "
                "node needs the platform's Python (python / apptainer_image) and the workdir on the shared filesystem",
            )
        )
    shutil.rmtree(folder, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {RUNNER_MODULE}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check this host's SLURM setup for the executor")
    check.add_argument("--settings", help=f"deployment file with a slurm: section (default ${DEPLOYMENT_ENV})")
    check.add_argument("--submit", action="store_true", help="also run a small job on each partition")
    serve = commands.add_parser("serve-steps", help="(internal) the CPU-step runner of a run")
    serve.add_argument("folder", type=Path)
    serve.add_argument("--idle-seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    if args.command == "serve-steps":
        return serve_steps(args.folder, args.idle_seconds)
    config = {"settings_file": args.settings} if args.settings else {}
    try:
        settings, source = resolve_slurm_settings(config)
    except PlatformConfigError as exc:
        print(f"FAIL settings: {exc}")
        return 1
    checks = check_deployment(settings, source, submit=args.submit)
    for item in checks:
        print(item.line())
    return 0 if all(item.ok for item in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())

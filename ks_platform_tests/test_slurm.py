"""The SLURM executor against a real one-node SLURM cluster (ks_platform_tests.slurm_support) and a real PostgreSQL.

The scheduler allocates the node's single GPU GRES (two GPU steps queue behind each other); a small session's
Kilosort step runs as a batch job (on CPU: there is no GPU) and its lineage names the job, node, partition, GRES
and environment; a job that hits its time limit fails its step (SLURM's TIMEOUT logged on it) and the retry policy
reruns it; a job killed outright fails through the health check with SLURM's state; a sort cancelled mid-Kilosort
leaves nothing under its final name; a partition sbatch refuses is a clear failure; terminating the run scancels
its jobs. The cluster and the helpers are in ks_platform_tests.slurm_support.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus

from ks_platform.core.sessions import SessionRef
from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session
from ks_platform.definitions import sort_session_on_slurm
from ks_platform.execution import slurm_jobs
from ks_platform.execution.slurm_executor import load_slurm_settings, plan_job
from ks_platform_tests import postgres_support, slurm_support, test_executor
from ks_platform_tests.conftest import ROOT_NAME, leftovers, wait_until
from ks_platform_tests.slurm_support import NODE, PARTITION, URGENT_PARTITION, SlurmCluster
from ks_platform_tests.test_executor import RunWorker, engine_messages, error_chain, events_of

# Fixtures of other modules, used here by name.
postgres_url, pg_instance = postgres_support.postgres_url, test_executor.pg_instance
monkeypatch_module, slurm = slurm_support.monkeypatch_module, slurm_support.slurm

SMOKE_STEP = "report_slurm_job"
RUN_WORKER = """
import json, sys
import dagster as dg
from ks_platform.execution import slurm_jobs
job, run_config, tags = getattr(slurm_jobs, sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
with dg.DagsterInstance.get() as instance:
    with dg.execute_job(dg.reconstructable(job), instance=instance, run_config=run_config, tags=tags) as result:
        print(f"run {result.run_id} success={result.success}", flush=True)
"""


def settings(tmp_path: Path, **overrides) -> dict:
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    return {
        "gpu_partition": PARTITION,
        "gres": "gpu:1",
        "backend": "cuda",
        "gpu_memory_mib": 16384,
        "time_limit": "10:00",
        "cpu_time_limit": "10:00",
        "mem": "1G",
        "cpu_mem": "1G",
        "cpus_per_task": 1,
        "cpu_cpus_per_task": 1,
        "workdir": str(tmp_path / "jobs"),
        "store": str(store),
        "poll_seconds": 1,
        **overrides,
    }


def reports(instance: dg.DagsterInstance, run_id: str) -> list[dict]:
    """What ``report_slurm_job`` logged in each attempt."""
    lines = [
        entry.user_message for entry in instance.all_logs(run_id) if (entry.user_message or "").startswith("slurm {")
    ]
    return [json.loads(line.removeprefix("slurm ")) for line in lines]


def completed_jobs(cluster: SlurmCluster) -> dict[str, dict[str, str]]:
    """The job-completion log: ``{job id: {JobState, StartTime, EndTime, …}}``."""
    jobs = {}
    for line in cluster.jobcomp.read_text().splitlines() if cluster.jobcomp.exists() else []:
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        jobs[fields["JobId"]] = fields
    return jobs


def test_gpu_gres_is_allocated_and_two_gpu_steps_queue_behind_each_other(slurm, pg_instance, tmp_path):
    """Two runs' GPU steps submitted at once on a node with one GPU GRES: SLURM starts one, the other PENDS until it
    ends; each step sees the GPU SLURM gave it, the partition, and the batch size planned from the GPU's memory."""
    run_config = {
        "execution": {"config": {"settings": settings(tmp_path)}},
        "ops": {SMOKE_STEP: {"config": {"hold_seconds": 8.0}}},
    }
    secret = {"LAB_API_TOKEN": "not-for-jobs"}  # in the orchestrator's environment, outside the --export allow-list
    workers = [
        RunWorker(tmp_path / f"worker{i}", "slurm_gpu_smoke_job", run_config, code=RUN_WORKER, env=secret)
        for i in range(2)
    ]
    try:
        pending = wait_until(
            lambda: [
                line
                for line in slurm.run("squeue", "-h", "-o", "%i %T %r %b").splitlines()
                if "PENDING" in line and "Resources" in line
            ],
            120,
            "a GPU job pending for Resources while the other runs",
            poll=0.3,
        )
        assert "gpu:1" in pending[0]
        assert all(worker.finish(pg_instance, timeout=180) for worker in workers), [
            worker.output() for worker in workers
        ]
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                os.killpg(worker.process.pid, signal.SIGKILL)
    run_ids = [worker.run_id(pg_instance, timeout=0) for worker in workers]
    seen = [reports(pg_instance, run_id)[0] for run_id in run_ids]
    for report in seen:
        job = report["slurm"]
        assert job["node"] == NODE and job["partition"] == PARTITION
        assert job["gpus"] == "0" and report["CUDA_VISIBLE_DEVICES"] == "0"
        assert job["gres"] == "gres:gpu:1" and job["gres_requested"] == "gpu:1"
        names = set(report["environment_names"])
        assert "LAB_API_TOKEN" not in names and {"DAGSTER_HOME", "KS_PLATFORM_BACKEND", "PATH"} <= names
        assert report["KS_PLATFORM_BACKEND"] == "cuda:0" and report["KS_PLATFORM_BATCH_SIZE"] == str(
            plan_job(load_slurm_settings({"settings": settings(tmp_path)}), True).env["KS_PLATFORM_BATCH_SIZE"]
        )
    ended = completed_jobs(slurm)
    first, second = sorted((ended[report["slurm"]["job_id"]] for report in seen), key=lambda job: job["StartTime"])
    assert first["JobState"] == second["JobState"] == "COMPLETED"
    assert second["StartTime"] >= first["EndTime"], (first, second)  # one GPU: never both at once
    starting = [
        entry.dagster_event.event_specific_data.metadata
        for run_id in run_ids
        for entry in events_of(pg_instance, run_id, dg.DagsterEventType.STEP_WORKER_STARTING)
    ]
    assert {meta["partition"].value for meta in starting} == {PARTITION}
    assert {meta["gres"].value for meta in starting} == {"gpu:1"}
    for job in (first, second):
        print(f"job {job['JobId']}: {job['StartTime']} – {job['EndTime']}")


#: Ingest → binary → Kilosort (the Phy/metrics/curation steps add nothing here).
SORT_ASSETS = [dg.AssetKey(name) for name in ("raw_recording", "probe_map", "recording_binary", "sorted_units")]


def small_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instance: dg.DagsterInstance) -> tuple[dict, str]:
    """The smallest sort that works (4 s, 32 channels, 6 units) in a landing root, its partition and SLURM settings
    (Kilosort on CPU inside the job: there is no GPU); the platform env reaches the jobs through sbatch."""
    from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME

    spec = DemoSessionSpec(duration_s=4, n_channels=32, n_units=6)
    landing = tmp_path / "landing"
    make_spikeglx_session(landing / "slurm_demo", spec)
    config = settings(tmp_path, backend="cpu", cpus_per_task=2, mem="4G", time_limit="30:00")
    monkeypatch.setenv("KS_PLATFORM_STORE", config["store"])
    monkeypatch.setenv("KS_PLATFORM_LANDING", f"{ROOT_NAME}={landing}")
    monkeypatch.setenv("KS_PLATFORM_BACKEND", "cpu")
    key = SessionRef(ROOT_NAME, "slurm_demo", spec.recording_date, "imec0").key
    instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, [key])
    return config, key


@pytest.mark.slow
def test_sort_step_runs_as_a_slurm_job_and_lineage_names_the_job(slurm, pg_instance, tmp_path, monkeypatch):
    """A 4 s, 32-channel session through ingest → binary → Kilosort (CPU inside the job), every step a batch job;
    the sorting's lineage records job id, node, partition, GRES and the environment's lock hash."""
    from ks_platform.core.lineage import environment_hash

    config, key = small_session(tmp_path, monkeypatch, pg_instance)
    started = time.monotonic()
    with dg.execute_job(
        dg.reconstructable(sort_session_on_slurm),
        instance=pg_instance,
        tags={"dagster/partition": key},
        run_config={"execution": {"config": {"settings": config}}},
        asset_selection=SORT_ASSETS,
    ) as result:
        failures = [
            error_chain(entry.dagster_event.event_specific_data.error)
            for entry in events_of(pg_instance, result.run_id, dg.DagsterEventType.STEP_FAILURE)
        ]
        assert result.success, failures
        run_id = result.run_id
    took = time.monotonic() - started
    session = Path(config["store"]) / "sessions" / key
    lineage = json.loads((session / "sorting" / "lineage.json").read_text())
    job = lineage["slurm"]
    sort_jobs = [
        meta
        for entry in events_of(pg_instance, run_id, dg.DagsterEventType.STEP_WORKER_STARTING)
        if entry.step_key == "sorted_units"
        for meta in [entry.dagster_event.event_specific_data.metadata]
    ]
    assert job["job_id"] == sort_jobs[0]["SLURM job id"].value
    assert job["node"] == NODE and job["partition"] == PARTITION
    assert job["gres"] == "gres:gpu:1" and job["gpus"] == "0"
    assert lineage["environment"]["kind"] == "venv" and lineage["environment"]["lock_hash"] == environment_hash()
    assert completed_jobs(slurm)[job["job_id"]]["JobState"] == "COMPLETED"
    steps = {entry.step_key for entry in events_of(pg_instance, run_id, dg.DagsterEventType.STEP_WORKER_STARTING)}
    assert {"raw_recording", "probe_map", "recording_binary", "sorted_units"} <= steps  # every step was a job
    assert leftovers(session) == []
    print(
        f"sorted on SLURM in {took:.0f} s: job {job['job_id']} on {job['node']}/{job['partition']} {job['gres']}, "
        f"env {lineage['environment']['lock_hash'][:19]}"
    )


def test_job_that_hits_its_time_limit_fails_with_timeout_and_is_retried(slurm, pg_instance, tmp_path):
    """Time limit 1 minute, the first attempt holds 10 minutes: SLURM kills it (TIMEOUT), the step fails with that
    state and the retry policy (max_retries=1) reruns it as a new job, which succeeds."""
    run_config = {
        "execution": {"config": {"settings": settings(tmp_path, time_limit="1")}},
        "ops": {SMOKE_STEP: {"config": {"hold_seconds": 600.0, "first_attempt_only": True}}},
    }
    with dg.execute_job(
        dg.reconstructable(slurm_jobs.slurm_gpu_smoke_job), instance=pg_instance, run_config=run_config
    ) as result:
        assert result.success
        run_id = result.run_id
    retries = events_of(pg_instance, run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert len(retries) == 1
    slurm_says = [m for m in engine_messages(pg_instance, run_id) if "ended TIMEOUT" in m]
    assert slurm_says and "reason TimeLimit" in slurm_says[0] and "SLURM interrupted the step" in slurm_says[0], (
        slurm_says
    )
    message = slurm_says[0]
    jobs = [report["slurm"]["job_id"] for report in reports(pg_instance, run_id)]
    assert len(jobs) == 2 and jobs[0] != jobs[1]
    ended = wait_until(
        lambda: set(jobs) <= set(completed_jobs(slurm)) and completed_jobs(slurm), 60, "both jobs to end"
    )
    assert ended[jobs[0]]["JobState"] == "TIMEOUT" and ended[jobs[1]]["JobState"] == "COMPLETED"
    print(f"step failed with: {message}")


def test_job_preempted_by_a_higher_priority_partition_fails_with_preempted_and_is_retried(slurm, pg_instance, tmp_path):
    """The step's job (partition gpu, tier 1) holds the node's only GPU; a job submitted to partition urgent (tier 10)
    needs it, so SLURM preempts (cancels) the step's job: the step fails with SLURM's PREEMPTED state and the retry
    policy reruns it as a new job once the GPU is free again, which succeeds."""
    run_config = {
        "execution": {"config": {"settings": settings(tmp_path)}},
        "ops": {SMOKE_STEP: {"config": {"hold_seconds": 600.0, "first_attempt_only": True}}},
    }
    worker = RunWorker(tmp_path / "worker", "slurm_gpu_smoke_job", run_config, code=RUN_WORKER)
    try:
        run_id = worker.run_id(pg_instance, timeout=90)
        wait_until(lambda: reports(pg_instance, run_id), 120, "the step to run in its SLURM job")
        [victim] = slurm.queue()
        urgent = slurm.run(
            "sbatch",
            "--parsable",
            f"--partition={URGENT_PARTITION}",
            "--gres=gpu:1",
            "--mem=100M",
            f"--output={tmp_path / 'urgent.out'}",
            "--wrap=sleep 3",
        ).strip()
        assert worker.finish(pg_instance, timeout=240), worker.output()
    finally:
        if worker.process.poll() is None:
            os.killpg(worker.process.pid, signal.SIGKILL)
    assert len(events_of(pg_instance, run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 1
    slurm_says = [m for m in engine_messages(pg_instance, run_id) if "ended PREEMPTED" in m]
    assert slurm_says and f"SLURM job {victim} " in slurm_says[0], engine_messages(pg_instance, run_id)[-10:]
    jobs = [report["slurm"]["job_id"] for report in reports(pg_instance, run_id)]
    assert len(jobs) == 2 and jobs[0] == victim
    ended = wait_until(
        lambda: {*jobs, urgent} <= set(completed_jobs(slurm)) and completed_jobs(slurm), 60, "the three jobs to end"
    )
    assert ended[victim]["JobState"] == "PREEMPTED" and ended[urgent]["JobState"] == "COMPLETED"
    assert ended[jobs[1]]["JobState"] == "COMPLETED"
    print(f"step failed with: {slurm_says[0]}")


def test_terminating_the_run_scancels_its_jobs(slurm, pg_instance, tmp_path):
    """Dagster terminates a run by interrupting its run worker: the executor scancels the running job; squeue is
    empty afterwards and the run ends CANCELED within seconds (the op would hold 10 minutes)."""
    run_config = {
        "execution": {"config": {"settings": settings(tmp_path)}},
        "ops": {SMOKE_STEP: {"config": {"hold_seconds": 600.0}}},
    }
    worker = RunWorker(tmp_path / "worker", "slurm_gpu_smoke_job", run_config, code=RUN_WORKER)
    try:
        run_id = worker.run_id(pg_instance, timeout=90)
        wait_until(lambda: reports(pg_instance, run_id), 120, "the step to run in its SLURM job")
        [job_id] = slurm.queue()
        pg_instance.report_run_canceling(pg_instance.get_run_by_id(run_id))
        interrupted = time.monotonic()
        os.kill(worker.process.pid, signal.SIGINT)
        worker.process.wait(timeout=90)
        stopped_after = time.monotonic() - interrupted
    finally:
        if worker.process.poll() is None:
            os.killpg(worker.process.pid, signal.SIGKILL)
    wait_until(lambda: slurm.queue() == [], 30, "squeue to be empty")
    run = pg_instance.get_run_by_id(run_id)
    assert run is not None and run.status == DagsterRunStatus.CANCELED, (run and run.status, worker.output())
    assert any(
        m.startswith(f"Cancelling SLURM job {job_id} of {SMOKE_STEP}") for m in engine_messages(pg_instance, run_id)
    )
    assert completed_jobs(slurm)[job_id]["JobState"] == "CANCELLED"
    print(f"terminated run {run_id[:8]}: job {job_id} cancelled, worker ended {stopped_after:.1f} s after SIGINT")


def test_settings_file_with_a_slurm_section_and_bad_settings_are_clear(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("slurm:\n  gpu_partition: a100\n  gres: gpu:a100:1\n  gpu_memory_mib: 40960\n")
    loaded = load_slurm_settings({"settings_file": str(path)})
    job = plan_job(loaded, needs_gpu=True, n_channels=384)
    assert job.partition == "a100" and job.gres == "gpu:a100:1" and int(job.env["KS_PLATFORM_BATCH_SIZE"]) > 0
    assert plan_job(loaded, needs_gpu=False).gres is None
    path.write_text("slurm:\n  partition: a100\n")
    with pytest.raises(Exception, match="bad SLURM settings: partition: Extra inputs are not permitted"):
        load_slurm_settings({"settings_file": str(path)})


def test_lineage_outside_and_inside_a_slurm_job(monkeypatch):
    """Outside SLURM the lineage has no job; inside, it names the job from SLURM's environment and the venv's hash."""
    from ks_platform.core.lineage import environment_hash, lineage_record

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert "slurm" not in lineage_record() and "environment" not in lineage_record()
    job = {
        "SLURM_JOB_ID": "424242",
        "SLURMD_NODENAME": "gpu-node-7",
        "SLURM_JOB_PARTITION": "a100",
        "SLURM_JOB_GPUS": "3",
    }
    for name, value in job.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KS_PLATFORM_SLURM_GRES", "gpu:a100:1")
    record = lineage_record()
    assert record["slurm"]["job_id"] == "424242" and record["slurm"]["node"] == "gpu-node-7"
    assert record["slurm"]["partition"] == "a100" and record["slurm"]["gpus"] == "3"
    assert record["slurm"]["gres_requested"] == "gpu:a100:1"
    assert record["environment"]["lock_hash"] == environment_hash() and environment_hash().startswith("sha256:")


@pytest.mark.slow
def test_sort_job_cancelled_mid_kilosort_fails_the_step_with_nothing_half_written(
    slurm, pg_instance, tmp_path, monkeypatch
):
    """scancel of the sorted_units job while Kilosort writes into its temporary folder: the step fails with SLURM's
    CANCELLED state (no retry policy on the sort), no ``sorting/`` appears under its final name, the binary is whole."""
    import threading

    config, key = small_session(tmp_path, monkeypatch, pg_instance)
    session = Path(config["store"]) / "sessions" / key
    cancelled: list[str] = []

    def cancel_when_kilosort_writes() -> None:
        deadline = time.monotonic() + 1200
        while time.monotonic() < deadline:
            if any(any(staged.iterdir()) for staged in session.glob(".sorting.tmp-*")):
                time.sleep(3)  # inside Kilosort, not at its first line
                jobs = slurm.run("squeue", "-h", "-o", "%i %j").splitlines()
                cancelled.extend(line.split()[0] for line in jobs if line.endswith(":sorted_units"))
                for job_id in cancelled:
                    slurm.run("scancel", job_id)
                return
            time.sleep(0.5)

    canceller = threading.Thread(target=cancel_when_kilosort_writes, daemon=True)
    canceller.start()
    with dg.execute_job(
        dg.reconstructable(sort_session_on_slurm),
        instance=pg_instance,
        tags={"dagster/partition": key},
        run_config={"execution": {"config": {"settings": config}}},
        asset_selection=SORT_ASSETS,
    ) as result:
        assert not result.success
        run_id = result.run_id
    canceller.join(timeout=10)
    assert len(cancelled) == 1, cancelled
    failures = [
        e for e in events_of(pg_instance, run_id, dg.DagsterEventType.STEP_FAILURE) if e.step_key == "sorted_units"
    ]
    assert failures, "the cancelled sort must fail its step"
    slurm_says = [
        m for m in engine_messages(pg_instance, run_id) if f"SLURM job {cancelled[0]} of sorted_units ended" in m
    ]
    assert slurm_says and "CANCELLED" in slurm_says[0], engine_messages(pg_instance, run_id)
    message = slurm_says[0]
    assert not (session / "sorting").exists(), "a killed sort must leave no sorting/ under its final name"
    assert (session / "binary").is_dir()
    assert slurm.queue() == []
    print(f"cancelled job {cancelled[0]} mid-Kilosort: {message.splitlines()[0]}")


def test_partition_slurm_refuses_fails_the_step_with_sbatch_reason(slurm, pg_instance, tmp_path):
    """A partition the cluster does not have: sbatch refuses, the step fails with SLURM's words and the fix."""
    run_config = {"execution": {"config": {"settings": settings(tmp_path, gpu_partition="nope")}}}
    with dg.execute_job(
        dg.reconstructable(slurm_jobs.slurm_gpu_smoke_job), instance=pg_instance, run_config=run_config
    ) as result:
        assert not result.success
        run_id = result.run_id
    [failure] = events_of(pg_instance, run_id, dg.DagsterEventType.STEP_FAILURE)
    message = error_chain(failure.dagster_event.event_specific_data.error)
    assert "sbatch refused report_slurm_job (partition nope, --gres=gpu:1" in message, message
    assert "invalid partition" in message.lower() and "Fix: check the partition, GRES and limits" in message
    assert slurm.queue() == []


def test_job_killed_outright_fails_the_step_with_slurms_state_and_is_retried(slurm, pg_instance, tmp_path):
    """SIGKILL to the job's processes (as the kernel's OOM killer would end them): the step reports nothing, so
    the health check fails it with SLURM's state, reason and exit code; the retry policy reruns it as a new job."""
    import threading

    run_config = {
        "execution": {"config": {"settings": settings(tmp_path, failure_grace_seconds=3)}},
        "ops": {SMOKE_STEP: {"config": {"hold_seconds": 600.0, "first_attempt_only": True}}},
    }
    killed: list[str] = []

    def kill_first_job() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            running = slurm.run("squeue", "-h", "-t", "RUNNING", "-o", "%i").split()
            if running and list(tmp_path.glob("jobs/*/report_slurm_job-0.out")):
                time.sleep(8)  # the op is holding
                # SIGKILL to the job's processes, as the kernel's OOM killer would: nothing can report
                listed = slurm.run("scontrol", "listpids", running[0]).splitlines()[1:]
                for pid in {int(line.split()[0]) for line in listed if line.split() and line.split()[0].isdigit()}:
                    os.kill(pid, signal.SIGKILL)
                killed.append(running[0])
            time.sleep(0.5)

    killer = threading.Thread(target=kill_first_job, daemon=True)
    killer.start()
    with dg.execute_job(
        dg.reconstructable(slurm_jobs.slurm_gpu_smoke_job), instance=pg_instance, run_config=run_config
    ) as result:
        assert result.success
        run_id = result.run_id
    killer.join(timeout=10)
    [retry] = events_of(pg_instance, run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    message = error_chain(retry.dagster_event.event_specific_data.error)
    assert f"failed health check: SLURM job {killed[0]} of {SMOKE_STEP} ended " in message, message
    assert "exit code 0:9" in message or "exit code 9" in message or "FAILED" in message, message
    print(f"killed job {killed[0]}: {message.splitlines()[0][:300]}")

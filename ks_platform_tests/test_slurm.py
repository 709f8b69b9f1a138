"""The SLURM executor against a real one-node SLURM cluster (ks_platform_tests.slurm_support) and a real PostgreSQL.

The scheduler allocates the node's single GPU GRES (two GPU steps queue behind each other) and the executor logs the
GRES slurmctld allocated; a job sees only what its settings name of the orchestrator's environment; each step's output
is attached to the run; a run's CPU steps share one job (or one job each, or run on the orchestrator); a small
session's Kilosort step runs as a batch job (on CPU: there is no GPU), a cancel mid-Kilosort fails that attempt with
nothing half-written and the sort's retry policy sorts again, with lineage naming the job, node, partition, GRES and
environment; a job that hits its time limit, is preempted or is killed outright fails its step with SLURM's state and
is retried; a partition or size sbatch refuses is a clear failure naming the settings; terminating a run scancels its
jobs, and a run terminated while its sort holds the ``kilosort`` pool gives the slot back, so the next sort starts by
itself; the admin walkthrough of docs/slurm.md runs as written. A job orphaned by a dead slurmd: test_slurm_orphan.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.storage.dagster_run import DagsterRunStatus

from ks_platform.core.sessions import SessionRef
from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session
from ks_platform.definitions import sort_session_on_slurm
from ks_platform.execution import slurm_jobs
from ks_platform.execution.slurm_executor import SlurmSettings, load_slurm_settings, plan_job
from ks_platform_tests import executor_support, postgres_support, slurm_support
from ks_platform_tests.conftest import CANONICAL_SETTINGS, ROOT_NAME, leftovers, wait_until
from ks_platform_tests.run_worker_support import TEST_TAG, RunWorker, engine_messages, error_chain, events_of
from ks_platform_tests.slurm_executor_support import INSTANCE_ENV, RUN_WORKER, settings
from ks_platform_tests.slurm_support import NODE, PARTITION, URGENT_PARTITION, SlurmCluster

# Fixtures of other modules, used here by name.
postgres_url, pg_instance = postgres_support.postgres_url, executor_support.pg_instance
monkeypatch_module, slurm = slurm_support.monkeypatch_module, slurm_support.slurm

REPO = Path(__file__).resolve().parents[1]
SMOKE_STEP = "report_slurm_job"
#: ``sort_session`` on SLURM (ingest → binary → Kilosort) in a run worker.
SORT_WORKER = """
import json, sys
import dagster as dg
from ks_platform.definitions import sort_session_on_slurm
run_config, tags = json.loads(sys.argv[2]), json.loads(sys.argv[3])
assets = [dg.AssetKey(name) for name in ("raw_recording", "probe_map", "recording_binary", "sorted_units")]
with dg.DagsterInstance.get() as instance:
    with dg.execute_job(
        dg.reconstructable(sort_session_on_slurm), instance=instance, run_config=run_config, tags=tags,
        asset_selection=assets,
    ) as result:
        print(f"run {result.run_id} success={result.success}", flush=True)
"""


def reports(instance: dg.DagsterInstance, run_id: str) -> list[dict]:
    """What the smoke ops logged in each attempt (``slurm {...}`` lines), with the step that logged it."""
    return [
        {**json.loads(entry.user_message.removeprefix("slurm ")), "step": entry.step_key}
        for entry in instance.all_logs(run_id)
        if (entry.user_message or "").startswith("slurm {")
    ]


def engine_events(instance: dg.DagsterInstance, run_id: str, prefix: str) -> list:
    return [
        entry
        for entry in events_of(instance, run_id, dg.DagsterEventType.ENGINE_EVENT)
        if (entry.message or "").startswith(prefix)
    ]


def attached_output(instance: dg.DagsterInstance, run_id: str, step_key: str) -> list[str]:
    """The job output the executor attached to the run for ``step_key`` (one per attempt)."""
    return [
        entry.dagster_event.event_specific_data.metadata["job output"].value
        for entry in engine_events(instance, run_id, f"Output of {step_key} in ")
    ]


def completed_jobs(cluster: SlurmCluster) -> dict[str, dict[str, str]]:
    """The job-completion log: ``{job id: {JobState, StartTime, EndTime, …}}``."""
    jobs = {}
    for line in cluster.jobcomp.read_text().splitlines() if cluster.jobcomp.exists() else []:
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        jobs[fields["JobId"]] = fields
    return jobs


def test_gpu_gres_is_allocated_and_two_gpu_steps_queue_behind_each_other(slurm, pg_instance, tmp_path):
    """Two runs' GPU steps submitted at once on a node with one GPU GRES: SLURM starts one, the other PENDS until it
    ends; each step sees the GPU SLURM gave it, the partition and the batch size planned from the GPU's memory; the
    executor logs the GRES slurmctld allocated (``scontrol -d``) and attaches each job's output to its run; of the
    orchestrator's environment the jobs see only what the settings name (not a token, not a ``DAGSTER_*`` secret)."""
    run_config = {
        "execution": {"config": {"settings": settings(tmp_path)}},
        "ops": {SMOKE_STEP: {"config": {"hold_seconds": 8.0}}},
    }
    secrets = {"LAB_API_TOKEN": "not-for-jobs", "DAGSTER_CLOUD_API_TOKEN": "not-for-jobs-either"}
    workers = [
        RunWorker(tmp_path / f"worker{i}", "slurm_gpu_smoke_job", run_config, code=RUN_WORKER, env=secrets)
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
        assert job["gres_requested"] == "gpu:1"
        names = set(report["environment_names"])
        assert not names & set(secrets), names & set(secrets)
        assert {"DAGSTER_HOME", "KS_PLATFORM_BACKEND", "PATH", *INSTANCE_ENV} <= names
        assert report["KS_PLATFORM_BACKEND"] == "cuda:0" and report["KS_PLATFORM_BATCH_SIZE"] == str(
            plan_job(load_slurm_settings({"settings": settings(tmp_path)}), True).env["KS_PLATFORM_BATCH_SIZE"]
        )
    for run_id, report in zip(run_ids, seen, strict=True):
        [granted] = engine_events(pg_instance, run_id, f"SLURM job {report['slurm']['job_id']} of {SMOKE_STEP} runs ")
        assert granted.message.endswith("slurmctld allocated GRES gpu:1 (gpu:1(IDX:0) on the node)"), granted.message
        assert granted.dagster_event.event_specific_data.metadata["granted gres"].value == "gpu:1"
        [output] = attached_output(pg_instance, run_id, SMOKE_STEP)
        assert f"printed by {SMOKE_STEP} on stdout, attempt 0" in output
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


def test_a_variable_the_instance_reads_must_be_named_for_jobs(slurm, pg_instance, tmp_path):
    """The instance's dagster.yaml reads DAGSTER_PG_*; settings that do not export them would start jobs that cannot
    reach the database: the executor refuses the run before any job, naming the variables and the fix."""
    from ks_platform.core.errors import PlatformConfigError

    run_config = {"execution": {"config": {"settings": settings(tmp_path, export=["DAGSTER_PG_HOST"])}}}
    missing = "DAGSTER_PG_DB, DAGSTER_PG_PASSWORD, DAGSTER_PG_PORT, DAGSTER_PG_USERNAME"
    with pytest.raises(PlatformConfigError) as refused:
        dg.execute_job(dg.reconstructable(slurm_jobs.slurm_gpu_smoke_job), instance=pg_instance, run_config=run_config)
    message = str(refused.value)
    assert f"dagster.yaml reads {missing} from the environment" in message, message
    assert f"Fix: add {missing} to `export:` in executor config" in message, message
    assert slurm.queue() == []


@pytest.mark.parametrize("cpu_steps", ["run_job", "step_jobs", "orchestrator"])
def test_cpu_steps_share_one_job_of_the_run_or_run_one_job_each_or_on_the_orchestrator(
    cpu_steps, slurm, pg_instance, tmp_path
):
    """CPU step → GPU step (holds 4 s) → CPU step. ``run_job``: the first CPU step runs in a CPU job of the run,
    which ends (idle 1 s) while the GPU step holds, so the last CPU step gets a second one; both end COMPLETED.
    ``step_jobs``: three jobs. ``orchestrator``: only the GPU step is a job. The CPU steps see no secret either."""
    run_config = {
        "execution": {"config": {"settings": settings(tmp_path, cpu_steps=cpu_steps, cpu_idle_seconds=1)}},
        "ops": {"report_gpu_step": {"config": {"hold_seconds": 4.0}}},
    }
    secret = {"LAB_API_TOKEN": "not-for-jobs"}
    worker = RunWorker(tmp_path / "worker", "slurm_cpu_smoke_job", run_config, code=RUN_WORKER, env=secret)
    try:
        assert worker.finish(pg_instance, timeout=240), worker.output()
    finally:
        if worker.process.poll() is None:
            os.killpg(worker.process.pid, signal.SIGKILL)
    run_id = worker.run_id(pg_instance, timeout=0)
    seen = {report["step"]: report for report in reports(pg_instance, run_id)}
    jobs = {step: report.get("slurm", {}).get("job_id") for step, report in seen.items()}
    assert set(jobs) == {"report_cpu_step", "report_gpu_step", "report_cpu_step_after"}
    for step, report in seen.items():
        assert "LAB_API_TOKEN" not in report["environment_names"], step
        assert f"printed by {step} on stdout" in attached_output(pg_instance, run_id, step)[0]
    assert jobs["report_gpu_step"] and seen["report_gpu_step"]["slurm"]["gpus"] == "0"
    ended = wait_until(
        lambda: (done := completed_jobs(slurm)) and {job for job in jobs.values() if job} <= set(done) and done,
        60,
        "the run's jobs in the completion log",
    )
    if cpu_steps == "orchestrator":
        assert jobs["report_cpu_step"] is None and jobs["report_cpu_step_after"] is None
        assert seen["report_cpu_step"]["pid"] != seen["report_cpu_step_after"]["pid"]
    elif cpu_steps == "step_jobs":
        assert len(set(jobs.values())) == 3
    else:
        first, last, gpu = jobs["report_cpu_step"], jobs["report_cpu_step_after"], jobs["report_gpu_step"]
        assert len({first, last, gpu}) == 3
        assert ended[first]["JobState"] == ended[last]["JobState"] == "COMPLETED"
        assert ended[first]["EndTime"] <= ended[gpu]["EndTime"], "the first CPU job was held through the GPU step"
        starting = events_of(pg_instance, run_id, dg.DagsterEventType.STEP_WORKER_STARTING)
        assert {e.dagster_event.event_specific_data.metadata["cpu steps"].value for e in starting} == {
            "run_job",
            "own job",
        }
    print(f"{cpu_steps}: jobs {jobs}")


#: Ingest → binary → Kilosort (the Phy/metrics/curation steps add nothing here).
SORT_ASSETS = [dg.AssetKey(name) for name in ("raw_recording", "probe_map", "recording_binary", "sorted_units")]


def small_sessions(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    instance: dg.DagsterInstance,
    names: tuple[str, ...] = ("slurm_demo",),
    kilosort_settings: dict | None = None,
) -> tuple[dict, list[str]]:
    """The smallest sort that works (4 s, 32 channels, 6 units), one session per name in a landing root, their
    partitions and SLURM settings (Kilosort on CPU inside the job: there is no GPU)."""
    from ks_platform.core.session_config import SESSION_SETTINGS_FILE
    from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME

    spec = DemoSessionSpec(duration_s=4, n_channels=32, n_units=6)
    landing = tmp_path / "landing"
    keys = []
    for name in names:
        folder = make_spikeglx_session(landing / name, spec)
        if kilosort_settings is not None:
            (folder / SESSION_SETTINGS_FILE).write_text(json.dumps(kilosort_settings) + "\n")
        keys.append(SessionRef(ROOT_NAME, name, spec.recording_date, "imec0").key)
    # One CPU per job: the sort job and a CPU job of the run fit the node's 2 CPUs at once, as on a cluster's separate
    # partitions (the node has no cgroups: Kilosort uses both CPUs).
    config = settings(tmp_path, backend="cpu", mem="4G", time_limit="30:00", cpu_mem="2G")
    monkeypatch.setenv("KS_PLATFORM_STORE", config["store"])
    monkeypatch.setenv("KS_PLATFORM_LANDING", f"{ROOT_NAME}={landing}")
    monkeypatch.setenv("KS_PLATFORM_BACKEND", "cpu")
    instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, keys)
    return config, keys


@pytest.mark.slow
def test_sort_cancelled_mid_kilosort_is_retried_by_its_policy_and_lineage_names_the_job(
    slurm, pg_instance, tmp_path, monkeypatch
):
    """sort_session (4 s, 32 channels) on SLURM: the CPU steps in CPU jobs of the run, the sort in its own job. scancel
    of the sort's job while Kilosort writes into its temporary folder: that attempt fails with SLURM's CANCELLED, no
    ``sorting/`` appears under its final name, the binary is whole; the sort's retry policy (max 2, 10 s) submits a
    new job, which sorts: the lineage names that job, the node, partition, GRES and the environment's lock hash. The
    first CPU job was not held through the sort."""
    import threading

    from ks_platform.core.lineage import environment_hash

    config, [key] = small_sessions(tmp_path, monkeypatch, pg_instance)
    session = Path(config["store"]) / "sessions" / key
    cancelled: list[str] = []
    seen_after_cancel: list[bool] = []

    def cancel_when_kilosort_writes() -> None:
        deadline = time.monotonic() + 1200
        while time.monotonic() < deadline:
            if any(any(staged.iterdir()) for staged in session.glob(".sorting.tmp-*")):
                time.sleep(3)  # inside Kilosort, not at its first line
                jobs = slurm.run("squeue", "-h", "-o", "%i %j").splitlines()
                cancelled.extend(line.split()[0] for line in jobs if line.endswith(":sorted_units"))
                for job_id in cancelled:
                    slurm.run("scancel", job_id)
                wait_until(lambda: slurm.queue() == [] or cancelled[0] not in slurm.queue(), 60, "the cancel")
                seen_after_cancel.append((session / "sorting").exists())
                return
            time.sleep(0.5)

    canceller = threading.Thread(target=cancel_when_kilosort_writes, daemon=True)
    canceller.start()
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
    canceller.join(timeout=10)
    assert len(cancelled) == 1 and seen_after_cancel == [False], (cancelled, seen_after_cancel)
    [retry] = events_of(pg_instance, run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert retry.step_key == "sorted_units"
    slurm_says = [
        m for m in engine_messages(pg_instance, run_id) if f"SLURM job {cancelled[0]} of sorted_units ended" in m
    ]
    assert slurm_says and "CANCELLED" in slurm_says[0], engine_messages(pg_instance, run_id)
    sort_jobs = [
        entry.dagster_event.event_specific_data.metadata["SLURM job id"].value
        for entry in events_of(pg_instance, run_id, dg.DagsterEventType.STEP_WORKER_STARTING)
        if entry.step_key == "sorted_units"
    ]
    assert len(sort_jobs) == 2 and sort_jobs[0] == cancelled[0]
    lineage = json.loads((session / "sorting" / "lineage.json").read_text())
    job = lineage["slurm"]
    assert job["job_id"] == sort_jobs[1] and job["node"] == NODE and job["partition"] == PARTITION
    assert job["gres_requested"] == "gpu:1" and job["gpus"] == "0"
    assert job["gres_granted"] == "gpu:1" and "IDX:0" in job["gres_on_node"], job  # what slurmctld allocated
    assert lineage["environment"]["kind"] == "venv" and lineage["environment"]["lock_hash"] == environment_hash()
    ended = completed_jobs(slurm)
    assert ended[sort_jobs[0]]["JobState"] == "CANCELLED" and ended[sort_jobs[1]]["JobState"] == "COMPLETED"
    cpu_jobs = sorted(
        {
            entry.dagster_event.event_specific_data.metadata["SLURM job id"].value
            for entry in events_of(pg_instance, run_id, dg.DagsterEventType.STEP_WORKER_STARTING)
            if entry.step_key != "sorted_units"
        },
        key=int,
    )
    assert ended[cpu_jobs[0]]["EndTime"] <= ended[sort_jobs[1]]["EndTime"], (
        "the first CPU job was held through the sort"
    )
    assert (session / "binary").is_dir() and leftovers(session) == []
    assert slurm.queue() == []
    print(
        f"sorted on SLURM in {took:.0f} s: job {cancelled[0]} cancelled mid-Kilosort ({slurm_says[0].splitlines()[0]}); "
        f"retry job {job['job_id']} on {job['node']}/{job['partition']}; CPU jobs {cpu_jobs}, "
        f"env {lineage['environment']['lock_hash'][:19]}"
    )


class ShippedInstanceWorker(RunWorker):
    """A run worker on the shipped deploy/dagster.postgres.yaml as it is (its ``concurrency`` included: the
    ``kilosort`` pool limit 1, op granularity, one run per partition)."""

    def __init__(self, folder: Path, run_config: dict, tags: dict[str, str]) -> None:
        home = folder / "dagster_home"
        home.mkdir(parents=True)
        (home / "dagster.yaml").write_text((REPO / "deploy" / "dagster.postgres.yaml").read_text())
        self.marker = uuid.uuid4().hex
        self.log = folder / "run_worker.log"
        env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO)}
        with open(self.log, "w") as handle:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    SORT_WORKER,
                    "sort",
                    json.dumps(run_config),
                    json.dumps({**tags, TEST_TAG: self.marker}),
                ],
                cwd=REPO,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


@pytest.mark.slow
def test_run_terminated_while_its_sort_holds_the_kilosort_pool_gives_it_back_and_the_next_sort_starts(
    slurm, pg_instance, tmp_path, monkeypatch
):
    """Two sessions' sort_session runs on the shipped PostgreSQL instance config (``kilosort`` pool limit 1): run A's
    sort holds the pool in its SLURM job while run B's sort waits ("blocked by limit for pool kilosort"). Terminating
    A (CANCELING + SIGINT to its run worker, as Dagster's launcher does) scancels A's jobs and gives back A's slot;
    B's sort then starts by itself and B succeeds. Nothing frees the slot by hand."""
    config, keys = small_sessions(
        tmp_path, monkeypatch, pg_instance, ("pool_a_g0", "pool_b_g0"), kilosort_settings=CANONICAL_SETTINGS
    )
    storage = pg_instance.event_log_storage
    run_config = {"execution": {"config": {"settings": {**config, "cpu_idle_seconds": 3}}}}
    workers: list[ShippedInstanceWorker] = []
    try:
        workers.append(ShippedInstanceWorker(tmp_path / "a", run_config, {"dagster/partition": keys[0]}))
        run_a = workers[0].run_id(pg_instance, timeout=120)
        wait_until(
            lambda: [c for c in storage.get_concurrency_info("kilosort").claimed_slots if c.run_id == run_a]
            and any(
                e.step_key == "sorted_units" for e in events_of(pg_instance, run_a, dg.DagsterEventType.STEP_START)
            ),
            600,
            "run A's sort to hold the kilosort pool and run in its job",
        )
        assert storage.get_concurrency_info("kilosort").slot_count == 1
        workers.append(ShippedInstanceWorker(tmp_path / "b", run_config, {"dagster/partition": keys[1]}))
        run_b = workers[1].run_id(pg_instance, timeout=120)
        wait_until(
            lambda: engine_events(pg_instance, run_b, "Step blocked by limit for pool kilosort"),
            600,
            "run B's sort to wait for the pool",
        )
        [sort_job_a] = [
            line.split()[0]
            for line in slurm.run("squeue", "-h", "-o", "%i %j").splitlines()
            if line.endswith(":sorted_units")
        ]
        pg_instance.report_run_canceling(pg_instance.get_run_by_id(run_a))
        os.kill(workers[0].process.pid, signal.SIGINT)
        workers[0].process.wait(timeout=120)
        terminated_at = time.time()
        assert workers[1].finish(pg_instance, timeout=900), workers[1].output()
    finally:
        for worker in workers:
            if worker.process.poll() is None:
                os.killpg(worker.process.pid, signal.SIGKILL)
        storage.delete_concurrency_limit("kilosort")  # the shipped config's default limit, set by these runs
    status_a = pg_instance.get_run_by_id(run_a).status
    assert status_a == DagsterRunStatus.CANCELED, (status_a, workers[0].output())
    [gave_back] = engine_events(pg_instance, run_a, "Gave back the concurrency slots this run still held")
    assert "kilosort (sorted_units)" in gave_back.message
    assert completed_jobs(slurm)[sort_job_a]["JobState"] == "CANCELLED"
    [sort_b] = [
        e for e in events_of(pg_instance, run_b, dg.DagsterEventType.STEP_START) if e.step_key == "sorted_units"
    ]
    assert sort_b.timestamp >= terminated_at - 5
    assert (Path(config["store"]) / "sessions" / keys[1] / "sorting" / "params.py").exists()
    assert not (Path(config["store"]) / "sessions" / keys[0] / "sorting").exists()
    assert slurm.queue() == []
    print(f"run B's sort started {sort_b.timestamp - terminated_at:.1f} s after run A was terminated")


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
    assert len(attached_output(pg_instance, run_id, SMOKE_STEP)) == 2  # each attempt's job output
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
    """Dagster terminates a run by interrupting its run worker: the executor scancels the running job and revokes its
    attempt; squeue is empty afterwards and the run ends CANCELED within seconds (the op would hold 10 minutes)."""
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
    messages = engine_messages(pg_instance, run_id)
    assert any(m.startswith(f"Cancelling SLURM job {job_id} of {SMOKE_STEP}") for m in messages), messages
    assert any(m.startswith(f"scancel {job_id} ({SMOKE_STEP}): done") for m in messages), messages
    assert completed_jobs(slurm)[job_id]["JobState"] == "CANCELLED"
    attempt = (tmp_path / "jobs" / run_id / f"{SMOKE_STEP}.attempt").read_text()
    assert attempt.startswith("revoked ") and "the run was terminated" in attempt
    print(f"terminated run {run_id[:8]}: job {job_id} cancelled, worker ended {stopped_after:.1f} s after SIGINT")


def test_settings_file_with_a_slurm_section_and_bad_settings_are_clear(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("slurm:\n  gpu_partition: a100\n  gres: gpu:a100:1\n  gpu_memory_mib: 40960\n")
    loaded = load_slurm_settings({"settings_file": str(path)})
    job = plan_job(loaded, needs_gpu=True, n_channels=384)
    assert job.partition == "a100" and job.gres == "gpu:a100:1" and int(job.env["KS_PLATFORM_BATCH_SIZE"]) > 0
    assert plan_job(loaded, needs_gpu=False).gres is None
    path.write_text("slurm:\n  partition: a100\n")
    with pytest.raises(Exception, match="slurm.partition: Extra inputs are not permitted"):
        load_slurm_settings({"settings_file": str(path)})


def test_example_settings_file_lists_every_key_with_its_default():
    """deploy/slurm.example.yaml is the reference an admin copies: exactly the settings' keys, each at its default."""
    example = yaml.safe_load((REPO / "deploy" / "slurm.example.yaml").read_text())["slurm"]
    defaults = {
        name: field.get_default(call_default_factory=True) for name, field in SlurmSettings.model_fields.items()
    }
    assert list(example) == list(defaults), set(example) ^ set(defaults)
    assert example == defaults
    assert load_slurm_settings({"settings_file": str(REPO / "deploy" / "slurm.example.yaml")}) == SlurmSettings()


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


def test_sort_job_larger_than_any_node_fails_naming_the_settings(slurm, pg_instance, tmp_path):
    """The default sort job (4 CPUs) on a smaller node (here: 2 CPUs more than the node has): SLURM accepts it but
    keeps it PENDING (PartitionConfig) for ever; the step fails at once, naming the settings that size it and how
    to see what the nodes offer, and the job is scancelled."""
    cpus = (os.cpu_count() or 1) + 2
    run_config = {"execution": {"config": {"settings": settings(tmp_path, cpus_per_task=cpus)}}}
    with dg.execute_job(
        dg.reconstructable(slurm_jobs.slurm_gpu_smoke_job), instance=pg_instance, run_config=run_config
    ) as result:
        assert not result.success
        run_id = result.run_id
    [failure] = events_of(pg_instance, run_id, dg.DagsterEventType.STEP_FAILURE)
    message = error_chain(failure.dagster_event.event_specific_data.error)
    assert "will never start: SLURM keeps it PENDING with reason PartitionConfig" in message, message
    assert f"(partition {PARTITION}, --gres=gpu:1, {cpus} CPU" in message, message
    assert "(gpu_partition, gres, mem, cpus_per_task, time_limit)" in message and "sinfo -o" in message, message
    assert slurm.queue() == []


def test_job_killed_outright_fails_the_step_with_slurms_state_and_is_retried(slurm, pg_instance, tmp_path):
    """SIGKILL to the job's processes (as the kernel's OOM killer would end them): the step reports nothing, so
    the health check fails it with SLURM's state, reason and exit code, revokes the attempt and scancels the job
    (nothing of it may run on); the retry policy reruns it as a new job."""
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
    assert any(m.startswith(f"scancel {killed[0]} ({SMOKE_STEP})") for m in engine_messages(pg_instance, run_id))
    assert "printed by report_slurm_job on stdout, attempt 0" in attached_output(pg_instance, run_id, SMOKE_STEP)[0]
    print(f"killed job {killed[0]}: {message.splitlines()[0][:300]}")


def walkthrough_commands() -> list[str]:
    """The commands of the admin walkthrough's check in docs/slurm.md (the fenced block after its marker)."""
    page = (REPO / "docs" / "slurm.md").read_text()
    block = re.search(r"<!-- slurm-walkthrough-check -->\s*```bash\n(.*?)```", page, re.S)
    assert block, "docs/slurm.md: the SLURM walkthrough's check block is missing"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_docs_admin_walkthrough_runs_as_written_on_the_one_node_cluster(slurm, pg_instance, tmp_path):
    """The walkthrough of docs/slurm.md: a slurm.yaml from deploy/slurm.example.yaml, DAGSTER_HOME with the PostgreSQL
    config, then its check commands verbatim (sinfo, scontrol, ``slurm_executor check --submit``): every check passes
    and a small job per partition imports the platform on the node. The example's defaults (4 CPUs and 4 hours for
    the sort) do not fit this node and partition: the check says so, naming the settings."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "deploy" / "dagster.postgres.yaml").read_text())
    example = yaml.safe_load((REPO / "deploy" / "slurm.example.yaml").read_text())
    example["slurm"].update(
        {
            "gpu_partition": PARTITION,
            "time_limit": "20:00",
            "cpu_time_limit": "20:00",
            "mem": "1G",
            "cpus_per_task": 1,
            "cpu_mem": "1G",
            "cpu_cpus_per_task": 1,
            "workdir": str(tmp_path / "jobs"),
            "export": list(INSTANCE_ENV),
        }
    )
    slurm_yaml = tmp_path / "slurm.yaml"
    slurm_yaml.write_text(yaml.safe_dump(example))
    commands = walkthrough_commands()
    exports = [line for line in commands if line.startswith("export ")]
    assert exports and {name.split("=")[0] for line in exports for name in line.split()[1:]} == {
        "KS_PLATFORM_DEPLOYMENT",
        "DAGSTER_HOME",
    }
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "KS_PLATFORM_DEPLOYMENT": str(slurm_yaml),
        "DAGSTER_HOME": str(home),
    }
    script = "set -e\n" + "\n".join(line for line in commands if not line.startswith("export "))
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout and done.stdout.count("ok  ") >= 9, done.stdout
    assert "ok   sort job ran: job" in done.stdout and "ok   CPU job ran: job" in done.stdout
    example["slurm"].update({"cpus_per_task": SlurmSettings().cpus_per_task, "time_limit": SlurmSettings().time_limit})
    slurm_yaml.write_text(yaml.safe_dump(example))  # the defaults: 4 CPUs and 4 hours for the sort
    refused = subprocess.run(
        [sys.executable, "-m", "ks_platform.execution.slurm_executor", "check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert refused.returncode == 1, refused.stdout
    assert f"FAIL sort job time limit: time_limit=04:00:00 is more than partition {PARTITION} allows" in refused.stdout
    assert "Fix: lower time_limit in " in refused.stdout, refused.stdout
    if (os.cpu_count() or 1) < SlurmSettings().cpus_per_task:
        assert "FAIL sort job fits a node" in refused.stdout and "Fix: lower mem, cpus_per_task, gres" in refused.stdout
    print(done.stdout)

"""The placing Docker executor on a real Dagster instance backed by a real PostgreSQL server.

Without a Docker engine these still exercise: per-GPU slots shared by runs, a step that waits for its GPU
(log line, no failure) and then starts, an unreachable engine → clear step failure + retry policy. With the
engine and the ``ks-platform:cpu`` image (``ks_platform_tests.docker_support``) they also run steps in
containers: missing image, labels/removal, and a partitioned sort whose Kilosort step runs in the image; and
the faults of a step container: killed mid-step (clear failure, the retry runs in a new container), the run
terminated (its containers stopped and removed), killed mid-sort (clear failure, no ``sorting/`` half-written).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml
from dagster._core.storage.dagster_run import DagsterRunStatus

from ks_platform.core.errors import PlatformConfigError
from ks_platform.definitions import sort_session_in_containers
from ks_platform.execution.inventory import Inventory
from ks_platform.execution.jobs import gpu_placement_smoke_job, placement_smoke_job
from ks_platform.execution.placement import RUN_LABEL, STEP_LABEL, StepRequest, candidate_placements
from ks_platform.execution.slots import SlotLedger
from ks_platform.execution.step_executor import require_shared_storage
from ks_platform_tests import executor_support
from ks_platform_tests.conftest import failure_messages, stop_process_group, wait_until
from ks_platform_tests.executor_support import cpu_inventory
from ks_platform_tests.postgres_support import postgres_url  # noqa: F401 - session fixture
from ks_platform_tests.run_worker_support import RunWorker, engine_messages, events_of, labelled_containers

# Fixtures of another module, used here by name.
pg_instance, engine_and_cpu_image = executor_support.pg_instance, executor_support.engine_and_cpu_image

REPO = Path(__file__).resolve().parent.parent
UNREACHABLE = "tcp://127.0.0.1:9"  # discard port: nothing answers Docker there


def one_gpu_inventory(tmp_path: Path, docker_url: str = UNREACHABLE, **host) -> dict:
    return {
        "store": str(tmp_path / "store"),
        "poll_seconds": 1,
        "hosts": [
            {
                "name": f"gpu-{tmp_path.name[-12:]}",
                "docker_url": docker_url,
                "backend": "cuda",
                "cpu_slots": 0,
                "gpus": [{"id": "0", "memory_mib": 16384}],
                **host,
            }
        ],
    }


def test_postgres_instance_is_shared_storage_and_sqlite_is_refused(pg_instance):
    assert type(pg_instance.run_storage).__name__ == "PostgresRunStorage"
    require_shared_storage(pg_instance, "Docker executor", "step containers")  # no error
    with (
        dg.instance_for_test() as sqlite_instance,
        pytest.raises(PlatformConfigError, match="dagster.yaml: the instance uses .*Sqlite.*Fix: use PostgreSQL"),
    ):
        require_shared_storage(sqlite_instance, "Docker executor", "step containers")


def test_one_sort_per_gpu_across_runs_and_processes(pg_instance, tmp_path):
    """Two runs want the only GPU: the first gets it, the second queues; a second instance object sees the same."""
    inventory = Inventory.from_mapping(one_gpu_inventory(tmp_path))
    first = pg_instance.create_run_for_job(gpu_placement_smoke_job)
    second = pg_instance.create_run_for_job(gpu_placement_smoke_job)
    candidates = candidate_placements(
        inventory, StepRequest.from_tags(first.run_id, "sorted_units", {"ks_platform/needs": "gpu"}, n_channels=32)
    )
    ledger = SlotLedger(pg_instance)
    ledger.ensure_capacity([candidates[0].slot])
    with dg.DagsterInstance.from_ref(pg_instance.get_ref()) as other_process:
        other_ledger = SlotLedger(other_process)
        assert ledger.try_claim(first.run_id, "sorted_units", candidates) == candidates[0]
        assert other_ledger.try_claim(second.run_id, "sorted_units", candidates) is None
        assert other_ledger.holders(candidates[0].slot) == [f"run {first.run_id[:8]} sorted_units"]
        ledger.withdraw(first.run_id, "sorted_units", candidates)
        assert other_ledger.try_claim(second.run_id, "sorted_units", candidates) == candidates[0]
        other_ledger.withdraw(second.run_id, "sorted_units", candidates)
    assert pg_instance.event_log_storage.get_concurrency_info(candidates[0].slot.key).claimed_slots == []


def _claim_at_once(instance_ref, run_ids: list[str], candidates, barrier, claimed) -> None:
    """One contender (a forked process): each round, wait for the others, claim the GPU, report whether it got it,
    wait until every contender has claimed, then give it back."""
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        ledger = SlotLedger(instance)
        for round_index, run_id in enumerate(run_ids):
            barrier.wait(timeout=60)
            if round_index == 0:
                ledger.ensure_capacity([candidates[0].slot])  # as each run's executor does before its first claim
            claimed.put((round_index, run_id, ledger.try_claim(run_id, "sorted_units", candidates) is not None))
            barrier.wait(timeout=60)
            ledger.withdraw(run_id, "sorted_units", candidates)


def test_contenders_claiming_the_only_gpu_at_the_same_instant_get_it_once(pg_instance, tmp_path):
    """Dagster's claim reads a free slot, then writes it: without the ledger's per-slot lock, contenders released
    together could all be told CLAIMED for the one GPU (two sorts on GPU 0 in test_parallel_sorts)."""
    import multiprocessing

    contenders, rounds = 4, 15
    inventory = Inventory.from_mapping(one_gpu_inventory(tmp_path))
    runs = [
        [pg_instance.create_run_for_job(gpu_placement_smoke_job).run_id for _ in range(rounds)]
        for _ in range(contenders)
    ]
    candidates = candidate_placements(
        inventory, StepRequest.from_tags(runs[0][0], "sorted_units", {"ks_platform/needs": "gpu"}, n_channels=32)
    )
    context = multiprocessing.get_context("fork")
    barrier, claimed = context.Barrier(contenders), context.Queue()
    workers = [
        context.Process(target=_claim_at_once, args=(pg_instance.get_ref(), mine, candidates, barrier, claimed))
        for mine in runs
    ]
    for worker in workers:
        worker.start()
    outcomes = [claimed.get(timeout=300) for _ in range(contenders * rounds)]
    for worker in workers:
        worker.join(timeout=60)
    winners = {index: sum(won for round_index, _, won in outcomes if round_index == index) for index in range(rounds)}
    assert set(winners.values()) == {1}, winners  # every round: exactly one contender got the GPU
    assert pg_instance.event_log_storage.get_concurrency_info(candidates[0].slot.key).claimed_slots == []


def test_step_waits_for_busy_gpu_then_unreachable_engine_fails_clearly_with_retry(pg_instance, tmp_path):
    """Another run holds the GPU: the step waits (log line, no failure); once freed it is placed; the engine
    is unreachable, so the step fails with the host, URL and fix, and the op's RetryPolicy(max_retries=1) applies."""
    inventory_config = one_gpu_inventory(tmp_path)
    inventory = Inventory.from_mapping(inventory_config)
    holder = pg_instance.create_run_for_job(gpu_placement_smoke_job)
    candidates = candidate_placements(
        inventory, StepRequest.from_tags(holder.run_id, "sorted_units", {"ks_platform/needs": "gpu"})
    )
    ledger = SlotLedger(pg_instance)
    ledger.ensure_capacity([candidates[0].slot])
    assert ledger.try_claim(holder.run_id, "sorted_units", candidates) is not None
    release = threading.Timer(6.0, ledger.withdraw, args=(holder.run_id, "sorted_units", candidates))
    release.start()
    started = time.monotonic()
    try:
        with dg.execute_job(
            dg.reconstructable(gpu_placement_smoke_job),
            instance=pg_instance,
            run_config={"execution": {"config": {"inventory": inventory_config}}},
        ) as result:
            run_id = result.run_id
            assert not result.success
    finally:
        release.cancel()
    assert time.monotonic() - started >= 6.0
    messages = [entry.message or "" for entry in events_of(pg_instance, run_id, dg.DagsterEventType.ENGINE_EVENT)]
    wait_lines = [m for m in messages if "waits for a GPU" in m]
    assert (
        wait_lines
        and "nothing has failed" in wait_lines[0]
        and f"run {holder.run_id[:8]} sorted_units" in wait_lines[0]
    )
    retries = events_of(pg_instance, run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    failures = events_of(pg_instance, run_id, dg.DagsterEventType.STEP_FAILURE)
    assert len(retries) == 1 and len(failures) == 1
    reason = failures[0].dagster_event.event_specific_data.error.message
    host = inventory.hosts[0].name
    assert f"Docker engine of host {host} at {UNREACHABLE} is unreachable" in reason
    assert f"Fix: start dockerd there or correct docker_url of host {host}" in reason
    # nothing of the run keeps the GPU
    assert pg_instance.event_log_storage.get_concurrency_info(candidates[0].slot.key).claimed_slots == []


def test_step_that_can_never_be_placed_fails_at_once(pg_instance, tmp_path):
    config = one_gpu_inventory(tmp_path)
    config["hosts"][0]["gpus"] = [{"id": "0", "memory_mib": 100}]
    with dg.execute_job(
        dg.reconstructable(gpu_placement_smoke_job),
        instance=pg_instance,
        run_config={"execution": {"config": {"inventory": config}}},
    ) as result:
        assert not result.success
        [message] = failure_messages(result)[-1:]
    assert "needs a GPU with ≥" in message and "Fix: add a host with a larger GPU" in message


# -- with a Docker engine and the cpu image ----------------------------------------------------------------------
def container_session(
    tmp_path: Path, image: str, generated_session: Path, monkeypatch, instance: dg.DagsterInstance
) -> tuple[dict, str]:
    """The canonical session in a landing root the image's non-root user can read and a store it can write, an
    inventory for the local engine (2 CPU slots), the platform env for the step containers, and its partition."""
    from ks_platform.core.sessions import SessionRef
    from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME
    from ks_platform_tests.conftest import ROOT_NAME, TEST_SPEC

    landing = tmp_path / "landing"
    shutil.copytree(generated_session, landing / generated_session.name)
    config = cpu_inventory(tmp_path, image, cpu_slots=2)
    config["landing"] = {ROOT_NAME: str(landing)}
    for path in (tmp_path, landing, Path(config["store"])):  # the image's non-root user writes the store
        for item in [path, *path.rglob("*")]:
            os.chmod(item, 0o777 if item.is_dir() else 0o666)
    monkeypatch.setenv("KS_PLATFORM_STORE", config["store"])
    monkeypatch.setenv("KS_PLATFORM_LANDING", f"{ROOT_NAME}={landing}")
    monkeypatch.setenv("KS_PLATFORM_BACKEND", "cpu")
    key = SessionRef(ROOT_NAME, generated_session.name, TEST_SPEC.recording_date, "imec0").key
    instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, [key])
    return config, key


def hold_cpu_slot(instance: dg.DagsterInstance, inventory: Inventory) -> tuple[str, list]:
    """Another run takes the only CPU slot of ``inventory`` (as a running step of it would)."""
    holder = instance.create_run_for_job(placement_smoke_job)
    candidates = candidate_placements(inventory, StepRequest.from_tags(holder.run_id, SMOKE_STEP, {}))
    ledger = SlotLedger(instance)
    ledger.ensure_capacity([candidates[0].slot])
    assert ledger.try_claim(holder.run_id, SMOKE_STEP, candidates) is not None
    return holder.run_id, candidates


def test_missing_image_fails_clearly_before_a_slot_is_taken(pg_instance, tmp_path, engine_and_cpu_image):
    """The only CPU slot is busy for 120 s, the image is not on the host: the step fails at once (it does not
    wait for the slot) with one message naming image, host and fix; the retry policy applies; no container."""
    client, _ = engine_and_cpu_image
    config = cpu_inventory(tmp_path, "ks-platform:no-such-tag")
    holder, candidates = hold_cpu_slot(pg_instance, Inventory.from_mapping(config))
    started = time.monotonic()
    try:
        with dg.execute_job(
            dg.reconstructable(placement_smoke_job),
            instance=pg_instance,
            run_config={"execution": {"config": {"inventory": config}}},
        ) as result:
            assert not result.success
            messages = failure_messages(result)
            run_id = result.run_id
    finally:
        SlotLedger(pg_instance).withdraw(holder, SMOKE_STEP, candidates)
    took = time.monotonic() - started
    assert took < 60, f"the step waited for the busy slot ({took:.0f} s) instead of failing on the missing image"
    assert (
        "image ks-platform:no-such-tag is missing on host local (unix:///var/run/docker.sock). Fix: build/load it "
        "there (docker/README.md" in messages[-1]
    ), messages
    assert "or set pull: true for host local in executor config" in messages[-1]
    assert len(events_of(pg_instance, run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 1
    assert events_of(pg_instance, run_id, dg.DagsterEventType.STEP_WORKER_STARTING) == []
    assert not any("waits for a CPU slot" in m for m in engine_messages(pg_instance, run_id))
    assert labelled_containers(client, run_id) == []
    print(f"missing image: run failed in {took:.1f} s with the slot held by another run")


def test_missing_image_is_pulled_when_allowed_and_a_failed_pull_is_clear(pg_instance, tmp_path, engine_and_cpu_image):
    """``pull: true``: the executor pulls the missing image before placing; a registry that does not answer
    (127.0.0.1:9) makes that a clear failure naming the image, the host and the engine's reason."""
    client, _ = engine_and_cpu_image
    image = "127.0.0.1:9/ks-platform:cpu"
    config = cpu_inventory(tmp_path, image)
    config["hosts"][0]["pull"] = True
    with dg.execute_job(
        dg.reconstructable(placement_smoke_job),
        instance=pg_instance,
        run_config={"execution": {"config": {"inventory": config}}},
    ) as result:
        assert not result.success
        messages = failure_messages(result)
        run_id = result.run_id
    assert any(m.startswith(f"Pulling {image} on host local") for m in engine_messages(pg_instance, run_id))
    assert (
        f"image {image} is missing on host local and pulling it failed: " in messages[-1]
        and "Fix: check the image name and the host's registry access" in messages[-1]
    ), messages
    assert labelled_containers(client, run_id) == []


def test_cpu_slots_queue_concurrent_runs_and_containers_are_removed(pg_instance, tmp_path, engine_and_cpu_image):
    """One CPU slot, two runs (two run-worker processes) holding it 8 s each: the second waits, both succeed, logs
    kept, containers gone."""
    client, image = engine_and_cpu_image
    config = cpu_inventory(tmp_path, image)
    run_config = {
        "execution": {"config": {"inventory": config}},
        "ops": {"report_placement": {"config": {"hold_seconds": 8.0}}},
    }
    workers = []
    for name in ("a", "b"):
        workers.append(RunWorker(tmp_path / name, "placement_smoke_job", run_config))
        workers[-1].run_id(pg_instance, timeout=90)
    run_ids = []
    for worker in workers:
        assert worker.finish(pg_instance, timeout=300), worker.failures(pg_instance)
        run_ids.append(worker.run_id(pg_instance, timeout=0))
    waited = []
    for run_id in run_ids:
        messages = [entry.message or "" for entry in events_of(pg_instance, run_id, dg.DagsterEventType.ENGINE_EVENT)]
        waited.append(any("waits for a CPU slot" in m for m in messages))
        assert any("its output is attached and the container was removed" in m for m in messages)
        logs = [
            entry.user_message for entry in pg_instance.all_logs(run_id) if "placement {" in (entry.user_message or "")
        ]
        assert logs and '"KS_PLATFORM_IMAGE_DIGEST": "sha256:' in logs[0]
        assert labelled_containers(client, run_id) == []
    assert waited.count(True) == 1


def test_sort_step_runs_in_cpu_image_with_postgres_and_matches_in_process(
    pg_instance, tmp_path, engine_and_cpu_image, sorted_workspace, generated_session, monkeypatch
):
    """A partitioned sort_session run through the executor: every step in a ks-platform:cpu container."""
    client, image = engine_and_cpu_image
    reference_ws, reference_key, reference_result = sorted_workspace
    assert reference_result.success
    config, key = container_session(tmp_path, image, generated_session, monkeypatch, pg_instance)
    with dg.execute_job(
        dg.reconstructable(sort_session_in_containers),
        instance=pg_instance,
        run_config={"execution": {"config": {"inventory": config}}},
        tags={"dagster/partition": key},
    ) as result:
        assert result.success, failure_messages(result)
        run_id = result.run_id
    starts = events_of(pg_instance, run_id, dg.DagsterEventType.STEP_WORKER_STARTING)
    assert {entry.step_key for entry in starts} >= {"sorted_units", "recording_binary", "phy_bundle"}
    assert labelled_containers(client, run_id) == []
    ours = Path(config["store"]) / "sessions" / key / "sorting"
    theirs = reference_ws.store(reference_key).sorting_dir
    for name in ("spike_times.npy", "spike_clusters.npy"):
        np.testing.assert_array_equal(np.load(ours / name), np.load(theirs / name))
    lineage = json.loads((ours / "lineage.json").read_text())
    assert lineage["image"] == image and str(lineage["image_digest"]).startswith("sha256:")


# -- faults of step containers (real engine, real containers, real instance) -------------------------------------
SMOKE_STEP = "report_placement"
CPU_SLOT = "ks_platform/cpu/local"  # the CPU pool of cpu_inventory's host "local"


def running_step_container(client, run_id: str, step_key: str):
    found = client.containers.list(
        filters={"label": [f"{RUN_LABEL}={run_id}", f"{STEP_LABEL}={step_key}"], "status": "running"}
    )
    return found[0] if found else None


def step_started(instance: dg.DagsterInstance, run_id: str, step_key: str) -> bool:
    return any(entry.step_key == step_key for entry in events_of(instance, run_id, dg.DagsterEventType.STEP_START))


def slot_holders(instance: dg.DagsterInstance, slot_key: str) -> list[str]:
    return [claim.run_id for claim in instance.event_log_storage.get_concurrency_info(slot_key).claimed_slots]


def test_container_killed_mid_step_fails_clearly_then_the_retry_policy_reruns_it(
    pg_instance, tmp_path, engine_and_cpu_image
):
    """SIGKILL of the step's container while its op runs: the health check fails that attempt with the exit code,
    the op's RetryPolicy(max_retries=1) reruns it in a new container, the run succeeds, no container is left."""
    client, image = engine_and_cpu_image
    config = cpu_inventory(tmp_path, image)
    run_config = {
        "execution": {"config": {"inventory": config}},
        "ops": {SMOKE_STEP: {"config": {"hold_seconds": 15.0}}},
    }
    worker = RunWorker(tmp_path / "worker", "placement_smoke_job", run_config)
    try:
        run_id = worker.run_id(pg_instance, timeout=90)
        first = wait_until(
            lambda: step_started(pg_instance, run_id, SMOKE_STEP)
            and running_step_container(client, run_id, SMOKE_STEP),
            120,
            f"{SMOKE_STEP} to run in its container",
        )
        first.kill()  # SIGKILL, while the op holds its slot: exit code 137
        assert worker.finish(pg_instance, timeout=240), worker.failures(pg_instance)
    finally:
        worker.stop(client, pg_instance)

    retries = events_of(pg_instance, run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert len(retries) == 1
    reason = retries[0].dagster_event.event_specific_data.error.message
    assert (
        f"Step {SMOKE_STEP} failed health check: container of {SMOKE_STEP} on local CPU exited with code 137 (killed)"
        in reason
    )
    assert events_of(pg_instance, run_id, dg.DagsterEventType.STEP_FAILURE) == []
    assert [entry.step_key for entry in events_of(pg_instance, run_id, dg.DagsterEventType.STEP_SUCCESS)] == [
        SMOKE_STEP
    ]
    # the retried attempt ran in a new container (its own name, attempt suffix -1), which finished the op
    starts = events_of(pg_instance, run_id, dg.DagsterEventType.STEP_WORKER_STARTING)
    containers = [entry.dagster_event.event_specific_data.metadata["Docker container id"].value for entry in starts]
    names = [entry.dagster_event.event_specific_data.metadata["container"].value for entry in starts]
    assert len(containers) == 2 and containers[0] == first.id and containers[1] != first.id
    assert names[0] == first.name and names[1] == f"{first.name}-1"
    messages = engine_messages(pg_instance, run_id)
    assert any(
        f"Container {names[0]} of {SMOKE_STEP} on local CPU exited with code 137; its output is attached and the "
        "container was removed" in m
        for m in messages
    )
    assert any(
        f"Container {names[1]} of {SMOKE_STEP} on local CPU exited with code 0; its output is attached and the "
        "container was removed" in m
        for m in messages
    )
    assert len([entry for entry in pg_instance.all_logs(run_id) if "placement {" in (entry.user_message or "")]) == 1
    assert labelled_containers(client, run_id) == []
    assert run_id not in slot_holders(pg_instance, CPU_SLOT)


def test_container_that_exits_without_reporting_fails_after_the_grace_period(
    pg_instance, tmp_path, engine_and_cpu_image
):
    """A step process that ends with code 0 before its outcome reaches the database (lost events): the run does not
    wait for ever; after ``exit_grace_seconds`` the attempt fails with what happened and what to check."""
    client, image = engine_and_cpu_image
    config = {**cpu_inventory(tmp_path, image), "exit_grace_seconds": 5}
    run_config = {"execution": {"config": {"inventory": config}}, "ops": {SMOKE_STEP: {"config": {"vanish": True}}}}
    worker = RunWorker(tmp_path / "worker", "placement_smoke_job", run_config)
    try:
        run_id = worker.run_id(pg_instance, timeout=90)
        assert not worker.finish(pg_instance, timeout=240), "both attempts vanished: the run fails"
    finally:
        worker.stop(client, pg_instance)
    retries = events_of(pg_instance, run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    failures = events_of(pg_instance, run_id, dg.DagsterEventType.STEP_FAILURE)
    assert len(retries) == 1 and len(failures) == 1
    for entry in (*retries, *failures):
        message = entry.dagster_event.event_specific_data.error.message
        assert (
            "exited with code 0 but its step reported no outcome within 5" in message
            and "Fix: check that step containers reach the same PostgreSQL" in message
        ), message
    assert labelled_containers(client, run_id) == []
    assert run_id not in slot_holders(pg_instance, CPU_SLOT)


def test_terminating_a_run_stops_and_removes_its_containers(pg_instance, tmp_path, engine_and_cpu_image):
    """Dagster terminates a run by marking it CANCELING and interrupting its run worker (SIGINT): the executor
    forwards it to the running step (terminate_step), whose container is stopped and removed; the run ends
    CANCELED within seconds (the op would hold 300 s), its slot is free."""
    client, image = engine_and_cpu_image
    config = cpu_inventory(tmp_path, image)
    run_config = {
        "execution": {"config": {"inventory": config}},
        "ops": {SMOKE_STEP: {"config": {"hold_seconds": 300.0}}},
    }
    worker = RunWorker(tmp_path / "worker", "placement_smoke_job", run_config)
    try:
        run_id = worker.run_id(pg_instance, timeout=90)
        container = wait_until(
            lambda: step_started(pg_instance, run_id, SMOKE_STEP)
            and running_step_container(client, run_id, SMOKE_STEP),
            120,
            f"{SMOKE_STEP} to run in its container",
        )
        # What the run launcher's terminate() does: mark the run CANCELING, then the code server interrupts the worker.
        pg_instance.report_run_canceling(pg_instance.get_run_by_id(run_id))
        interrupted = time.monotonic()
        os.kill(worker.process.pid, signal.SIGINT)
        try:
            worker.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the run worker did not end within 90 s of SIGINT:\n{worker.output()}") from None
        stopped_after = time.monotonic() - interrupted
        assert stopped_after < 60, f"the worker took {stopped_after:.0f} s to stop (the op holds 300 s)"

        run = pg_instance.get_run_by_id(run_id)
        assert run is not None and run.status == DagsterRunStatus.CANCELED, (run and run.status, worker.output())
        messages = engine_messages(pg_instance, run_id)
        assert any(m.startswith(f"Stopping {SMOKE_STEP} (container on local CPU)") for m in messages), messages
        assert any(
            f"Container {container.name} of {SMOKE_STEP} on local CPU exited with code" in m
            and "the container was removed" in m
            for m in messages
        ), messages
        assert events_of(pg_instance, run_id, dg.DagsterEventType.STEP_SUCCESS) == []
        assert client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"}) == []
        assert run_id not in slot_holders(pg_instance, CPU_SLOT)
        print(
            f"terminated run {run_id[:8]}: {run.status.value}, worker ended {stopped_after:.1f} s after SIGINT (rc "
            f"{worker.process.returncode})"
        )
    finally:  # never leave a worker or a container behind for later tests, even when an assertion failed
        worker.stop(client, pg_instance)


@pytest.mark.slow
def test_container_killed_mid_sort_fails_the_step_clearly_with_nothing_half_written(
    pg_instance, tmp_path, engine_and_cpu_image, generated_session, monkeypatch
):
    """SIGKILL of the sorted_units container while Kilosort writes: the step fails with the exit code (retries off in
    this run: the sort's own policy would sort again), the run fails, no ``sorting/`` under its final name, no
    container, lock and slot free."""
    from ks_platform.core.store import LOCK_FILE

    client, image = engine_and_cpu_image
    config, key = container_session(tmp_path, image, generated_session, monkeypatch, pg_instance)
    session = Path(config["store"]) / "sessions" / key

    def kilosort_writing() -> bool:  # Kilosort has opened its log in the step's temporary sibling of sorting/
        return any(any(staged.iterdir()) for staged in session.glob(".sorting.tmp-*"))

    worker = RunWorker(
        tmp_path / "worker",
        "sort_session_in_containers",
        {"execution": {"config": {"inventory": config, "retries": {"disabled": {}}}}},
        tags={"dagster/partition": key},
    )
    try:
        run_id = worker.run_id(pg_instance, timeout=120)
        container = wait_until(
            lambda: kilosort_writing() and running_step_container(client, run_id, "sorted_units"),
            900,
            "Kilosort to write into its temporary sorting folder",
            poll=0.5,
        )
        time.sleep(3)  # inside Kilosort, not at its first line
        staged = [item.name for tmp in session.glob(".sorting.tmp-*") for item in tmp.iterdir()]
        container.kill()  # SIGKILL: exit code 137
        assert not worker.finish(pg_instance, timeout=300)
    finally:
        worker.stop(client, pg_instance)

    failures = [
        entry
        for entry in events_of(pg_instance, run_id, dg.DagsterEventType.STEP_FAILURE)
        if entry.step_key == "sorted_units"
    ]
    assert len(failures) == 1
    reason = failures[0].dagster_event.event_specific_data.error.message
    assert (
        "Step sorted_units failed health check: container of sorted_units on local CPU exited with code 137 (killed)"
        in reason
    )
    assert events_of(pg_instance, run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY) == []
    assert "sorted_units" not in {
        entry.step_key for entry in events_of(pg_instance, run_id, dg.DagsterEventType.STEP_SUCCESS)
    }
    assert not (session / "sorting").exists(), "a killed sort must leave no sorting/ under its final name"
    assert not (session / "phy").exists()
    assert (session / "binary").is_dir()  # the steps before it are whole
    assert labelled_containers(client, run_id) == []
    assert run_id not in slot_holders(pg_instance, CPU_SLOT)
    with open(session / LOCK_FILE, "a+") as handle:  # the kernel released the killed container's session lock
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    print(f"killed sorted_units of run {run_id[:8]} while Kilosort had written {sorted(staged)}")


# -- the code location's own jobs (ks_platform.definitions, as workspace.yaml loads it) in step containers ----------
#: A run worker for a job of the code location: its executor follows ``KS_PLATFORM_DEPLOYMENT`` /
#: ``KS_PLATFORM_EXECUTOR`` of the worker's environment; the step container loads the same code location.
DEFS_RUN_WORKER = """
import json, sys
import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository
job = ReconstructableRepository.for_module("ks_platform.definitions", "defs").get_reconstructable_job(sys.argv[1])
run_config, tags = json.loads(sys.argv[2]), json.loads(sys.argv[3])
with dg.DagsterInstance.get() as instance:
    with dg.execute_job(job, instance=instance, run_config=run_config, tags=tags) as result:
        print(f"run {result.run_id} success={result.success}", flush=True)
"""


def doctor_inventory(tmp_path: Path, image: str, host: str) -> tuple[dict, Path]:
    """A local cpu-engine inventory (host ``host``) with a store and a landing root uid 1000 can use, as a file."""
    config = cpu_inventory(tmp_path, image)
    config["hosts"][0]["name"] = host
    landing = tmp_path / "landing"
    landing.mkdir(exist_ok=True)
    config["landing"] = {"rig1": str(landing)}
    for path in (tmp_path, landing, Path(config["store"])):
        os.chmod(path, 0o777)
    path = tmp_path / f"{host}.yaml"
    path.write_text(yaml.safe_dump(config))
    return config, path


@pytest.mark.parametrize("route", ["deployment_env", "run_config_over_env", "run_config_only"])
def test_code_location_executor_settings_reach_the_step_container(route, pg_instance, tmp_path, engine_and_cpu_image):
    """daily_rollup_job of the code location through the placing executor, configured three ways: the documented
    deployment file (``KS_PLATFORM_DEPLOYMENT``, engine docker); that plus ``execution.config`` in run config (inventory_file, retries,
    max_concurrent: each step container used to fail with DagsterInvalidConfigError, exit code 1); run config
    alone with ``KS_PLATFORM_EXECUTOR=ks_platform_docker``. The step runs in its container on the chosen host."""
    client, image = engine_and_cpu_image
    _, env_file = doctor_inventory(tmp_path, image, "local-env")
    _, rc_file = doctor_inventory(tmp_path, image, "local-rc")
    deployment = tmp_path / "deployment.yaml"
    deployment.write_text(yaml.safe_dump({"engine": "docker", "inventory": yaml.safe_load(env_file.read_text())}))
    env = {"KS_PLATFORM_DEPLOYMENT": str(deployment), "KS_PLATFORM_EXECUTOR": ""}
    run_config: dict = {}
    if route != "deployment_env":
        run_config["execution"] = {
            "config": {"inventory_file": str(rc_file), "retries": {"disabled": {}}, "max_concurrent": 1}
        }
    if route == "run_config_only":
        env = {"KS_PLATFORM_DEPLOYMENT": "", "KS_PLATFORM_EXECUTOR": "ks_platform_docker"}
    from ks_platform.core.sessions import SessionRef
    from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME

    day = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    # one registered (not yet sorted) session on that date: the rollup has a row to write
    pg_instance.add_dynamic_partitions(
        SESSIONS_PARTITIONS_NAME, [SessionRef("rig1", f"m-{route}", dt.date.fromisoformat(day), "imec0").key]
    )
    worker = RunWorker(
        tmp_path / "worker",
        "daily_rollup_job",
        run_config,
        tags={"dagster/partition": day},
        code=DEFS_RUN_WORKER,
        env=env,
    )
    started = time.monotonic()
    try:
        run_id = worker.run_id(pg_instance, timeout=120)
        assert worker.finish(pg_instance, timeout=300), worker.failures(pg_instance)
    finally:
        worker.stop(client, pg_instance)
    [start] = events_of(pg_instance, run_id, dg.DagsterEventType.STEP_WORKER_STARTING)
    host = "local-env" if route == "deployment_env" else "local-rc"
    assert start.dagster_event.event_specific_data.metadata["host"].value == host
    assert [entry.step_key for entry in events_of(pg_instance, run_id, dg.DagsterEventType.STEP_SUCCESS)] == [
        "daily_rollup"
    ]
    assert labelled_containers(client, run_id) == []
    written = sorted(p.relative_to(tmp_path) for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert written and all(p.stat().st_uid == 1000 for p in (tmp_path / "store").rglob("*") if p.is_file()), written
    print(
        f"{route}: daily_rollup wrote {[str(p) for p in written]} in a step container on {host} in "
        f"{time.monotonic() - started:.1f} s"
    )


def test_container_that_exits_non_zero_puts_its_cause_in_the_step_failure(pg_instance, tmp_path, engine_and_cpu_image):
    """The classic mistake: no ``network_mode: host`` while PostgreSQL listens on 127.0.0.1. The step process
    cannot reach the instance and exits 1 before reporting anything; the failure names the cause from its output."""
    client, image = engine_and_cpu_image
    config = cpu_inventory(tmp_path, image)
    del config["hosts"][0]["network_mode"]
    run_config = {"execution": {"config": {"inventory": config, "retries": {"disabled": {}}}}}
    with dg.execute_job(dg.reconstructable(placement_smoke_job), instance=pg_instance, run_config=run_config) as result:
        assert not result.success
        messages = failure_messages(result)
        run_id = result.run_id
    assert (
        f"Step {SMOKE_STEP} failed health check: container of {SMOKE_STEP} on local CPU exited with code 1. Its last "
        "output lines" in messages[-1]
    ), messages
    assert "Connection refused" in messages[-1] and "psycopg2.OperationalError" in messages[-1], messages[-1]
    assert labelled_containers(client, run_id) == []
    print(messages[-1][-600:])


def test_store_folder_not_writable_by_the_container_user_fails_before_launch(
    pg_instance, tmp_path, engine_and_cpu_image, generated_session, monkeypatch
):
    """An output folder of the session owned by root (0755) while step containers run as the image's uid 1000:
    the first step fails before any container starts, naming the folder, owner, mode and the fix. The check agrees
    with the engine: a real uid-1000 container cannot write there, and can after the suggested chmod."""
    client, image = engine_and_cpu_image
    config, key = container_session(tmp_path, image, generated_session, monkeypatch, pg_instance)
    folder = Path(config["store"]) / "sessions" / key / "probe"
    folder.mkdir(parents=True)
    for parent in (folder.parent, folder.parent.parent):
        os.chmod(parent, 0o777)
    os.chown(folder, 0, 0)
    os.chmod(folder, 0o755)
    run_config = {"execution": {"config": {"inventory": config, "retries": {"disabled": {}}}}}
    with dg.execute_job(
        dg.reconstructable(sort_session_in_containers),
        instance=pg_instance,
        run_config=run_config,
        tags={"dagster/partition": key},
    ) as result:
        assert not result.success
        messages = failure_messages(result)
        run_id = result.run_id
    assert (
        f"store folder {folder} (owner 0:0, mode drwxr-xr-x) is not writable by uid 1000:1000, the user step "
        f"containers of image {image} run as on host local" in messages[0]
    ), messages
    assert messages[0].endswith(f"Fix: chown -R 1000:1000 {folder} (or chmod -R a+rwX {folder})"), messages[0]
    assert events_of(pg_instance, run_id, dg.DagsterEventType.STEP_WORKER_STARTING) == []
    assert labelled_containers(client, run_id) == []

    def write_as_the_image_user() -> tuple[int, str]:
        box = client.containers.run(
            image,
            entrypoint=["sh", "-c", f"touch {folder}/probe.json"],
            volumes={config["store"]: {"bind": config["store"], "mode": "rw"}},
            detach=True,
        )
        try:
            return box.wait(timeout=60)["StatusCode"], box.logs().decode()
        finally:
            box.remove(force=True)

    code, output = write_as_the_image_user()
    assert code != 0 and "Permission denied" in output
    os.chmod(folder, 0o777)
    assert write_as_the_image_user() == (0, "")


def test_rocm_group_add_is_numeric_host_gids():
    """group_add carries numbers: the host's ``group_ids``, else this machine's video/render gids for a local engine;
    a remote ROCm host without group_ids is refused with the fix."""
    import grp

    from ks_platform.execution.inventory import InventoryError
    from ks_platform.execution.placement import container_spec

    def rocm_spec(**host) -> list[str]:
        data = {
            "store": "/srv/store",
            "hosts": [
                {"name": "amd", "backend": "rocm", "cpu_slots": 0, "gpus": [{"id": "1", "memory_mib": 16368}], **host}
            ],
        }
        inventory = Inventory.from_mapping(data, source="test inventory")
        request = StepRequest.from_tags("run-1", "sorted_units", {"ks_platform/needs": "gpu"}, n_channels=32)
        [placement] = candidate_placements(inventory, request)
        spec = container_spec(inventory, placement, request, ["api", "execute_step"])
        assert spec.devices == ["/dev/kfd", "/dev/dri"] and spec.docker_kwargs()["group_add"] == spec.group_add
        return spec.group_add

    local = [
        str(grp.getgrnam(name).gr_gid) for name in ("video", "render") if name in {g.gr_name for g in grp.getgrall()}
    ]
    assert local and rocm_spec() == local and all(gid.isdigit() for gid in local)
    assert rocm_spec(group_ids=[44, 109]) == ["44", "109"]
    assert rocm_spec(docker_url="tcp://amd.lab:2376", group_ids=[44, 992]) == ["44", "992"]
    with pytest.raises(
        InventoryError,
        match=r"test inventory: hosts\.0: host 'amd' is a remote rocm engine without group_ids.*Fix: give each remote "
        r"rocm host group_ids",
    ):
        rocm_spec(docker_url="ssh://ops@amd.lab")


def test_make_executor_dev_starts_the_ui_on_postgres_with_the_docker_executor(tmp_path, engine_and_cpu_image):
    """scripts/executor_dev.sh (``make executor-dev``): PostgreSQL cluster, DAGSTER_HOME, deployment file, ``dagster dev``;
    the webserver answers with the code location loaded on PostgreSQL storage; SIGTERM stops dagster and the database."""
    import socket
    import tempfile
    import urllib.request

    from ks_platform_tests.postgres_support import _free_port

    port, pgport = _free_port(), _free_port()
    dev = Path(tempfile.mkdtemp(prefix="ks-platform-executor-dev-"))  # pytest's 0700 tmp dirs keep user postgres out
    env = {
        **os.environ,
        "KS_DEV_DATA": str(dev),
        "KS_DEV_PORT": str(port),
        "KS_DEV_PGPORT": str(pgport),
        "KS_PLATFORM_STORE": str(tmp_path / "store"),
        "KS_PLATFORM_LANDING": f"rig1={tmp_path / 'landing'}",
    }
    log = tmp_path / "executor_dev.log"
    started = time.monotonic()
    with open(log, "w") as handle:
        process = subprocess.Popen(
            ["bash", str(REPO / "scripts" / "executor_dev.sh")],
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    query = (
        b'{"query": "{ instance { runLauncher { name } } repositoriesOrError { ... on RepositoryConnection { nodes '
        b'{ jobs { name } } } } }"}'
    )

    def answered() -> str | None:
        assert process.poll() is None, f"executor_dev.sh ended:\n{log.read_text()[-3000:]}"
        try:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/graphql", data=query, headers={"Content-Type": "application/json"}
            )
            return urllib.request.urlopen(request, timeout=5).read().decode()
        except OSError:
            return None

    try:
        body = wait_until(answered, 150, "the Dagster webserver of executor-dev to answer", poll=1)
        up = time.monotonic() - started
        assert '"sort_session"' in body and '"host_doctor"' in body, body
        deployment = yaml.safe_load((dev / "deployment.yaml").read_text())
        inventory = deployment["inventory"]
        assert deployment["engine"] == "docker"
        assert inventory["hosts"][0]["network_mode"] == "host" and inventory["store"] == str(tmp_path / "store")
        assert "storage:\n  postgres:" in (dev / "dagster_home" / "dagster.yaml").read_text()
        assert Path(tmp_path / "store").stat().st_uid == 1000
        with socket.create_connection(("127.0.0.1", pgport), timeout=5):
            pass
    finally:
        stop_process_group(process, timeout=60)
        shutil.rmtree(dev, ignore_errors=True)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", pgport), timeout=5)
    print(f"executor-dev answered after {up:.1f} s; stopped with rc {process.returncode}")

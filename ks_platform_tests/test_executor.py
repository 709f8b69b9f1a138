"""The placing Docker executor on a real Dagster instance backed by a real PostgreSQL server.

Without a Docker engine these still exercise: per-GPU slots shared by runs, a step that waits for its GPU
(log line, no failure) and then starts, an unreachable engine → clear step failure + retry policy. With the
engine and the ``ks-platform:cpu`` image (``ks_platform_tests.docker_support``) they also run steps in
containers: missing image, labels/removal, and a partitioned sort whose Kilosort step runs in the image.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import numpy as np
import pytest
import yaml

from ks_platform.core.errors import PlatformConfigError
from ks_platform.execution.docker_executor import require_shared_storage
from ks_platform.execution.inventory import Inventory
from ks_platform.execution.jobs import gpu_placement_smoke_job, placement_smoke_job, sort_session_in_containers
from ks_platform.execution.placement import RUN_LABEL, StepRequest, candidate_placements
from ks_platform.execution.slots import SlotLedger
from ks_platform_tests.conftest import failure_messages
from ks_platform_tests.postgres_support import postgres_url  # noqa: F401 - session fixture

REPO = Path(__file__).resolve().parent.parent
UNREACHABLE = "tcp://127.0.0.1:9"  # discard port: nothing answers Docker there


@pytest.fixture(scope="module")
def pg_instance(postgres_url) -> Iterator[dg.DagsterInstance]:  # noqa: F811
    """An instance configured by deploy/dagster.postgres.yaml (env-based settings) on the test server."""
    url = urlparse(postgres_url)
    env = {"DAGSTER_PG_USERNAME": url.username, "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_HOST": url.hostname, "DAGSTER_PG_DB": url.path[1:], "DAGSTER_PG_PORT": str(url.port)}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    config = yaml.safe_load((REPO / "deploy" / "dagster.postgres.yaml").read_text())
    config.pop("concurrency")  # the deployment caps the kilosort pool at 1; the tests set their own slots
    try:
        with dg.instance_for_test(overrides=config) as instance:
            yield instance
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def one_gpu_inventory(tmp_path: Path, docker_url: str = UNREACHABLE, **host) -> dict:
    return {
        "store": str(tmp_path / "store"),
        "poll_seconds": 1,
        "hosts": [{"name": f"gpu-{tmp_path.name[-12:]}", "docker_url": docker_url, "backend": "cuda", "cpu_slots": 0, "gpus": [{"id": "0", "memory_mib": 16384}], **host}],
    }


def events_of(instance: dg.DagsterInstance, run_id: str, kind: dg.DagsterEventType) -> list:
    return [record.event_log_entry for record in instance.get_records_for_run(run_id, of_type=kind).records]


def test_postgres_instance_is_shared_storage_and_sqlite_is_refused(pg_instance):
    assert type(pg_instance.run_storage).__name__ == "PostgresRunStorage"
    require_shared_storage(pg_instance)  # no error
    with dg.instance_for_test() as sqlite_instance, pytest.raises(PlatformConfigError, match="dagster.yaml: the instance uses .*Sqlite.*Fix: use PostgreSQL"):
        require_shared_storage(sqlite_instance)


def test_one_sort_per_gpu_across_runs_and_processes(pg_instance, tmp_path):
    """Two runs want the only GPU: the first gets it, the second queues; a second instance object sees the same."""
    inventory = Inventory.from_mapping(one_gpu_inventory(tmp_path))
    first = pg_instance.create_run_for_job(gpu_placement_smoke_job)
    second = pg_instance.create_run_for_job(gpu_placement_smoke_job)
    candidates = candidate_placements(inventory, StepRequest.from_tags(first.run_id, "sorted_units", {"ks_platform/needs": "gpu"}, n_channels=32))
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


def test_step_waits_for_busy_gpu_then_unreachable_engine_fails_clearly_with_retry(pg_instance, tmp_path):
    """Another run holds the GPU: the step waits (log line, no failure); once freed it is placed; the engine
    is unreachable, so the step fails with the host, URL and fix, and the op's RetryPolicy(max_retries=1) applies."""
    inventory_config = one_gpu_inventory(tmp_path)
    inventory = Inventory.from_mapping(inventory_config)
    holder = pg_instance.create_run_for_job(gpu_placement_smoke_job)
    candidates = candidate_placements(inventory, StepRequest.from_tags(holder.run_id, "sorted_units", {"ks_platform/needs": "gpu"}))
    ledger = SlotLedger(pg_instance)
    ledger.ensure_capacity([candidates[0].slot])
    assert ledger.try_claim(holder.run_id, "sorted_units", candidates) is not None
    release = threading.Timer(6.0, ledger.withdraw, args=(holder.run_id, "sorted_units", candidates))
    release.start()
    started = time.monotonic()
    try:
        with dg.execute_job(dg.reconstructable(gpu_placement_smoke_job), instance=pg_instance, run_config={"execution": {"config": {"inventory": inventory_config}}}) as result:
            run_id = result.run_id
            assert not result.success
    finally:
        release.cancel()
    assert time.monotonic() - started >= 6.0
    messages = [entry.message or "" for entry in events_of(pg_instance, run_id, dg.DagsterEventType.ENGINE_EVENT)]
    wait_lines = [m for m in messages if "waits for a GPU" in m]
    assert wait_lines and "nothing has failed" in wait_lines[0] and f"run {holder.run_id[:8]} sorted_units" in wait_lines[0]
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
    with dg.execute_job(dg.reconstructable(gpu_placement_smoke_job), instance=pg_instance, run_config={"execution": {"config": {"inventory": config}}}) as result:
        assert not result.success
        [message] = failure_messages(result)[-1:]
    assert "needs a GPU with ≥" in message and "Fix: add a host with a larger GPU" in message


# -- with a Docker engine and the cpu image ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine_and_cpu_image():
    """(docker client, cpu image tag) from the images fixtures; skipped when either is unavailable."""
    support = pytest.importorskip("ks_platform_tests.docker_support", reason="docker fixtures (ks_platform_tests/docker_support.py) not present")
    return support.docker_engine(), support.cpu_image()


def labelled_containers(client, run_id: str) -> list:
    return client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"})


def cpu_inventory(tmp_path: Path, image: str, docker_url: str = "unix:///var/run/docker.sock", cpu_slots: int = 1) -> dict:
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    return {
        "store": str(store),
        "poll_seconds": 1,
        "exit_grace_seconds": 30,
        "hosts": [{"name": "local", "docker_url": docker_url, "backend": "cpu", "cpu_slots": cpu_slots, "images": {"cpu": image}, "network_mode": "host"}],
    }


def test_missing_image_is_a_clear_failure_with_retry_and_no_orphans(pg_instance, tmp_path, engine_and_cpu_image):
    client, _ = engine_and_cpu_image
    config = cpu_inventory(tmp_path, "ks-platform:no-such-tag")
    with dg.execute_job(dg.reconstructable(placement_smoke_job), instance=pg_instance, run_config={"execution": {"config": {"inventory": config}}}) as result:
        assert not result.success
        messages = failure_messages(result)
        run_id = result.run_id
    assert "image ks-platform:no-such-tag is not on host local" in messages[-1] and "Fix: build it there" in messages[-1]
    assert len(events_of(pg_instance, run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 1
    assert labelled_containers(client, run_id) == []


def test_cpu_slots_queue_concurrent_runs_and_containers_are_removed(pg_instance, tmp_path, engine_and_cpu_image):
    """One CPU slot, two runs holding it 8 s each: the second waits, both succeed, logs kept, containers gone."""
    client, image = engine_and_cpu_image
    config = cpu_inventory(tmp_path, image)
    run_config = {"execution": {"config": {"inventory": config}}, "ops": {"report_placement": {"config": {"hold_seconds": 8.0}}}}
    results: dict[str, str] = {}

    def launch(name: str) -> None:
        with dg.execute_job(dg.reconstructable(placement_smoke_job), instance=pg_instance, run_config=run_config) as result:
            results[name] = result.run_id if result.success else f"failed {failure_messages(result)}"

    threads = [threading.Thread(target=launch, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
        time.sleep(1.0)
    for thread in threads:
        thread.join(timeout=300)
    assert all(not value.startswith("failed") for value in results.values()), results
    waited = []
    for run_id in results.values():
        messages = [entry.message or "" for entry in events_of(pg_instance, run_id, dg.DagsterEventType.ENGINE_EVENT)]
        waited.append(any("waits for a CPU slot" in m for m in messages))
        assert any("its output is attached and the container was removed" in m for m in messages)
        logs = [entry.user_message for entry in pg_instance.all_logs(run_id) if "placement {" in (entry.user_message or "")]
        assert logs and '"KS_PLATFORM_IMAGE_DIGEST": "sha256:' in logs[0]
        assert labelled_containers(client, run_id) == []
    assert waited.count(True) == 1


def test_sort_step_runs_in_cpu_image_with_postgres_and_matches_in_process(pg_instance, tmp_path, engine_and_cpu_image, sorted_workspace, generated_session, monkeypatch):
    """A partitioned sort_session run through the executor: every step in a ks-platform:cpu container."""
    from ks_platform.core.sessions import SessionRef
    from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME
    from ks_platform_tests.conftest import ROOT_NAME, TEST_SPEC

    client, image = engine_and_cpu_image
    reference_ws, reference_key, reference_result = sorted_workspace
    assert reference_result.success
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
    key = SessionRef(ROOT_NAME, generated_session.name, TEST_SPEC.recording_date).key
    pg_instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, [key])
    with dg.execute_job(dg.reconstructable(sort_session_in_containers), instance=pg_instance, run_config={"execution": {"config": {"inventory": config}}}, tags={"dagster/partition": key}) as result:
        assert result.success, failure_messages(result)
        run_id = result.run_id
    starts = events_of(pg_instance, run_id, dg.DagsterEventType.STEP_WORKER_STARTING)
    assert {entry.step_key for entry in starts} >= {"sorted_units", "recording_binary", "phy_bundle"}
    assert labelled_containers(client, run_id) == []
    ours = Path(config["store"]) / "sessions" / key / "sorting"
    theirs = reference_ws.store(reference_key).sorting_dir
    for name in ("spike_times.npy", "spike_clusters.npy"):
        np.testing.assert_array_equal(np.load(ours / name), np.load(theirs / name))
    import json

    lineage = json.loads((ours / "lineage.json").read_text())
    assert lineage["image"] == image and str(lineage["image_digest"]).startswith("sha256:")

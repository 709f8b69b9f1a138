"""Two probes of one session sort at the same time when the inventory has two GPU slots (issue #16); a probe whose
sorter runs on CPU only is placed on a CPU slot though a GPU is free (issue #29).

Real: a PostgreSQL instance with the deployment's pools (``kilosort`` default limit 1), the placing Docker executor,
its slot ledger and Dagster's pool for the sort step, one run per probe partition launched together, step containers
of ``ks-platform:cpu`` on the local engine, Kilosort 4 sorting each probe (4 s, 32 channels).
Injected: the GPUs. The inventory declares a ``cuda`` host with fake GPUs ``0`` and ``1`` on the local engine; this
machine has none, so the test drops the containers' NVIDIA device request and planned batch size and the host's
``env`` makes the sorter use the CPU. Only placement and slot accounting see GPUs; the sorts really run, on CPU.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest
import yaml

from ks_platform.core.discovery import discover
from ks_platform.core.names import BACKEND_ENV, BATCH_SIZE_ENV, SORT_POOL
from ks_platform.core.session_config import CONFIG_FILE
from ks_platform.core.sorting import load_sort_result
from ks_platform.core.synthetic import DemoSessionSpec
from ks_platform.definitions import sort_session_in_containers
from ks_platform.execution import docker_executor
from ks_platform.execution.inventory import Inventory
from ks_platform.execution.placement import sort_slot_count
from ks_platform_tests.conftest import ROOT_NAME, Workspace, failure_messages
from ks_platform_tests.multi_probe_support import write_gated_probe
from ks_platform_tests.postgres_support import dagster_pg_env, postgres_url  # noqa: F401 - session fixture

REPO = Path(__file__).resolve().parent.parent
SORT_STEP = "sorted_units"
#: The smallest recording these tests sort: 4 s, 32 channels (KS4 on CPU: under a minute per probe on 2 idle cores).
SPEC = DemoSessionSpec(duration_s=4.0, min_well_detected_units=1)
FOLDER = "mouse9"


def fake_gpu_inventory(store: Path, landing: Path, image: str, n_gpus: int) -> dict:
    """A cuda host with ``n_gpus`` fake 16 GiB GPUs on the local engine whose containers sort on CPU."""
    return {
        "store": str(store),
        "landing": {ROOT_NAME: str(landing)},
        "poll_seconds": 1,
        "exit_grace_seconds": 30,
        "hosts": [
            {
                "name": "fakegpu",
                "backend": "cuda",
                "cpu_slots": 2,
                "gpus": [{"id": str(i), "memory_mib": 16384} for i in range(n_gpus)],
                "images": {"cuda": image, "cpu": image},
                "network_mode": "host",
                "env": {BACKEND_ENV: "cpu"},
            }
        ],
    }


def test_sort_slots_are_one_per_gpu_else_the_cpu_slots():
    gpu = Inventory.from_mapping(fake_gpu_inventory(Path("/s"), Path("/l"), "x", 2))
    cpu = Inventory.from_mapping(
        {"store": "/s", "hosts": [{"name": "a", "cpu_slots": 3}, {"name": "b", "cpu_slots": 1}]}
    )
    assert (sort_slot_count(gpu), sort_slot_count(cpu)) == (2, 4)


@pytest.fixture(scope="module")
def deployment_instance(postgres_url) -> Iterator[dg.DagsterInstance]:  # noqa: F811
    """deploy/dagster.postgres.yaml on the test server, its pools included (``kilosort`` limited to 1)."""
    env = dagster_pg_env(postgres_url)
    config = yaml.safe_load((REPO / "deploy" / "dagster.postgres.yaml").read_text())
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with dg.instance_for_test(overrides=config) as instance:
            yield instance


@pytest.fixture(scope="module")
def two_probe_session(tmp_path_factory, deployment_instance) -> Iterator[tuple[Workspace, list[str], str]]:
    """One session with probes imec0 and imec1, ingested in-process; the platform env the containers' code needs."""
    from ks_platform_tests import docker_support

    docker_support.docker_engine()
    image = docker_support.cpu_image()
    base = tmp_path_factory.mktemp("parallel_sorts")
    landing, session = base / "landing", base / "landing" / FOLDER
    for probe, seed in (("imec0", 1), ("imec1", 2)):
        write_gated_probe(session, FOLDER, probe, replace(SPEC, seed=seed), ((0, 0),), base / "scratch")
    ws = Workspace(landing, base / "store", deployment_instance)
    found, rejected = discover(ws.platform.roots())
    assert rejected == [] and sorted(item.probe_name for item in found) == ["imec0", "imec1"]
    keys = sorted(item.ref.key for item in found)
    for key in keys:
        result = ws.run_assets(key, ["raw_recording", "probe_map", "recording_binary"])
        assert result.success, failure_messages(result)
    for item in [base, *base.rglob("*")]:  # the image's non-root user writes the store
        os.chmod(item, 0o777 if item.is_dir() else 0o666)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KS_PLATFORM_STORE", str(ws.store_root))
        patch.setenv("KS_PLATFORM_LANDING", f"{ROOT_NAME}={landing}")
        patch.setenv("KS_PLATFORM_BACKEND", "cpu")
        real_spec = docker_executor.container_spec

        def without_gpu_devices(*args, **kwargs):  # injected: the fake GPUs cannot be handed to a container
            spec = real_spec(*args, **kwargs)
            spec.device_requests = []
            spec.environment.pop(BATCH_SIZE_ENV, None)
            return spec

        patch.setattr(docker_executor, "container_spec", without_gpu_devices)
        yield ws, keys, image
    shutil.rmtree(base, ignore_errors=True)


def _execute(job, instance_ref, inventory: dict, key: str, results) -> None:
    """One probe's run, in a forked process (it inherits the injected ``container_spec``)."""
    import traceback

    try:
        with dg.execute_job(
            job,
            instance=dg.DagsterInstance.from_ref(instance_ref),
            run_config={"execution": {"config": {"inventory": inventory, "retries": {"disabled": {}}}}},
            tags={"dagster/partition": key},
        ) as result:
            results.put((key, result.success, failure_messages(result), result.run_id))
    except BaseException:
        results.put((key, False, [traceback.format_exc()], None))
        raise


def sort_probes_together(ws: Workspace, keys: list[str], inventory: dict) -> list[str]:
    """Launch one run per probe at the same time, each in its own process (sort step only, no checks); their run
    ids once both ended."""
    job = dg.reconstructable(sort_session_in_containers).get_subset(
        asset_selection={dg.AssetKey(SORT_STEP)}, asset_check_selection=set()
    )
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    workers = [
        context.Process(target=_execute, args=(job, ws.instance.get_ref(), inventory, key, results)) for key in keys
    ]
    for worker in workers:
        worker.start()
    ended = {
        key: (success, failures, run_id) for key, success, failures, run_id in (results.get(timeout=1800) for _ in keys)
    }
    for worker in workers:
        worker.join(timeout=60)
    assert all(ended[key][0] for key in keys), {key: ended[key][1] for key in keys}
    return [ended[key][2] for key in keys]


def sort_timeline(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float, str]:
    """(start, end, GPU id) of the run's sort step from its event log."""
    times, device = {}, ""
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key != SORT_STEP:
            continue
        times[event.event_type] = entry.timestamp
        if event.event_type == dg.DagsterEventType.STEP_WORKER_STARTING:
            device = str(event.event_specific_data.metadata["device"].value)
    T = dg.DagsterEventType
    return times[T.STEP_START], times[T.STEP_SUCCESS], device


@pytest.mark.parametrize("n_gpus", [2, 1])
def test_two_probes_sort_at_once_on_two_gpu_slots_and_one_after_the_other_on_one(two_probe_session, n_gpus):
    ws, keys, image = two_probe_session
    inventory = fake_gpu_inventory(ws.store_root, ws.landing, image, n_gpus)
    run_ids = sort_probes_together(ws, keys, inventory)
    # The executor set the kilosort pool (1 in the deployment's dagster.yaml) to the inventory's sort slots.
    assert ws.instance.event_log_storage.get_concurrency_info(SORT_POOL).slot_count == n_gpus
    (start_a, end_a, gpu_a), (start_b, end_b, gpu_b) = sorted(sort_timeline(ws.instance, r) for r in run_ids)
    overlap = min(end_a, end_b) - start_b
    if n_gpus == 2:
        assert overlap > 0 and {gpu_a, gpu_b} == {"0", "1"}, (start_a, end_a, start_b, end_b, gpu_a, gpu_b)
    else:
        assert overlap <= 0 and gpu_a == gpu_b == "0", (start_a, end_a, start_b, end_b, gpu_a, gpu_b)


def test_a_cpu_only_sorter_takes_a_cpu_slot_while_a_gpu_is_free(two_probe_session):
    """imec1's session config names SpykingCircus2 (issue #29): its sort step, run by the placing executor on a host
    with a free (fake) GPU, is placed on the host's CPU slot with the CPU backend, and sorts there in the image."""
    ws, keys, image = two_probe_session
    key = next(k for k in keys if k.endswith("imec1"))
    session = next(ws.landing.iterdir())
    (session / CONFIG_FILE).write_text(json.dumps({"probes": {"imec1": {"sorter": "spykingcircus2"}}}) + "\n")
    result = ws.run_assets(key, ["raw_recording"])  # the manifest the executor reads names the sorter
    assert result.success, failure_messages(result)
    inventory = fake_gpu_inventory(ws.store_root, ws.landing, image, 1)
    job = dg.reconstructable(sort_session_in_containers).get_subset(
        asset_selection={dg.AssetKey(SORT_STEP)}, asset_check_selection=set()
    )
    with dg.execute_job(
        job,
        instance=ws.instance,
        run_config={"execution": {"config": {"inventory": inventory, "retries": {"disabled": {}}}}},
        tags={"dagster/partition": key},
    ) as run:
        assert run.success, failure_messages(run)
        run_id = run.run_id
    [starting] = [
        entry.dagster_event.event_specific_data.metadata
        for entry in ws.instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTING)
    ]
    assert (starting["device"].value, starting["backend"].value) == ("cpu", "cpu"), starting
    summary = load_sort_result(ws.store(key).sorting_dir)
    assert summary.sorter == "spykingcircus2" and summary.n_units > 0, summary

"""Every shipped instance config frees the concurrency slots of ended runs and runs one run per session at a time.

A terminated run's steps never report their end, so Dagster kept their pool slots: the next sort waited "blocked by
limit for pool kilosort" with an empty queue (issue #25). The executors now give a run's slots back when it ends
(test_slurm.py, ``…terminated_while_its_sort_holds_the_kilosort_pool…``); for a run whose worker died, the backstop
is run monitoring's ``free_slots_after_run_end_seconds``, set in dagster.yaml, deploy/dagster.postgres.yaml and the
Helm values. Here: the configs through Dagster's own loader (embedded SQLite, and PostgreSQL on a real server), and
Dagster's own monitoring iteration freeing the ``kilosort`` slot of a run that ended holding it.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import pytest
import yaml
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.instance.config import PoolGranularity, dagster_instance_config
from dagster._core.test_utils import create_run_for_test
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import EmptyWorkspaceTarget
from dagster._daemon.monitoring.concurrency import execute_concurrency_slots_iteration

from ks_platform.core.names import SORT_POOL
from ks_platform.execution.kubernetes import (
    FREE_SLOTS_AFTER_RUN_END_SECONDS,
    PARTITION_RUN_LIMIT,
    helm_values,
    load_deployment,
)
from ks_platform_tests.postgres_support import postgres_url  # noqa: F401 - session fixture

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {"embedded": REPO / "dagster.yaml", "postgres": REPO / "deploy" / "dagster.postgres.yaml"}


def pg_env(monkeypatch: pytest.MonkeyPatch, url: str = "postgresql://x@localhost:5432/x") -> None:
    parsed = urlparse(url)
    for name, value in {
        "USERNAME": parsed.username,
        "PASSWORD": "",
        "HOST": parsed.hostname,
        "DB": parsed.path[1:],
        "PORT": str(parsed.port),
    }.items():
        monkeypatch.setenv(f"DAGSTER_PG_{name}", value or "")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_frees_slots_of_ended_runs_and_limits_runs_per_session(name, tmp_path, monkeypatch):
    pg_env(monkeypatch)
    shutil.copy(SHIPPED[name], tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))  # Dagster's schema validation; raises on any bad key
    monitoring = config["run_monitoring"]
    assert monitoring["enabled"] is True
    assert monitoring["free_slots_after_run_end_seconds"] == FREE_SLOTS_AFTER_RUN_END_SECONDS
    assert config["concurrency"]["runs"]["tag_concurrency_limits"] == [PARTITION_RUN_LIMIT]
    assert config["concurrency"]["pools"] == {**config["concurrency"]["pools"], "default_limit": 1, "granularity": "op"}


def check_instance(instance: dg.DagsterInstance) -> None:
    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == FREE_SLOTS_AFTER_RUN_END_SECONDS
    concurrency = instance.get_concurrency_config()
    assert concurrency.pool_config.pool_granularity == PoolGranularity.OP
    assert concurrency.pool_config.default_pool_limit == 1
    [limit] = concurrency.run_queue_config.tag_concurrency_limits
    assert limit == PARTITION_RUN_LIMIT


def test_embedded_instance_applies_them(tmp_path, monkeypatch):
    shutil.copy(SHIPPED["embedded"], tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        check_instance(instance)


def ended_run_holding_the_sort_slot(instance: dg.DagsterInstance, ended_seconds_ago: float) -> str:
    """A run that claimed the ``kilosort`` slot for its sort and was then marked CANCELED (what the UI's force
    termination records when the run worker is gone), ``ended_seconds_ago`` before now."""
    run = create_run_for_test(instance, job_name="sort_session")
    if SORT_POOL not in instance.event_log_storage.get_concurrency_keys():  # as the executor's first claim does
        instance.event_log_storage.initialize_concurrency_limit_to_default(SORT_POOL)
    assert instance.event_log_storage.claim_concurrency_slot(SORT_POOL, run.run_id, "sorted_units").is_claimed
    event = DagsterEvent(
        event_type_value=DagsterEventType.RUN_CANCELED.value,
        job_name=run.job_name,
        message="This run has been marked as canceled from outside the execution context.",
    )
    instance.report_dagster_event(event, run.run_id, timestamp=time.time() - ended_seconds_ago)
    return run.run_id


def test_postgres_instance_applies_them_and_dagsters_monitoring_frees_an_ended_runs_sort_slot(
    postgres_url,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """On the PostgreSQL server: a run that ended 2 × 30 s ago still holding the ``kilosort`` slot loses it in one
    iteration of Dagster's own monitoring daemon code; a run that ended just now keeps it until 30 s have passed."""
    pg_env(monkeypatch, postgres_url)
    shutil.copy(SHIPPED["postgres"], tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        check_instance(instance)
        storage = instance.event_log_storage
        runs = []
        try:
            runs.append(ended_run_holding_the_sort_slot(instance, 2 * FREE_SLOTS_AFTER_RUN_END_SECONDS))
            holders = [claim.run_id for claim in storage.get_concurrency_info(SORT_POOL).claimed_slots]
            assert holders == [runs[0]] and storage.get_concurrency_info(SORT_POOL).slot_count == 1
            with WorkspaceProcessContext(instance, EmptyWorkspaceTarget()) as context:
                list(execute_concurrency_slots_iteration(context, logging.getLogger("test")))
            assert storage.get_concurrency_info(SORT_POOL).claimed_slots == []
            storage.free_concurrency_slots_for_run(runs[0])
            runs.append(ended_run_holding_the_sort_slot(instance, 1))
            with WorkspaceProcessContext(instance, EmptyWorkspaceTarget()) as context:
                list(execute_concurrency_slots_iteration(context, logging.getLogger("test")))
            assert [claim.run_id for claim in storage.get_concurrency_info(SORT_POOL).claimed_slots] == [runs[1]]
        finally:
            for run_id in runs:
                storage.free_concurrency_slots_for_run(run_id)
                instance.delete_run(run_id)
            storage.delete_concurrency_limit(SORT_POOL)


def test_helm_values_carry_them():
    example = REPO / "deploy" / "kubernetes.example.yaml"
    values = helm_values(load_deployment(example), str(example), "registry.lab/ks-platform")
    daemon = values["dagsterDaemon"]
    assert daemon["runMonitoring"] == {"enabled": True, "freeSlotsAfterRunEndSeconds": FREE_SLOTS_AFTER_RUN_END_SECONDS}
    assert daemon["runCoordinator"]["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"] == [PARTITION_RUN_LIMIT]
    shipped = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    assert shipped["dagsterDaemon"] == daemon

"""The shipped instance configs load under Dagster's own config validation and keep sensor/schedule ticks for a
bounded time (issue #18: a sensor ticking every 60 s over years of sessions must not grow the tick tables forever)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.instance.config import dagster_instance_config, get_tick_retention_settings
from dagster._core.scheduler.instigation import TickStatus

from ks_platform.execution.kubernetes import TICK_RETENTION_DAYS, helm_values, load_deployment

REPO = Path(__file__).resolve().parents[1]
EXPECTED = {TickStatus(status.upper()): days for status, days in TICK_RETENTION_DAYS.items()}


def test_retention_keeps_skipped_ticks_short_and_failures_longer():
    assert TICK_RETENTION_DAYS["skipped"] == 1
    assert TICK_RETENTION_DAYS["failure"] > TICK_RETENTION_DAYS["skipped"]
    assert all(days > 0 for days in TICK_RETENTION_DAYS.values()), "every tick status is purged eventually"


def test_embedded_instance_loads_and_has_the_tick_retention(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with DagsterInstance.get() as instance:
        assert instance.get_tick_retention_settings(InstigatorType.SENSOR) == EXPECTED
        assert instance.get_tick_retention_settings(InstigatorType.SCHEDULE) == EXPECTED


def test_postgres_instance_config_validates_and_has_the_tick_retention(tmp_path, monkeypatch):
    for name in ("USERNAME", "PASSWORD", "HOST", "DB", "PORT"):
        monkeypatch.setenv(f"DAGSTER_PG_{name}", "5432" if name == "PORT" else "x")
    shutil.copy(REPO / "deploy" / "dagster.postgres.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))  # Dagster's schema validation; raises on any bad key
    for kind in ("sensor", "schedule"):
        assert get_tick_retention_settings(config["retention"][kind], {status: -1 for status in TickStatus}) == {
            **{status: -1 for status in TickStatus},
            **EXPECTED,
        }


def test_a_misspelt_retention_key_is_refused(tmp_path):
    """The validation above is real: Dagster refuses an unknown tick status."""
    shipped = yaml.safe_load((REPO / "dagster.yaml").read_text())
    shipped["retention"]["sensor"]["purge_after_days"]["skiped"] = 1
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(shipped))
    with pytest.raises(Exception, match="skiped"):
        dagster_instance_config(str(tmp_path))


def test_helm_values_carry_the_same_retention():
    example = REPO / "deploy" / "kubernetes.example.yaml"
    values = helm_values(load_deployment(example), str(example), "registry.lab/ks-platform")
    retention = values["retention"]
    assert retention["enabled"] is True
    assert retention["sensor"]["purgeAfterDays"] == retention["schedule"]["purgeAfterDays"] == TICK_RETENTION_DAYS
    shipped = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    assert shipped["retention"] == retention


@pytest.mark.parametrize("config", ["dagster.yaml", "deploy/dagster.postgres.yaml"])
def test_the_tick_interval_in_the_config_comment_is_the_sensors(config):
    """Issue #27: the comment said 30 s while the sensor ticks every 60 s."""
    import re

    from ks_platform.defs.sensors import DEFAULT_MIN_INTERVAL_SECONDS, build_new_session_sensor

    said = re.search(r"the landing sensor ticks every (\d+) s", (REPO / config).read_text())
    assert said, config
    interval = build_new_session_sensor(settle_seconds=0, marker_name="").minimum_interval_seconds
    assert int(said.group(1)) == interval == DEFAULT_MIN_INTERVAL_SECONDS

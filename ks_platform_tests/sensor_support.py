"""Ticks of the landing-root sensor, called directly (``build_sensor_context``), for the tests of what it sees.

Shared by test_sensor.py, test_catalog_safety.py, test_hostile_corpus.py, test_landing_window.py,
test_mixed_landing.py and the ``Harness`` of catalog_support.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg

from ks_platform.defs.landing import landing_folders
from ks_platform.defs.resources import PlatformResource

ROOT = "rig1"


def platform_for(landing: Path, tmp_path: Path) -> PlatformResource:
    return PlatformResource(store_root=str(tmp_path / "store"), landing_roots=f"{ROOT}={landing}", backend="cpu")


class _Records(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


def tick(
    sensor: dg.SensorDefinition,
    instance,
    platform: PlatformResource,
    cursor: str | None = None,
    logs: list | None = None,
) -> dg.SensorResult:
    """One evaluation; ``logs`` collects what the sensor wrote to ``context.log`` (Dagster's logger does not propagate)."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"platform": platform})
    if logs is not None:
        context.log.addHandler(_Records(logs))
    result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    for event in result.asset_events:  # recorded as the daemon records them (a later tick compares with the latest)
        if event.asset_key == landing_folders.key:
            instance.report_runless_asset_event(event)
    return result

"""The one module that imports Dagster's private API (``dagster._…``): every other module imports it from here.

Each name says why the public API (``dagster``) is not enough and which public API would replace it; a Dagster upgrade
that breaks one of them breaks here, and ``ks_platform_tests/test_layers.py`` fails on a ``dagster._`` import anywhere
else. Checked against dagster 1.13 (the version ``constraints/cpu.txt`` pins).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

# -- data versions of observations --------------------------------------------------------------------------------
# An ``AssetObservation`` carries a data version only as this tag (observable source assets return ``DataVersion``;
# a plain op-logged observation has no public field for it). Waits for: a ``data_version`` argument on
# ``dg.AssetObservation``.
from dagster._core.definitions.data_version import DATA_VERSION_TAG

# -- executors ------------------------------------------------------------------------------------------------------
# Dagster's step-delegating executor and its handler base (what dagster-docker and dagster-k8s subclass); the
# multiprocess executor and its ``ActiveExecution`` loop (the patient default executor); engine events, retry mode and
# the multiprocess executor's requirements. Waits for: a public executor-author API (dagster-docker itself imports
# these same modules).
from dagster._core.definitions.executor_definition import multiple_process_executor_requirements
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.plan.active import ActiveExecution
from dagster._core.execution.retries import RetryMode, get_retries_config
from dagster._core.execution.step_dependency_config import StepDependencyConfig
from dagster._core.executor.multiprocess import MultiprocessExecutor
from dagster._core.executor.step_delegating import StepDelegatingExecutor
from dagster._core.executor.step_delegating.step_handler.base import (
    CheckStepHealthResult,
    StepHandler,
    StepHandlerContext,
)

#: The module whose ``execute_step_command`` runs one step (``dagster api execute_step``): the SLURM CPU runner imports
#: it once and forks steps from it instead of starting the CLI per step. Waits for: a public step-entry function.
STEP_COMMAND_MODULE = "dagster._cli.api"


def execute_step_in_this_process() -> None:
    """Run ``dagster api execute_step`` in this process (arguments from ``DAGSTER_*`` environment variables)."""
    from dagster._cli.api import execute_step_command

    execute_step_command.main(args=[], prog_name="dagster api execute_step", standalone_mode=False)


# -- stale status and asset backfills (the CLI) ---------------------------------------------------------------------
def stale_partitions(
    instance: dg.DagsterInstance, asset_graph: Any, asset_key: dg.AssetKey, partitions: Sequence[str]
) -> list[str]:
    """Those of ``partitions`` whose ``asset_key`` Dagster reports as MISSING or STALE (the UI's "Stale" badge).

    Waits for: a public stale-status API outside the webserver."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._time import get_current_datetime

    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=asset_graph,
    )
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=asset_graph, loading_context=view)
    return [p for p in partitions if resolver.get_status(asset_key, p) in (StaleStatus.MISSING, StaleStatus.STALE)]


def add_asset_backfill(
    instance: dg.DagsterInstance,
    asset_graph: Any,
    partitions: Sequence[str],
    assets: Sequence[dg.AssetKey],
    tags: Mapping[str, str],
    title: str,
    description: str,
) -> str:
    """Record an asset backfill of ``assets`` over ``partitions`` for the daemon to run (what the UI's "Materialize
    selected" over partitions does); its id. Waits for: a public API that records an asset backfill."""
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id
    from dagster._time import get_current_timestamp

    backfill_id = make_new_backfill_id()
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id,
        asset_graph=asset_graph,
        partition_names=list(partitions),
        asset_selection=list(assets),
        backfill_timestamp=get_current_timestamp(),
        tags=dict(tags),
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=title,
        description=description,
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill_id


def requested_backfills(instance: dg.DagsterInstance) -> list[Any]:
    """The backfills the daemon has not started or finished yet. Waits for: public ``BulkActionsFilter``."""
    from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus

    return list(instance.get_backfills(filters=BulkActionsFilter(statuses=[BulkActionStatus.REQUESTED])))


__all__ = [
    "DATA_VERSION_TAG",
    "STEP_COMMAND_MODULE",
    "ActiveExecution",
    "CheckStepHealthResult",
    "DagsterEvent",
    "EngineEventData",
    "MultiprocessExecutor",
    "RetryMode",
    "StepDelegatingExecutor",
    "StepDependencyConfig",
    "StepHandler",
    "StepHandlerContext",
    "add_asset_backfill",
    "execute_step_in_this_process",
    "get_retries_config",
    "multiple_process_executor_requirements",
    "requested_backfills",
    "stale_partitions",
]

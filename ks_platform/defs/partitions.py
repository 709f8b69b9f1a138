"""One partition per probe of a session; keys are ``<date>__<root>__<session>__<probe>`` (see ``core.sessions``)."""

from __future__ import annotations

import dagster as dg

from ks_platform.core.names import PARTITION_TAG, SESSIONS_PARTITIONS_NAME

session_partitions = dg.DynamicPartitionsDefinition(name=SESSIONS_PARTITIONS_NAME)

#: Run states in which a partition's run may still read or write its session (never retire it then).
UNFINISHED_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def partitions_to_observe(context: dg.AssetExecutionContext) -> list[str]:
    """The partition an observation was asked for, or every session partition (an unpartitioned observe)."""
    if context.has_partition_key:
        return [context.partition_key]
    return list(context.instance.get_dynamic_partitions(session_partitions.name))


def in_flight_partitions(instance: dg.DagsterInstance) -> set[str]:
    """Session partitions with a run queued, starting, running or being canceled (one query over unfinished runs)."""
    records = instance.get_run_records(dg.RunsFilter(statuses=UNFINISHED_RUN_STATUSES))
    return {key for record in records if (key := record.dagster_run.tags.get(PARTITION_TAG))}

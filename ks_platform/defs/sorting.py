"""Sorting: Kilosort 4 (or the sorter the session config names) on the session's binary and probe map, with a
ground-truth check."""

from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import dagster as dg

from ks_platform.core import pipeline
from ks_platform.core.errors import SessionInputError
from ks_platform.core.names import NEEDS_TAG, PRIMARY_SORTERS, SESSION_GROUP, SORT_POOL, SORTERS_TAG
from ks_platform.defs.ingest import probe_map, recording_binary
from ks_platform.defs.lineage_metadata import lineage_metadata
from ks_platform.defs.partitions import partitions_to_observe, session_partitions
from ks_platform.defs.reporting import metadata_table, step_result, user_errors_as_failures
from ks_platform.defs.resources import PlatformResource

#: Bump the suffix when the platform's sorting logic changes; the Kilosort version is part of it.
SORTING_CODE_VERSION = f"kilosort-{metadata.version('kilosort')}+1"

#: A sort whose job or container was taken away (SLURM preemption, time limit, node failure, a killed process) runs
#: again, twice at most, after 10 s then 30 s. A bad input is never retried (``user_errors_as_failures``), and
#: Kilosort's out-of-memory errors are retried inside the step with a smaller batch (core/sorting.py).
SORT_RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)


@dg.observable_source_asset(
    partitions_def=session_partitions,
    group_name=SESSION_GROUP,
    owners=["team:ephys"],
    description="0 · The probe's sorter and parameter set (ks_session.json / kilosort4-settings.json next to the "
    "recording; Kilosort 4 unless the config names another sorter). Its data version is the hash of the validated "
    "overrides (and of the sorter's name when it is not Kilosort 4): after an edit, 'Observe sources' (or the "
    "sensor) marks the sorting stale, not the binary.",
)
def session_settings(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.DataVersionsByPartition:
    return observe_partition_versions(context, platform, pipeline.session_settings_version)


def observe_partition_versions(
    context: dg.AssetExecutionContext, platform: PlatformResource, version_of: Callable[[Path, str | None], str]
) -> dg.DataVersionsByPartition:
    """``version_of(session folder, probe)`` of the partition observed (or of every session partition); a session
    that cannot be read is logged and left out, never failing the others."""
    versions = {}
    for key in partitions_to_observe(context):
        try:
            versions[key] = version_of(platform.session_dir(key), platform.probe(key))
        except (SessionInputError, OSError) as exc:
            context.log.warning(f"{key}: {exc}")
    return dg.DataVersionsByPartition(versions)


def build_sorted_units(code_version: str = SORTING_CODE_VERSION) -> dg.AssetsDefinition:
    """The ``sorted_units`` asset with the given code version (a different one marks every sorting stale)."""

    @dg.asset(
        name="sorted_units",
        partitions_def=session_partitions,
        group_name=SESSION_GROUP,
        code_version=code_version,
        deps=[recording_binary, probe_map, session_settings.key],
        kinds={"kilosort", "pytorch"},
        owners=["team:ephys"],
        pool=SORT_POOL,
        retry_policy=SORT_RETRY_POLICY,
        op_tags={NEEDS_TAG: "gpu", SORTERS_TAG: PRIMARY_SORTERS},
        description="4 · Spike sorting of the binary with the probe's sorter: Kilosort 4 with the session's parameter "
        "set (platform defaults < probe type < kilosort4-settings.json), or the first sorter the session config names "
        "(SpykingCircus2, Tridesclous2, MountainSort5 through SpikeInterface, on CPU).",
    )
    def sorted_units(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.MaterializeResult:
        key = context.partition_key
        session_dir = platform.session_dir(key)
        with user_errors_as_failures():
            output = pipeline.sort_session(
                session_dir,
                platform.store(key),
                backend=platform.backend,
                log=context.log.info,
                extra_lineage={"dagster_run_id": context.run_id, "partition": key, "code_version": code_version},
                probe=platform.probe(key),
            )
        extra = {**lineage_metadata(output.metadata["lineage"]), "code_version": code_version}
        return step_result(output, extra=extra)

    return sorted_units


sorted_units = build_sorted_units()


@dg.asset_check(asset=sorted_units, partitions_def=session_partitions, description="At least one unit was sorted.")
def sorted_units_not_empty(context: dg.AssetCheckExecutionContext, platform: PlatformResource) -> dg.AssetCheckResult:
    summary = pipeline.sorting.load_sort_result(platform.store(context.partition_key).sorting_dir)
    return dg.AssetCheckResult(
        passed=summary.n_units > 0, metadata={"n_units": summary.n_units, "n_good_units": summary.n_good_units}
    )


#: Scored only for sessions that carry ground truth; the others record no result, so the check shows as SKIPPED
#: (Dagster's state for a planned check whose run succeeded without evaluating it), never as passed.
GROUND_TRUTH_CHECK = dg.AssetCheckSpec(
    "sorted_units_match_ground_truth",
    asset=sorted_units.key,
    partitions_def=session_partitions,
    description="For sessions with ground truth: per-unit accuracy/precision/recall; fails when fewer units than the "
    "session declares reach the accuracy bar. Skipped for sessions without ground truth.",
)


@dg.multi_asset_check(specs=[GROUND_TRUTH_CHECK], can_subset=True, name="sorted_units_match_ground_truth")
def sorted_units_match_ground_truth(
    context: dg.AssetCheckExecutionContext, platform: PlatformResource
) -> Iterator[dg.AssetCheckResult]:
    key = context.partition_key
    score = pipeline.score_session(platform.session_dir(key), platform.store(key), platform.probe(key))
    if score is None:
        context.log.info(f"skipped: {key} has no ground truth (ground_truth.json next to its recording)")
        return
    columns = {"gt_unit": "string", "accuracy": "float", "precision": "float", "recall": "float"}
    table = metadata_table(score.per_unit, columns)
    yield dg.AssetCheckResult(
        asset_key=sorted_units.key,
        check_name=GROUND_TRUTH_CHECK.name,
        passed=score.passed,
        description=f"{score.well_detected} units with accuracy ≥ {score.well_detected_accuracy} (session requires "
        f"{score.min_well_detected_units})",
        metadata={
            "well_detected_units": score.well_detected,
            "required": score.min_well_detected_units,
            "accuracy_bar": score.well_detected_accuracy,
            "per_unit": table,
        },
    )

"""Two (or more) sorters on one probe: the sorters compared with the probe's own, their sortings, and the agreement.

A session config naming a list (``"sorter": ["kilosort4", "spykingcircus2"]``) sorts the probe with the first
(``sorted_units``, where Kilosort's sorting always was) and each other one here (``sorters/<name>/``, its own Phy
folder), then compares them. With one sorter both assets materialize as "nothing to compare" (data version ``none``).
"""

import dagster as dg

from ks_platform.core import pipeline
from ks_platform.core.names import COMPARED_SORTERS, COMPARISON_GROUP, NEEDS_TAG, SORT_POOL, SORTERS_TAG
from ks_platform.defs.ingest import COMPARED_SETTINGS_KEY, probe_map, recording_binary
from ks_platform.defs.partitions import session_partitions
from ks_platform.defs.reporting import metadata_table, step_result, user_errors_as_failures
from ks_platform.defs.resources import PlatformResource
from ks_platform.defs.sorting import observe_partition_versions, sorted_units


@dg.observable_source_asset(
    key=COMPARED_SETTINGS_KEY,
    partitions_def=session_partitions,
    group_name=COMPARISON_GROUP,
    owners=["team:ephys"],
    description="The sorters the session config lists after the probe's own, with their parameters. Its data version "
    "is their hash ('none' when the config names one sorter): an edit marks compared_sortings stale, not the probe's "
    "sorting.",
)
def compared_sorter_settings(
    context: dg.AssetExecutionContext, platform: PlatformResource
) -> dg.DataVersionsByPartition:
    return observe_partition_versions(context, platform, pipeline.compared_settings_version)


def _sortings_table(sortings: dict) -> dg.MetadataValue:
    columns = {"sorter": "string", "version": "string", "n_units": "int", "n_spikes": "int", "sort_seconds": "float"}
    rows = [
        {
            "sorter": name,
            "version": str(item["sorter_version"]),
            "n_units": item["n_units"],
            "n_spikes": item["n_spikes"],
            "sort_seconds": float(item["sort_seconds"]),
        }
        for name, item in sortings.items()
    ]
    return metadata_table(rows, columns)


@dg.asset(
    partitions_def=session_partitions,
    group_name=COMPARISON_GROUP,
    code_version="1",
    deps=[recording_binary, probe_map, COMPARED_SETTINGS_KEY],
    kinds={"spikeinterface"},
    owners=["team:ephys"],
    pool=SORT_POOL,
    op_tags={NEEDS_TAG: "gpu", SORTERS_TAG: COMPARED_SORTERS},
    description="4b · The other sorters the session config lists for the probe, each on the same binary and probe "
    "into sorters/<name>/sorting with its own Phy folder (sorters/<name>/phy). Placed on a GPU only when one of them "
    "is Kilosort 4.",
)
def compared_sortings(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.MaterializeResult:
    key = context.partition_key
    with user_errors_as_failures():
        output = pipeline.sort_compared(
            platform.session_dir(key),
            platform.store(key),
            backend=platform.backend,
            log=context.log.info,
            extra_lineage={"dagster_run_id": context.run_id, "partition": key},
            probe=platform.probe(key),
        )
    sortings = output.metadata.pop("sortings", {})
    extra = {"sortings": _sortings_table(sortings)} if sortings else {}
    for name, item in sortings.items():
        extra[f"open_in_phy_{name}"] = dg.MetadataValue.md(f"```\n{item['open_command']}\n```")
    return step_result(output, path_key=None, extra=extra)


@dg.asset(
    partitions_def=session_partitions,
    group_name=COMPARISON_GROUP,
    code_version="1",
    deps=[sorted_units, compared_sortings],
    kinds={"spikeinterface"},
    owners=["team:ephys"],
    description="4c · How much the probe's sorters agree (SpikeInterface's comparison, spikes within 0.4 ms): matched "
    "units and their agreement, units only one sorter found, the consensus units every sorter found, a figure, and "
    "each sorter's ground-truth score where the session has one.",
)
def sorter_agreement(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.MaterializeResult:
    key = context.partition_key
    with user_errors_as_failures():
        output = pipeline.compare_session_sorters(platform.store(key), platform.session_dir(key), platform.probe(key))
    for pair in output.metadata.get("pairs", []):
        first, second = pair["sorters"]
        context.log.info(
            f"{first} {pair['n_units'][first]} units, {second} {pair['n_units'][second]}: {pair['matched']} matched, "
            f"{pair['only'][first]} only {first}, {pair['only'][second]} only {second}"
        )
    return step_result(output)


@dg.asset_check(
    asset=sorter_agreement,
    partitions_def=session_partitions,
    description="Where the session has ground truth: every compared sorter detects at least as many units as the "
    "session requires (warns otherwise; the probe's own sorting has its own check).",
)
def agreement_ground_truth(context: dg.AssetCheckExecutionContext, platform: PlatformResource) -> dg.AssetCheckResult:
    from ks_platform.core.agreement import AGREEMENT_JSON
    from ks_platform.core.store import read_json

    path = platform.store(context.partition_key).agreement_dir / AGREEMENT_JSON
    scores = (read_json(path).get("ground_truth") or {}) if path.is_file() else {}
    if not scores:
        return dg.AssetCheckResult(passed=True, description="nothing to score (one sorter, or no ground truth)")
    failing = [name for name, score in scores.items() if score["well_detected_units"] < score["required"]]
    return dg.AssetCheckResult(
        passed=not failing,
        severity=dg.AssetCheckSeverity.WARN,
        description="well-detected units per sorter: "
        + ", ".join(f"{n} {s['well_detected_units']} (required {s['required']})" for n, s in scores.items()),
        metadata={"ground_truth": dg.MetadataValue.json(scores), "failing": dg.MetadataValue.json(failing)},
    )

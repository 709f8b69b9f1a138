"""Labels: bombcell's unit labels right after the Phy folder, and how the lab's curation agrees with them."""

from collections.abc import Iterator

import dagster as dg

from ks_platform.core import pipeline, unit_labels
from ks_platform.core.errors import SessionInputError
from ks_platform.core.names import CURATION_GROUP, SESSION_GROUP
from ks_platform.defs.partitions import session_partitions
from ks_platform.defs.reporting import metadata_table, step_result, user_errors_as_failures
from ks_platform.defs.resources import PlatformResource
from ks_platform.defs.review import phy_bundle

#: Columns of the asset's per-unit table, with their types.
TABLE_COLUMNS = {
    "cluster_id": "int",
    "bombcell_label": "string",
    "kilosort_label": "string",
    "nSpikes": "float",
    "rawAmplitude": "float",
    "signalToNoiseRatio": "float",
    "fractionRPVs_estimatedTauR": "float",
    "percentageSpikesMissing_gaussian": "float",
    "presenceRatio": "float",
    "nPeaks": "float",
    "nTroughs": "float",
    "waveformDuration_peakTrough": "float",
    "spatialDecaySlope": "float",
    "waveformBaselineFlatness": "float",
}


@dg.asset(
    name="unit_labels",  # the function is named apart from the core.unit_labels module it calls
    partitions_def=session_partitions,
    group_name=SESSION_GROUP,
    code_version=f"bombcell-{unit_labels.bombcell_version()}+1",
    deps=[phy_bundle],
    kinds={"bombcell"},
    owners=["team:ephys"],
    description="5b · bombcell's unit labels (GOOD / MUA / NOISE / NON-SOMA) from waveform and spike-train metrics, "
    "beside Kilosort's: a bc_unitType column in Phy, figures with bombcell's thresholds, and the half-recording "
    "waveforms unit_tracks matches across days. Parameters: bombcell's, overridable in ks_session.json's 'bombcell'.",
)
def labelled_units(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.MaterializeResult:
    key = context.partition_key
    with user_errors_as_failures():
        output = pipeline.label_session(
            platform.store(key), platform.session_dir(key), platform.probe(key), log=context.log.info
        )
    rows = output.metadata.pop("units")
    if output.metadata["tracking_problem"]:
        context.log.warning(f"not tracked across sessions: {output.metadata['tracking_problem']}")
    context.log.info(
        f"bombcell {output.metadata['bombcell_version']}: {output.metadata['counts']} in "
        f"{output.metadata['bombcell_seconds']:.1f} s"
    )
    return step_result(output, extra={"units": metadata_table(rows, TABLE_COLUMNS)})


@dg.asset_check(
    asset=labelled_units,
    partitions_def=session_partitions,
    description="The labels reached the Phy folder (cluster_bc_unitType.tsv) and, for a session with a subject.json, "
    "the session joined its implant's tracking (warns with what to fix otherwise).",
)
def unit_labels_in_phy_and_tracked(
    context: dg.AssetCheckExecutionContext, platform: PlatformResource
) -> dg.AssetCheckResult:
    from ks_platform.core import unit_tracks

    key = context.partition_key
    store = platform.store(key)
    labels = unit_labels.current_labels(store)
    in_phy = labels is not None and (store.phy_dir / unit_labels.BOMBCELL_TSV).is_file()
    try:
        config = pipeline.as_scan(platform.session_dir(key)).probe_config(platform.probe(key))
        track_key = unit_tracks.session_track_key(platform.session_dir(key), platform.probe(key), config)
        problem = None if track_key else "no subject.json in the session folder: not tracked across sessions"
    except SessionInputError as exc:
        track_key, problem = None, str(exc)
    return dg.AssetCheckResult(
        passed=in_phy and problem is None,
        severity=dg.AssetCheckSeverity.WARN,
        description=problem or ("labels in Phy; tracked as " + str(track_key) if in_phy else "labels not in Phy"),
        metadata={"in_phy": in_phy, "track_key": track_key or "—"},
    )


@dg.asset(
    partitions_def=session_partitions,
    group_name=CURATION_GROUP,
    code_version="1",
    deps=[dg.AssetKey("curated_units"), labelled_units],  # defs/curation.py (it imports unit_metrics)
    kinds={"bombcell", "phy"},
    owners=["team:ephys"],
    description="How often the lab's Phy curation kept or overruled bombcell's label, per bombcell label (units the "
    "lab labelled and did not merge or split): the number that tells a lab whether to trust the automatic labels. "
    "Not materialized while the current sorting has no labels (the curation is recorded anyway).",
    output_required=False,
)
def label_agreement(context: dg.AssetExecutionContext, platform: PlatformResource) -> Iterator[dg.MaterializeResult]:
    store = platform.store(context.partition_key)
    if unit_labels.current_labels(store) is None:
        # A re-sort not yet labelled: the lab's curation run must not fail on it, nor record an agreement of nothing.
        context.log.warning(
            "label_agreement not materialized: no bombcell labels for the current sorting yet. Fix: materialize "
            "unit_labels for this partition, then curate_session again."
        )
        return
    with user_errors_as_failures():
        agreement = unit_labels.label_agreement(store)
        path = unit_labels.write_agreement(store, agreement)
    rows = [
        {"bombcell_label": label, **{k: v for k, v in row.items()}}
        for label, row in sorted(agreement["by_bombcell_label"].items())
    ]
    columns = {
        "bombcell_label": "string",
        "units": "int",
        "reviewed": "int",
        "kept": "int",
        "overruled": "int",
        "changed": "int",
        "overruled_fraction": "float",
    }
    context.log.info(
        f"curation {agreement['curation_status']}: {agreement['reviewed_units']} units reviewed, agreement "
        f"{agreement['agreement']}"
    )
    yield dg.MaterializeResult(
        metadata={
            "curation_status": agreement["curation_status"],
            "reviewed_units": agreement["reviewed_units"],
            "agreement": dg.MetadataValue.float(agreement["agreement"])
            if agreement["agreement"] is not None
            else dg.MetadataValue.text("— (no unit labelled in Phy yet)"),
            "by_bombcell_label": metadata_table(rows, columns),
            "matrix": dg.MetadataValue.json(agreement["matrix"]),
            "path": dg.MetadataValue.path(str(path)),
        },
        data_version=dg.DataVersion(unit_labels.settings_hash(agreement)),
    )

"""Curation: the Phy curation as an observable source, the curated units, and the units as NWB.

These live in their own group and job (``curate_session``), not in ``session_pipeline``: curation is a person's
work in Phy after the sort job has finished, on its own cadence, and ``sort_session`` stays "recording → metrics".
"""

import json

import dagster as dg
import xxhash

from ks_platform.core import curation, nwb_export, phy, pipeline
from ks_platform.core.errors import SessionInputError
from ks_platform.core.names import CURATION_GROUP, SUBJECT_JSON
from ks_platform.core.progress import ThrottledProgress
from ks_platform.dagster_internals import DATA_VERSION_TAG
from ks_platform.defs.partitions import partitions_to_observe, session_partitions
from ks_platform.defs.quality import unit_metrics
from ks_platform.defs.reporting import metadata_table, user_errors_as_failures
from ks_platform.defs.resources import PlatformResource
from ks_platform.defs.review import phy_bundle
from ks_platform.defs.sorting import sorted_units


@dg.observable_source_asset(
    partitions_def=session_partitions,
    group_name=CURATION_GROUP,
    owners=["team:ephys"],
    description="The curation saved in the Phy folder (cluster_group.tsv, cluster_info.tsv, spike_clusters.npy). Its "
    "data version is the hash of those files: a save in Phy, once observed, marks curated_units stale.",
)
def phy_curation(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.DataVersionsByPartition:
    versions = {}
    for key in partitions_to_observe(context):
        if platform.store(key).phy_dir.is_dir():
            versions[key] = curation.curation_fingerprint(platform.store(key).phy_dir)
    return dg.DataVersionsByPartition(versions)


def _units_table(record: curation.CurationRecord) -> dg.MetadataValue:
    columns = {
        "cluster_id": "int",
        "n_spikes": "int",
        "kilosort_label": "string",
        "curated_label": "string",
        "merged_from": "string",
        "split_from": "string",
    }
    split_from = record.split_from
    rows = [
        {
            "cluster_id": c,
            "n_spikes": n,
            "kilosort_label": record.kilosort_labels.get(c, ""),
            "curated_label": record.labels.get(c, ""),
            "merged_from": ",".join(map(str, record.merges.get(c, []))),
            "split_from": ",".join(map(str, split_from.get(c, []))),
        }
        for c, n in sorted(record.n_spikes.items())
    ]
    return metadata_table(rows, columns)


def _curations_table(record: curation.CurationRecord) -> dg.MetadataValue:
    """Every curation kept for the session, with its sorting version and whether it applies now."""
    columns = {
        "snapshot": "string",
        "sorting_version": "string",
        "saved_at": "string",
        "good": "int",
        "mua": "int",
        "noise": "int",
        "merges": "int",
        "splits": "int",
        "applies_to_its_sorting": "bool",
        "sorting_is_current": "bool",
        "sorting_kept": "bool",
    }
    rows = [
        {
            **{k: c[k] for k in ("snapshot", "sorting_version", "saved_at")},
            **{label: (c.get("counts") or {}).get(label, 0) for label in ("good", "mua", "noise")},
            "merges": len(c.get("merges") or {}),
            "splits": len(c.get("splits") or {}),
            **{k: bool(c[k]) for k in ("applies_to_its_sorting", "sorting_is_current", "sorting_kept")},
        }
        for c in record.curations
    ]
    return metadata_table(rows, columns)


PHY_FOLDER_CHECK = "curated_units_phy_folder_opens"


@dg.asset(
    partitions_def=session_partitions,
    group_name=CURATION_GROUP,
    code_version="1",
    deps=[phy_curation.key, phy_bundle, sorted_units],
    kinds={"phy"},
    owners=["team:ephys"],
    description="7 · The units after curation in Phy: labels, merges and splits (diffed against the sorting), counts "
    "per label, kept under curation/ with the sorting they were made on (every curation is kept and listed). STALE "
    "(and not applied) when the sorting changed since.",
    check_specs=[
        dg.AssetCheckSpec(
            PHY_FOLDER_CHECK,
            asset="curated_units",
            description="The Phy folder still opens: params.py's dat_path resolves to the binary and fits it.",
        )
    ],
)
def curated_units(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.MaterializeResult:
    key = context.partition_key
    store = platform.store(key)
    # The Phy folder as this run finds it, recorded as an observation of phy_curation (as raw_recording does for
    # session_settings): the record names it however the run was launched, and a later save in Phy shows as stale.
    context.log_event(
        dg.AssetObservation(
            asset_key=phy_curation.key,
            partition=key,
            tags={DATA_VERSION_TAG: curation.curation_fingerprint(store.phy_dir)},
        )
    )
    with user_errors_as_failures():
        record = pipeline.record_curation(store)
    try:  # what Phy needs to open the folder again (a moved binary, an edited params.py)
        phy.check_params(store.phy_dir)
        opens = dg.AssetCheckResult(check_name=PHY_FOLDER_CHECK, passed=True)
    except SessionInputError as exc:
        opens = dg.AssetCheckResult(
            check_name=PHY_FOLDER_CHECK,
            passed=False,
            description=str(exc),
            metadata={"file": dg.MetadataValue.path(str(exc.path)), "fix": exc.fix},
        )
    context.log.info(
        f"curation {record.status}: {record.counts or 'no labels'}; {len(record.merges)} merges, {len(record.splits)} "
        "splits"
    )
    content = {k: v for k, v in record.to_json().items() if k not in ("recorded_at", "curations")}
    return dg.MaterializeResult(
        metadata={
            "status": record.status,
            "stale": record.status == curation.STALE,
            "sorting_version": record.sorting_version,
            "curation_basis": record.curation_basis or "—",
            "fingerprint": record.fingerprint or "—",
            "recorded_at": record.recorded_at,
            "counts": dg.MetadataValue.json(record.counts),
            "merges": dg.MetadataValue.json({str(k): v for k, v in record.merges.items()}),
            "splits": dg.MetadataValue.json({str(k): v for k, v in record.splits.items()}),
            "saved_at": record.saved_at or "—",
            "source": record.source,
            "n_units": len(record.n_spikes),
            "note": record.note or "—",
            "units": _units_table(record),
            "curations": _curations_table(record),
            "n_curations_kept": len(record.curations),
            "path": dg.MetadataValue.path(str(curation.curation_dir(store))),
        },
        check_results=[opens],
        data_version=dg.DataVersion(
            xxhash.xxh3_64_hexdigest(json.dumps(content, sort_keys=True, default=str).encode())
        ),
    )


@dg.asset_check(
    asset=curated_units,
    partitions_def=session_partitions,
    description="The latest curation was made on the current sorting (warns when it is STALE: re-curate the new "
    "sorting in Phy).",
)
def curated_units_not_stale(context: dg.AssetCheckExecutionContext, platform: PlatformResource) -> dg.AssetCheckResult:
    record = curation.load_record(platform.store(context.partition_key))
    status = record.status if record else "missing"
    return dg.AssetCheckResult(
        passed=status in (curation.CURATED, curation.UNCURATED),
        severity=dg.AssetCheckSeverity.WARN,
        description=record.note if record else "no record",
        metadata={"status": status},
    )


@dg.asset(
    partitions_def=session_partitions,
    group_name=CURATION_GROUP,
    code_version="1",
    deps=[curated_units, unit_metrics],
    kinds={"nwb"},
    owners=["team:ephys"],
    description="8 · The (curated) units as NWB: spike times, Kilosort and Phy labels, merge/split provenance, quality "
    "metrics, mean waveforms, probe geometry per shank, subject and session metadata, the sorting's lineage. One file "
    "per content (nwb/versions/), all kept; nwb/units.nwb links to the current one.",
)
def units_nwb(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.MaterializeResult:
    with user_errors_as_failures():
        key = context.partition_key
        store, folder = platform.store(key), platform.session_dir(key)
        export = nwb_export.export_units_nwb(
            store,
            folder,
            pipeline.publish_check(folder, store, platform.probe(key)),
            progress=ThrottledProgress(context.log.info, "units_nwb"),
        )
    columns = {
        "identifier": "string",
        "file": "string",
        "written_at": "string",
        "sorting_version": "string",
        "curation_status": "string",
        "curation_fingerprint": "string",
        "metadata_version": "string",
        "n_units": "int",
        "n_spikes": "int",
    }
    rows = [{k: v.get(k) if v.get(k) is not None else ("" if t == "string" else 0) for k, t in columns.items()}
            for v in export.versions]  # fmt: skip
    context.log.info(
        f"NWB {export.identifier} ({'written' if export.identifier in export.written else 'already written'}); "
        f"{len(export.versions)} versions kept"
    )
    meta = {
        "n_units": export.n_units,
        "n_spikes": export.n_spikes,
        "curation_status": export.curation_status,
        "identifier": export.identifier,
        "written": dg.MetadataValue.json(export.written),
        "n_versions": len(export.versions),
        "versions": metadata_table(rows, columns),
    }
    return dg.MaterializeResult(
        metadata={**meta, "path": dg.MetadataValue.path(str(export.path.resolve()))},
        data_version=dg.DataVersion(export.identifier),
    )


@dg.asset_check(
    asset=units_nwb,
    partitions_def=session_partitions,
    description="nwbinspector finds nothing CRITICAL, no best-practice violation and no schema error in each file the "
    "export published (the current one, and an earlier curation's own version when it wrote one).",
)
def units_nwb_passes_inspector(
    context: dg.AssetCheckExecutionContext, platform: PlatformResource
) -> dg.AssetCheckResult:
    store = platform.store(context.partition_key)
    index = nwb_export.list_versions(store)
    files = {i: nwb_export.nwb_dir(store) / nwb_export.VERSIONS_DIR / f"{i}.nwb" for i in index["last_export"]}
    messages = [
        {**m, "file": path.name}
        for identifier, path in (files or {"current": nwb_export.nwb_dir(store) / "units.nwb"}).items()
        for m in nwb_export.inspect_nwb(path)
    ]
    blocking = [m for m in messages if m["importance"] in nwb_export.BLOCKING]
    counts = {
        level: sum(1 for m in messages if m["importance"] == level)
        for level in sorted({m["importance"] for m in messages})
    }
    text = (
        "; ".join(f"{m['file']}: {m['importance']} {m['check']}: {m['message']}" for m in blocking)
        or f"{len(messages)} suggestions in {len(files) or 1} file(s)"
    )
    if any(m["check"] in ("check_subject_exists", "check_subject_age") for m in blocking):
        text = f"{text.rstrip('.')}. Fix: {nwb_export.SUBJECT_FIX} into the session folder's {SUBJECT_JSON}"
    return dg.AssetCheckResult(
        passed=not blocking,
        description=text[:2000],
        metadata={
            "counts": dg.MetadataValue.json(counts),
            "files": dg.MetadataValue.json(sorted(p.name for p in files.values())),
            "messages": dg.MetadataValue.json(messages[:50]),
        },
    )


#: Observe the Phy folder first, in the same run (a group selection leaves source assets out): the curation
#: ``curated_units`` records is then the version its provenance names, so one run leaves it fresh.
curate_session_job = dg.define_asset_job(
    "curate_session",
    selection=dg.AssetSelection.assets(phy_curation.key) | dg.AssetSelection.groups(CURATION_GROUP),
    partitions_def=session_partitions,
    description="After curating in Phy: observe the Phy folder, record the curated units and write the NWB file.",
)

#: Re-read the Phy folders (the UI's "Observe sources" does the same): a save in Phy marks curated_units stale.
observe_curation_job = dg.define_asset_job(
    "observe_phy_curation",
    selection=dg.AssetSelection.assets(phy_curation.key),
    partitions_def=session_partitions,
    description="Observe the Phy curation of one session (or all, without a partition).",
)

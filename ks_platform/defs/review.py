"""Review: the Phy bundle the lab opens for manual curation."""

import socket

import dagster as dg
import numpy as np

from ks_platform.core import curation, pipeline
from ks_platform.core.curation import curation_fingerprint
from ks_platform.core.errors import SessionInputError
from ks_platform.core.names import SESSION_GROUP
from ks_platform.core.phy import validate_phy_folder
from ks_platform.core.progress import ThrottledProgress
from ks_platform.dagster_internals import DATA_VERSION_TAG
from ks_platform.defs.lineage_metadata import lineage_metadata
from ks_platform.defs.partitions import session_partitions
from ks_platform.defs.reporting import step_result, user_errors_as_failures
from ks_platform.defs.resources import PlatformResource
from ks_platform.defs.sorting import sorted_units


@dg.asset(
    partitions_def=session_partitions,
    group_name=SESSION_GROUP,
    code_version="1",
    deps=[sorted_units],
    kinds={"phy"},
    owners=["team:ephys"],
    description="5 · A Phy folder (relocatable params.py pointing at the binary), opened with phylib before it is "
    "published.",
)
def phy_bundle(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.MaterializeResult:
    key = context.partition_key
    with user_errors_as_failures():
        output = pipeline.export_phy(
            platform.store(key),
            platform.session_dir(key),
            platform.probe(key),
            progress=ThrottledProgress(context.log.info, "phy_bundle"),
        )
    context.log.info(f"Phy folder ready: {output.metadata['open_command']}")
    # The fresh folder's curation files, as an observation of phy_curation (defs/curation.py), so a later save in Phy,
    # once observed, marks curated_units stale (as raw_recording records session_settings).
    fingerprint = curation_fingerprint(platform.store(key).phy_dir)
    context.log_event(
        dg.AssetObservation(asset_key=dg.AssetKey("phy_curation"), partition=key, tags={DATA_VERSION_TAG: fingerprint})
    )
    extra = {**lineage_metadata(output.metadata["lineage"]), "exported_on_host": socket.gethostname()}
    return step_result(
        output, extra={**extra, "open_in_phy": dg.MetadataValue.md(f"```\n{output.metadata['open_command']}\n```")}
    )


@dg.asset_check(
    asset=phy_bundle,
    partitions_def=session_partitions,
    description="The published Phy folder opens in phylib and has spikes: params.py (dat_path resolves to the binary "
    "and fits it) and the curation files Phy saved; a failure names the file and the fix.",
)
def phy_bundle_opens(context: dg.AssetCheckExecutionContext, platform: PlatformResource) -> dg.AssetCheckResult:
    store = platform.store(context.partition_key)
    try:
        bundle = validate_phy_folder(store.phy_dir)
        if (store.phy_dir / "spike_templates.npy").is_file():  # what Phy saved must fit the sorting too
            curation.read_curation(
                store.phy_dir,
                np.load(store.phy_dir / "spike_templates.npy").ravel(),
                "-",
                curation.restore_fix(store),
            )
    except SessionInputError as exc:
        return dg.AssetCheckResult(
            passed=False,
            description=str(exc),
            metadata={"file": dg.MetadataValue.path(str(exc.path)), "problem": exc.problem, "fix": exc.fix},
        )
    return dg.AssetCheckResult(
        passed=bundle.n_spikes > 0,
        metadata={
            "n_spikes": bundle.n_spikes,
            "n_clusters": bundle.n_clusters,
            "traces_shape": dg.MetadataValue.json(list(bundle.traces_shape)),
        },
    )

"""Ingest: the landing folder's recording, its probe map, and the binary Kilosort reads."""

import dagster as dg

from ks_platform.core import pipeline
from ks_platform.core.catalog import current_session_folder
from ks_platform.core.names import SESSION_GROUP
from ks_platform.core.progress import ThrottledProgress
from ks_platform.dagster_internals import DATA_VERSION_TAG
from ks_platform.defs.partitions import session_partitions
from ks_platform.defs.reporting import step_result, user_errors_as_failures
from ks_platform.defs.resources import PlatformResource

#: The observable parameter set of a session (defined with the sorting, ``defs/sorting.py``).
SESSION_SETTINGS_KEY = dg.AssetKey("session_settings")
#: The observable settings of the sorters compared with the probe's own (``defs/comparison.py``).
COMPARED_SETTINGS_KEY = dg.AssetKey("compared_sorter_settings")


@dg.asset(
    partitions_def=session_partitions,
    group_name=SESSION_GROUP,
    code_version="1",
    kinds={"spikeglx", "file"},
    owners=["team:ephys"],
    description="1 · The session's recording as found in its landing folder: format, size, date, channels, duration "
    "and a content fingerprint (nothing is copied).",
)
def raw_recording(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.MaterializeResult:
    key = context.partition_key
    with user_errors_as_failures():
        store = platform.store(key)  # checks the key grammar first
        folder = current_session_folder(key, platform.roots(), store.root)  # refuses retired and re-dated keys
        output = pipeline.observe_raw_recording(folder, store, platform.probe(key))
        settings_version = output.metadata.pop("settings_version")
        compared_version = output.metadata.pop("compared_settings_version")
    # The parameter sets as this run finds them, recorded as observations of session_settings (defs/sorting.py) and
    # compared_sorter_settings (defs/comparison.py): the sortings' provenance then names them however the run was
    # launched, and a later edit shows as stale.
    for asset_key, version in ((SESSION_SETTINGS_KEY, settings_version), (COMPARED_SETTINGS_KEY, compared_version)):
        context.log_event(dg.AssetObservation(asset_key=asset_key, partition=key, tags={DATA_VERSION_TAG: version}))
    context.log.info(
        f"{output.metadata['format']} recording, {output.metadata['duration_s']} s, {output.metadata['n_channels']} "
        "channels"
    )
    return step_result(
        output, path_key=None, extra={"session_dir": dg.MetadataValue.path(output.metadata["session_dir"])}
    )


@dg.asset(
    partitions_def=session_partitions,
    group_name=SESSION_GROUP,
    code_version="1",
    deps=[raw_recording],
    kinds={"probeinterface"},
    owners=["team:ephys"],
    description="2 · The validated probe geometry, as probeinterface JSON and as Kilosort's probe dict, with a picture.",
)
def probe_map(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.MaterializeResult:
    key = context.partition_key
    with user_errors_as_failures():
        output = pipeline.build_probe_map(
            platform.session_dir(key), platform.store(key), platform.allow_zero_copy, platform.probe(key)
        )
    return step_result(output, extra={"path": dg.MetadataValue.path(str(platform.store(key).probe_dir))})


@dg.asset(
    partitions_def=session_partitions,
    group_name=SESSION_GROUP,
    code_version="1",
    deps=[raw_recording],
    kinds={"binary"},
    owners=["team:ephys"],
    description="3 · The int16 interleaved binary Kilosort reads: converted chunk by chunk, or verified in place "
    "(zero-copy), with its xxh3 checksum as data version.",
)
def recording_binary(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.MaterializeResult:
    key = context.partition_key
    with user_errors_as_failures():
        output = pipeline.build_recording_binary(
            platform.session_dir(key),
            platform.store(key),
            platform.allow_zero_copy,
            progress=ThrottledProgress(context.log.info, "recording_binary"),
            probe=platform.probe(key),
        )
    context.log.info(f"binary ready: zero_copy={output.metadata['zero_copy']}, checksum {output.data_version}")
    return step_result(output)

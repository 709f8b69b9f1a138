"""The Dagster code location (loaded by workspace.yaml)."""

from __future__ import annotations

import warnings

import dagster as dg

# Partitioned asset checks are "preview" in dagster 1.13; we rely on them knowingly (pinned dagster version).
warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)
warnings.filterwarnings(
    "ignore", message="Function `observable_source_asset` is currently in beta", category=dg.BetaWarning
)

from ks_platform.defs import curation, doctor, ingest, quality, review, rollup, sorting  # noqa: E402
from ks_platform.defs.partitions import session_partitions  # noqa: E402
from ks_platform.defs.resources import PlatformResource  # noqa: E402
from ks_platform.defs.sensors import build_new_session_sensor  # noqa: E402

#: Everything for one session, recording to Phy folder.
sort_session_job = dg.define_asset_job(
    "sort_session",
    selection=dg.AssetSelection.groups(ingest.GROUP),
    partitions_def=session_partitions,
    description="Materialize every asset of one session: recording → probe → binary → Kilosort 4 → Phy → unit metrics.",
)

#: Re-read sessions' kilosort4-settings.json (the UI's "Observe sources" does the same): edited ones turn the sorting stale.
observe_settings_job = dg.define_asset_job(
    "observe_session_settings",
    selection=dg.AssetSelection.assets(sorting.session_settings.key),
    partitions_def=session_partitions,
    description="Observe the parameter set of one session (or all, without a partition): a changed kilosort4-settings.json marks its sorting stale.",
)

ALL_ASSETS = [
    sorting.session_settings,
    ingest.raw_recording,
    ingest.probe_map,
    ingest.recording_binary,
    sorting.sorted_units,
    review.phy_bundle,
    quality.unit_metrics,
    curation.phy_curation,
    curation.curated_units,
    curation.units_nwb,
]
ALL_CHECKS = [
    sorting.sorted_units_not_empty,
    sorting.sorted_units_match_ground_truth,
    review.phy_bundle_opens,
    quality.unit_metrics_has_units,
    quality.unit_metrics_isi_violations,
    curation.curated_units_not_stale,
    curation.units_nwb_passes_inspector,
]


def default_sensors() -> list[dg.SensorDefinition]:
    """``new_session_sensor`` (stopped by default, see ``defs/sensors.py``) and ``daily_rollup_sensor`` (running)."""
    return [build_new_session_sensor(), rollup.build_rollup_sensor()]


def executor_from_env() -> dg.ExecutorDefinition | None:
    """The executor the environment selects: dagster-k8s's (``KS_PLATFORM_KUBERNETES``), SLURM jobs
    (``KS_PLATFORM_SLURM`` or ``KS_PLATFORM_EXECUTOR=ks_platform_slurm``), the placing Docker executor
    (``KS_PLATFORM_INVENTORY`` or ``KS_PLATFORM_EXECUTOR=ks_platform_docker``; the latter is set in every step container
    and job so run config validates there too), else Dagster's default."""
    import os

    from ks_platform.execution.kubernetes import KUBERNETES_ENV

    if os.environ.get(KUBERNETES_ENV):
        return kubernetes_executor(os.environ[KUBERNETES_ENV])
    if os.environ.get("KS_PLATFORM_SLURM") or os.environ.get("KS_PLATFORM_EXECUTOR") == "ks_platform_slurm":
        from ks_platform.execution.slurm_executor import slurm_executor

        return slurm_executor
    if not os.environ.get("KS_PLATFORM_INVENTORY") and os.environ.get("KS_PLATFORM_EXECUTOR") != "ks_platform_docker":
        return None
    from ks_platform.execution.docker_executor import placing_docker_executor

    return placing_docker_executor


def kubernetes_executor_config(deployment_file: str) -> dict:
    """The placement policy's ``k8s_job_executor`` config for these assets (GPU config for the sorting op)."""
    from ks_platform.execution.kubernetes import k8s_executor_config, load_deployment

    deployment = load_deployment(deployment_file)
    op_tags = {asset.op.name: dict(asset.op.tags) for asset in ALL_ASSETS if isinstance(asset, dg.AssetsDefinition)}
    return k8s_executor_config(deployment.inventory, op_tags)


def kubernetes_executor(deployment_file: str) -> dg.ExecutorDefinition:
    """dagster-k8s's ``k8s_job_executor`` configured by :func:`kubernetes_executor_config` (``KS_PLATFORM_KUBERNETES``)."""
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(kubernetes_executor_config(deployment_file))


def build_definitions(
    platform: PlatformResource | None = None,
    executor: dg.ExecutorDefinition | None = None,
    sensors: list[dg.SensorDefinition] | None = None,
) -> dg.Definitions:
    """The code location; ``sensors=None`` means :func:`default_sensors` (pass ``[]`` or your own to replace them)."""
    return dg.Definitions(
        assets=[*ALL_ASSETS, rollup.daily_rollup],
        asset_checks=ALL_CHECKS,
        jobs=[
            sort_session_job,
            observe_settings_job,
            curation.curate_session_job,
            curation.observe_curation_job,
            rollup.daily_rollup_job,
            doctor.host_doctor,
        ],
        sensors=default_sensors() if sensors is None else sensors,
        resources={"platform": platform or PlatformResource.from_env(), "quality": quality.QualityResource()},
        executor=executor or executor_from_env(),
    )


defs = build_definitions()

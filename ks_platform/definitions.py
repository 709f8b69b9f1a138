"""The Dagster code location (loaded by workspace.yaml)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import dagster as dg

# Partitioned asset checks are "preview" in dagster 1.13; we rely on them knowingly (pinned dagster version).
warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)
warnings.filterwarnings(
    "ignore", message="Function `observable_source_asset` is currently in beta", category=dg.BetaWarning
)

from ks_platform.core.names import (  # noqa: E402
    COMPARISON_GROUP,
    DOCKER_EXECUTOR_NAME,
    EXECUTOR_ENV,
    IN_PROCESS_EXECUTOR_NAME,
    OBSERVE_SETTINGS_JOB_NAME,
    SESSION_GROUP,
    SLURM_EXECUTOR_NAME,
    SORT_JOB_NAME,
)
from ks_platform.defs import (  # noqa: E402
    comparison,
    curation,
    doctor,
    ingest,
    labels,
    landing,
    quality,
    review,
    rollup,
    sorting,
    tracking,
)
from ks_platform.defs.partitions import session_partitions  # noqa: E402
from ks_platform.defs.resources import PlatformResource  # noqa: E402
from ks_platform.defs.sensors import build_new_session_sensor  # noqa: E402

if TYPE_CHECKING:
    from ks_platform.execution.deployment import Deployment

#: Everything for one session, recording to Phy folder, and the sorters compared with the probe's own.
sort_session_job = dg.define_asset_job(
    SORT_JOB_NAME,
    selection=dg.AssetSelection.groups(SESSION_GROUP, COMPARISON_GROUP),
    partitions_def=session_partitions,
    description="Materialize every asset of one session: recording → probe → binary → sorting (Kilosort 4 unless the "
    "session config names another sorter) → Phy → bombcell labels → unit metrics; and the sorters compared with it, "
    "with their agreement.",
)

#: Re-read sessions' kilosort4-settings.json / ks_session.json (the UI's "Observe sources" does the same): edited ones
#: turn the sorting (or the compared sortings) stale.
observe_settings_job = dg.define_asset_job(
    OBSERVE_SETTINGS_JOB_NAME,
    selection=dg.AssetSelection.assets(sorting.session_settings.key, comparison.compared_sorter_settings.key),
    partitions_def=session_partitions,
    description="Observe the parameter set of one session (or all, without a partition): a changed "
    "kilosort4-settings.json marks its sorting stale.",
)

ALL_ASSETS = [
    sorting.session_settings,
    ingest.raw_recording,
    ingest.probe_map,
    ingest.recording_binary,
    sorting.sorted_units,
    comparison.compared_sorter_settings,
    comparison.compared_sortings,
    comparison.sorter_agreement,
    review.phy_bundle,
    labels.labelled_units,
    quality.unit_metrics,
    curation.phy_curation,
    curation.curated_units,
    curation.units_nwb,
    labels.label_agreement,
    tracking.subject_sessions,
    tracking.tracked_units,
]
ALL_CHECKS = [
    sorting.sorted_units_not_empty,
    sorting.sorted_units_match_ground_truth,
    comparison.agreement_ground_truth,
    review.phy_bundle_opens,
    quality.unit_metrics_has_units,
    quality.unit_metrics_isi_violations,
    curation.curated_units_not_stale,
    curation.units_nwb_passes_inspector,
    labels.unit_labels_in_phy_and_tracked,
    tracking.unit_tracks_link_every_session,
]


def default_sensors() -> list[dg.SensorDefinition]:
    """``new_session_sensor`` (stopped by default, see ``defs/sensors.py``), ``daily_rollup_sensor`` and
    ``unit_tracks_sensor`` (running)."""
    return [build_new_session_sensor(), rollup.build_rollup_sensor(), tracking.build_tracks_sensor()]


def executor_from_env() -> dg.ExecutorDefinition:
    """The executor of the deployment file (``KS_PLATFORM_DEPLOYMENT``, ``execution/deployment.py``): its ``engine``
    ``docker`` is the placing Docker executor, ``slurm`` SLURM jobs, ``kubernetes`` dagster-k8s's; ``local`` or no
    file is Dagster's multiprocess executor with steps forked from a preloaded forkserver
    (``execution/step_processes.py``). ``KS_PLATFORM_EXECUTOR`` names the executor outright: it is set in every step
    container and job (so run config validates there too), and ``in_process`` runs every step in the run's process."""
    import os

    from ks_platform.execution.deployment import deployment_from_env

    named = os.environ.get(EXECUTOR_ENV)
    if named == IN_PROCESS_EXECUTOR_NAME:
        return dg.in_process_executor
    if named == SLURM_EXECUTOR_NAME:
        from ks_platform.execution.slurm_executor import slurm_executor

        return slurm_executor
    if named == DOCKER_EXECUTOR_NAME:
        from ks_platform.execution.docker_executor import placing_docker_executor

        return placing_docker_executor
    deployment = deployment_from_env()
    engine = deployment.engine if deployment is not None else "local"
    if engine == "kubernetes":
        return kubernetes_executor(deployment)
    if engine == "slurm":
        from ks_platform.execution.slurm_executor import slurm_executor

        return slurm_executor
    if engine == "docker":
        from ks_platform.execution.docker_executor import placing_docker_executor

        return placing_docker_executor
    from ks_platform.execution.step_processes import forkserver_multiprocess_executor

    return forkserver_multiprocess_executor


def kubernetes_executor_config(deployment: Deployment) -> dict:
    """The placement policy's ``k8s_job_executor`` config for these assets (GPU config for the sorting op)."""
    from ks_platform.execution.kubernetes import k8s_executor_config

    op_tags = {asset.op.name: dict(asset.op.tags) for asset in ALL_ASSETS if isinstance(asset, dg.AssetsDefinition)}
    return k8s_executor_config(deployment.inventory, op_tags)


def kubernetes_executor(deployment: Deployment) -> dg.ExecutorDefinition:
    """dagster-k8s's ``k8s_job_executor`` configured by :func:`kubernetes_executor_config`."""
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(kubernetes_executor_config(deployment))


def build_definitions(
    platform: PlatformResource | None = None,
    executor: dg.ExecutorDefinition | None = None,
    sensors: list[dg.SensorDefinition] | None = None,
) -> dg.Definitions:
    """The code location; ``sensors=None`` means :func:`default_sensors` (pass ``[]`` or your own to replace them)."""
    return dg.Definitions(
        assets=[*ALL_ASSETS, rollup.daily_rollup, landing.landing_folders],
        asset_checks=ALL_CHECKS,
        jobs=[
            sort_session_job,
            observe_settings_job,
            curation.curate_session_job,
            curation.observe_curation_job,
            rollup.daily_rollup_job,
            tracking.track_units_job,
            tracking.export_tracked_nwb_job,
            doctor.host_doctor,
        ],
        sensors=default_sensors() if sensors is None else sensors,
        resources={"platform": platform or PlatformResource.from_env(), "quality": quality.QualityResource()},
        executor=executor or executor_from_env(),
    )


def sort_session_in_containers() -> dg.JobDefinition:
    """``sort_session`` with the placing Docker executor, for ``execute_job(reconstructable(...))``; platform paths
    from the ``KS_PLATFORM_*`` environment. In the installed package, so the same path resolves in the step images."""
    from ks_platform.execution.docker_executor import placing_docker_executor

    return build_definitions(executor=placing_docker_executor).resolve_job_def(SORT_JOB_NAME)


def sort_session_on_slurm() -> dg.JobDefinition:
    """``sort_session`` with the SLURM executor, for ``execute_job(reconstructable(...))``; platform paths from the
    ``KS_PLATFORM_*`` environment."""
    from ks_platform.execution.slurm_executor import slurm_executor

    return build_definitions(executor=slurm_executor).resolve_job_def(SORT_JOB_NAME)


defs = build_definitions()

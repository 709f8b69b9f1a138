"""``landing_folders``: the one place in the UI that lists every landing folder that is not a partition, with why.

An external asset, observed by ``new_session_sensor`` (and by ``ks-platform register``) whenever what it lists changes:
the rejected and unreadable folders (problem, file, fix, from the landing catalog), the folders not complete yet,
landing roots that could not be searched and retirements waiting for a run to end. The latest observation stays the
asset's page until the next change, however old the sensor's ticks are (ticks are purged after a day).
"""

from __future__ import annotations

import dagster as dg

from ks_platform.core.landing_report import LandingReport
from ks_platform.core.names import LANDING_FOLDERS_ASSET, LANDING_GROUP

landing_folders = dg.AssetSpec(
    LANDING_FOLDERS_ASSET,
    group_name=LANDING_GROUP,
    owners=["team:ephys"],
    kinds={"folder"},
    description="Every landing folder that is not a session partition, with its problem, the file and the fix; the "
    "folders still being copied (not complete yet); landing roots that could not be searched. Refreshed by "
    "new_session_sensor and `ks-platform register` when it changes; `ks-platform sessions --rejected` lists the same.",
)


def landing_observation(report: LandingReport) -> dg.AssetObservation:
    """The report as an observation of ``landing_folders`` (its digest tells a later tick whether it changed)."""
    return dg.AssetObservation(
        asset_key=landing_folders.key,
        description=f"{len(report.rejected)} landing folder(s) are not sessions; {len(report.waiting)} not complete yet",
        metadata={
            "not_sessions": len(report.rejected),
            "not_complete_yet": len(report.waiting),
            "roots_not_searched": len(report.roots),
            "report": dg.MetadataValue.md(report.markdown()),
            "digest": report.digest(),
        },
    )


def report_changed(instance: dg.DagsterInstance, report: LandingReport) -> bool:
    """Whether ``report`` differs from the latest observation of ``landing_folders`` (none yet: it does)."""
    records = instance.fetch_observations(landing_folders.key, limit=1).records
    if not records or records[0].asset_observation is None:
        return True
    digest = records[0].asset_observation.metadata.get("digest")
    return getattr(digest, "value", digest) != report.digest()

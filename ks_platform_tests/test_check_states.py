"""How a check that has nothing to check shows (issue #27): the ground-truth check of a session without ground truth
is skipped, never passed. Cheap: the check alone on a generated session (it stops before reading any sorting)."""

from __future__ import annotations

import dagster as dg

from ks_platform.cli.pipeline_commands import check_lines
from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session
from ks_platform.definitions import build_definitions
from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME

CHECK = dg.AssetCheckKey(dg.AssetKey("sorted_units"), "sorted_units_match_ground_truth")


def test_ground_truth_check_is_skipped_not_passed_without_ground_truth(workspace):
    """No result is recorded, so Dagster resolves the planned check of the successful run as SKIPPED in the UI, and
    ``ks-platform demo``/``sort`` print it as skipped."""
    folder = make_spikeglx_session(workspace.landing / "no_truth_g0", DemoSessionSpec(duration_s=0.5, n_units=2))
    for path in folder.glob("ground_truth*"):
        path.unlink()
    key = workspace.key(folder)
    workspace.instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, [key])
    job = build_definitions(workspace.platform, sensors=[]).resolve_job_def("sort_session")
    only_the_check = job.get_subset(asset_selection=set(), asset_check_selection={CHECK})
    result = only_the_check.execute_in_process(partition_key=key, instance=workspace.instance)
    assert result.success
    assert result.get_asset_check_evaluations() == []
    planned = workspace.instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED)
    assert [e.dagster_event.event_specific_data.check_name for e in planned] == [CHECK.name]
    [record] = workspace.instance.event_log_storage.get_asset_check_execution_history(CHECK, limit=1)
    assert (record.run_id, record.status.value) == (result.run_id, "PLANNED")  # + run succeeded = SKIPPED in the UI
    assert workspace.instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS
    assert check_lines(workspace.instance, result) == [
        f"check {CHECK.name}: skipped (nothing to check in this session)"
    ]
    messages = [e.user_message for e in workspace.instance.all_logs(result.run_id)]
    assert any("skipped: " in m and "has no ground truth" in m for m in messages)

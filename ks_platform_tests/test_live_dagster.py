"""Live (issue #6): ``dagster dev`` (webserver + daemon) on a free port, a session copied into a landing root,
observed only through GraphQL: the sensor's run is launched and succeeds, the daily rollup follows, and a
``ks-platform backfill`` over the session's date targets exactly that session. The session names two sorters
(``kilosort4`` and ``spykingcircus2``, issue #29): the sensor's one run sorts with both and compares them.

Real processes, real Kilosort (CPU), a temporary ``DAGSTER_HOME``, landing root and store. Both processes
are killed (whole process group) at the end; on failure their logs go to ``test-artifacts/live_dagster/``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ks_platform.core.agreement import AGREEMENT_JSON
from ks_platform.core.session_config import CONFIG_FILE
from ks_platform.core.store import SessionStore
from ks_platform_tests.live_support import (
    ADD_PARTITION,
    BACKFILL,
    CANCEL_BACKFILL,
    LOCATION,
    REPO,
    REPOSITORY_SELECTOR,
    RUN,
    RUNS,
    TERMINATE,
    dagster_dev,
    tags_of,
    wait_for,
    wait_for_run_end,
)

ARTIFACTS = REPO / "test-artifacts" / "live_dagster"
#: Kilosort on 2 shared CPU cores can take several minutes; the whole test is bounded by these.
SORT_TIMEOUT_S = 1200
START_SENSOR = """mutation($selector: SensorSelector!) { startSensor(sensorSelector: $selector) { __typename
  ... on Sensor { sensorState { status } } ... on PythonError { message } } }"""


@pytest.fixture
def live_dagster(tmp_path, request):
    """``dagster dev`` whose sensor treats a folder as complete once ``.ready`` is written; yields (graphql, env, landing)."""
    with dagster_dev(tmp_path, request, ARTIFACTS, {"KS_PLATFORM_READY_MARKER": ".ready"}) as live:
        yield live.graphql, live.env, live.landing


def test_sensor_sorts_a_dropped_session_and_backfill_targets_its_date(live_dagster, generated_session):
    graphql, env, landing = live_dagster
    date = "2026-03-02"
    key = f"{date}__rig1__{generated_session.name}__imec0"

    # The lab's copy: files first, the marker last. Its session config asks for a second sorter beside Kilosort 4.
    session = shutil.copytree(generated_session, landing / generated_session.name)
    config = json.loads((session / CONFIG_FILE).read_text())
    (session / CONFIG_FILE).write_text(json.dumps({**config, "sorter": ["kilosort4", "spykingcircus2"]}) + "\n")
    (session / ".ready").touch()

    # Start the sensor the way a user does (the UI's toggle is this mutation); it is stopped by default.
    started = graphql(
        START_SENSOR,
        selector={
            "repositoryLocationName": LOCATION,
            "repositoryName": "__repository__",
            "sensorName": "new_session_sensor",
        },
    )
    assert (
        started["startSensor"]["__typename"] == "Sensor"
        and started["startSensor"]["sensorState"]["status"] == "RUNNING"
    ), started

    sensor_tags = [{"key": "dagster/sensor_name", "value": "new_session_sensor"}]
    [run] = wait_for(
        "the sensor to launch a run", lambda: graphql(RUNS, tags=sensor_tags)["runsOrError"]["results"], 180
    )
    assert tags_of(run)["dagster/partition"] == key and run["jobName"] == "sort_session"
    assert tags_of(run)["dagster/run_key"].startswith(f"{key}:")

    status = wait_for(
        "the sort run to finish",
        lambda: (s := graphql(RUN, runId=run["runId"])["runOrError"]["status"]) in ("SUCCESS", "FAILURE", "CANCELED")
        and s,
        SORT_TIMEOUT_S,
        every_s=2,
    )
    assert status == "SUCCESS"
    store = SessionStore(Path(env["KS_PLATFORM_STORE"]).resolve(), key)
    # both sortings side by side, each with its Phy folder, and their agreement
    assert (store.phy_dir / "params.py").is_file() and (
        store.compared_phy_dir("spykingcircus2") / "params.py"
    ).is_file()
    agreement = json.loads((store.agreement_dir / AGREEMENT_JSON).read_text())
    assert [p["sorters"] for p in agreement["pairs"]] == [["kilosort4", "spykingcircus2"]], agreement
    # The sensor does not sort it twice (later ticks see the same run key).
    assert len(graphql(RUNS, tags=sensor_tags)["runsOrError"]["results"]) == 1

    # The rollup sensor (running by default) refreshes that day's rollup after the sort.
    rollup_runs = wait_for(
        "the daily rollup run",
        lambda: [
            r
            for r in graphql(RUNS, tags=[{"key": "dagster/partition", "value": date}])["runsOrError"]["results"]
            if r["status"] == "SUCCESS"
        ],
        180,
    )
    assert rollup_runs[0]["jobName"] == "daily_rollup_job"
    rollup = json.loads((Path(env["KS_PLATFORM_STORE"]) / "rollups" / date / "rollup.json").read_text())
    assert rollup["n_sessions"] == 1 and rollup["n_sorted"] == 1 and rollup["n_units"] > 0

    # Another registered session on another date must not be in a backfill of this date.
    added = graphql(
        ADD_PARTITION,
        selector=REPOSITORY_SELECTOR,
        name="ks_platform_sessions",
        key="2026-03-20__rig1__elsewhere_g0__imec0",
    )
    assert added["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", added

    cli = subprocess.run(
        [str(Path(sys.executable).with_name("ks-platform")), "backfill", "--start", date, "--end", date],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr
    backfill_id = cli.stdout.split("launched backfill ")[1].split()[0]
    backfill = graphql(BACKFILL, id=backfill_id)["partitionBackfillOrError"]
    assert backfill["__typename"] == "PartitionBackfill" and backfill["isAssetBackfill"], backfill
    assert backfill["partitionNames"] == [key]
    assert sorted("/".join(a["path"]) for a in backfill["assetSelection"]) == [
        "compared_sortings",
        "phy_bundle",
        "probe_map",
        "raw_recording",
        "recording_binary",
        "sorted_units",
        "sorter_agreement",
        "unit_labels",
        "unit_metrics",
    ]

    # The daemon launches the backfill's run(s), all for that one session; then we stop it (a second sort proves nothing
    # more).
    backfill_tags = [{"key": "dagster/backfill", "value": backfill_id}]
    launched = wait_for(
        "the backfill's first run", lambda: graphql(RUNS, tags=backfill_tags)["runsOrError"]["results"], 180
    )
    assert {tags_of(r)["dagster/partition"] for r in launched} == {key}
    graphql(CANCEL_BACKFILL, id=backfill_id)
    for r in graphql(RUNS, tags=backfill_tags)["runsOrError"]["results"]:
        if r["status"] not in ("SUCCESS", "FAILURE", "CANCELED"):
            graphql(TERMINATE, runId=r["runId"])
    # Terminated, each run ends as CANCELED, whatever step (a sort included) it had reached: nothing is left running.
    for r in graphql(RUNS, tags=backfill_tags)["runsOrError"]["results"]:
        assert wait_for_run_end(graphql, r["runId"], 180) == "CANCELED"
    assert {tags_of(r)["dagster/partition"] for r in graphql(RUNS, tags=backfill_tags)["runsOrError"]["results"]} == {
        key
    }

"""Staleness (issue #4): a session's parameters, the sorting code version and the input data each mark exactly the
right assets stale in Dagster, and materializing the stale ones redoes exactly those. Two Kilosort runs in all.

Dagster marks an asset stale when its own code version or a direct parent's data version changed; children follow
once the new version lands. "Materialize stale" therefore proceeds wave by wave (as the UI's button does when
pressed again): ``materialize_until_fresh`` repeats it and returns everything it redid."""

from __future__ import annotations

import json
from dataclasses import replace

import dagster as dg
import pytest
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

from ks_platform.core.synthetic import make_spikeglx_session
from ks_platform.definitions import ALL_ASSETS, build_definitions
from ks_platform_tests.conftest import CANONICAL_SETTINGS, TEST_SPEC, Workspace

SESSION = [
    "raw_recording",
    "probe_map",
    "recording_binary",
    "sorted_units",
    "phy_bundle",
    "unit_labels",
    "unit_metrics",
]
SORTING_AND_AFTER = {"sorted_units", "phy_bundle", "unit_labels", "unit_metrics"}


def stale_set(defs: dg.Definitions, instance: dg.DagsterInstance, key: str) -> set[str]:
    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)
    return {name for name in SESSION if resolver.get_status(dg.AssetKey(name), key) != StaleStatus.FRESH}


def materialization_counts(instance: dg.DagsterInstance, key: str) -> dict[str, int]:
    counts = {}
    for name in SESSION:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(name), asset_partitions=[key]), limit=100
        ).records
        counts[name] = len(records)
    return counts


def materialize_until_fresh(defs: dg.Definitions, instance: dg.DagsterInstance, key: str) -> set[str]:
    """Materialize the stale set, wave by wave, until nothing is stale; return what was materialized."""
    job = defs.resolve_job_def("sort_session")
    done: set[str] = set()
    for _ in range(len(SESSION)):
        stale = stale_set(defs, instance, key)
        if not stale:
            return done
        assert job.execute_in_process(
            partition_key=key, instance=instance, asset_selection=[dg.AssetKey(n) for n in sorted(stale)]
        ).success
        done |= stale
    raise AssertionError(f"still stale: {stale_set(defs, instance, key)}")


def observe_settings(defs: dg.Definitions, instance: dg.DagsterInstance, key: str) -> None:
    result = defs.resolve_job_def("observe_session_settings").execute_in_process(partition_key=key, instance=instance)
    assert result.success


@pytest.fixture(scope="module")
def sorted_short_session(tmp_path_factory):
    base = tmp_path_factory.mktemp("staleness")
    (base / "landing").mkdir()
    folder = make_spikeglx_session(base / "landing" / "short", replace(TEST_SPEC, seed=7))
    (folder / "kilosort4-settings.json").write_text(json.dumps(CANONICAL_SETTINGS))  # no drift pass: none to correct
    with dg.instance_for_test() as instance:
        ws = Workspace(base / "landing", base / "store", instance)
        key = ws.key(folder)
        result = ws.run(key)
        assert result.success
        yield ws, key, folder


def test_fresh_after_a_sort_and_after_observing_unchanged_settings(sorted_short_session):
    ws, key, _ = sorted_short_session
    defs = build_definitions(ws.platform, sensors=[])
    assert stale_set(defs, ws.instance, key) == set()
    observe_settings(defs, ws.instance, key)  # same parameters: nothing becomes stale
    assert stale_set(defs, ws.instance, key) == set()


def test_code_version_change_marks_the_sorting_and_what_follows_stale(sorted_short_session):
    ws, key, _ = sorted_short_session
    upgraded = [
        a.map_asset_specs(lambda spec: spec.replace_attributes(code_version="kilosort-4.1.7+2"))
        if isinstance(a, dg.AssetsDefinition) and a.key == dg.AssetKey("sorted_units")
        else a
        for a in ALL_ASSETS
    ]
    defs = build_definitions(ws.platform, sensors=[])
    defs = dg.Definitions(assets=upgraded, asset_checks=defs.asset_checks, jobs=defs.jobs, resources=defs.resources)
    assert stale_set(defs, ws.instance, key) == {"sorted_units"}


def test_parameter_change_marks_only_the_sorting_stale_and_rematerializing_redoes_exactly_that(sorted_short_session):
    ws, key, folder = sorted_short_session
    defs = build_definitions(ws.platform, sensors=[])
    (folder / "kilosort4-settings.json").write_text(json.dumps({**CANONICAL_SETTINGS, "Th_learned": 7.5}))
    observe_settings(defs, ws.instance, key)
    assert stale_set(defs, ws.instance, key) == {"sorted_units"}, "the binary and probe map are not stale"
    before = materialization_counts(ws.instance, key)
    redone = materialize_until_fresh(defs, ws.instance, key)
    after = materialization_counts(ws.instance, key)
    assert redone == SORTING_AND_AFTER
    assert {n for n in SESSION if after[n] != before[n]} == SORTING_AND_AFTER
    assert all(after[n] == before[n] + 1 for n in SORTING_AND_AFTER)
    settings = json.loads((ws.store(key).sorting_dir / "effective_settings.json").read_text())
    assert "7.5" in json.dumps(settings), "the new parameter was used"


def test_input_data_change_marks_everything_after_the_recording_stale(sorted_short_session):
    ws, key, folder = sorted_short_session
    defs = build_definitions(ws.platform, sensors=[])
    [data] = folder.glob("*.ap.bin")
    with open(data, "r+b") as handle:  # a re-copied recording with different content
        handle.write(b"\x07" * 66 * 200)
    job = defs.resolve_job_def("sort_session")
    assert job.execute_in_process(
        partition_key=key, instance=ws.instance, asset_selection=[dg.AssetKey("raw_recording")]
    ).success
    assert stale_set(defs, ws.instance, key) == {"probe_map", "recording_binary"}, (
        "the recording's direct children first"
    )

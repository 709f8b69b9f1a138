"""A sorter per probe (issue #29), without sorting: the ``sorter`` key and the sorters' parameter sections in the
session config (one error naming the file and the key), the data versions that make a sorting stale, and placement
(a CPU-only sorter never takes a GPU slot)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ks_platform.core import pipeline
from ks_platform.core.errors import SessionInputError
from ks_platform.core.names import COMPARED_SORTERS, NEEDS_TAG, PRIMARY_SORTERS, SORTERS_TAG
from ks_platform.core.session_config import CONFIG_FILE, SessionConfig
from ks_platform.core.settings import settings_hash
from ks_platform.core.sorters import effective_params, needs_gpu, sorter_version
from ks_platform.core.store import SessionStore, write_json_atomic
from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session
from ks_platform.execution.inventory import Inventory
from ks_platform.execution.placement import StepRequest, candidate_placements, step_needs_gpu


def probe_config(folder: Path, payload: dict, check: bool = True):
    (folder / CONFIG_FILE).write_text(json.dumps(payload))
    return SessionConfig.load(folder).for_probe({"imec0": (folder / "x.ap.bin",)}, "imec0", check_kilosort=check)


def test_sorter_is_kilosort4_unless_named_and_a_probe_section_wins(tmp_path):
    assert probe_config(tmp_path, {}).sorters == ("kilosort4",)
    assert probe_config(tmp_path, {"sorter": "spykingcircus2"}).sorters == ("spykingcircus2",)
    both = probe_config(
        tmp_path, {"sorter": ["kilosort4", "mountainsort5"], "probes": {"imec0": {"sorter": "tridesclous2"}}}
    )
    assert both.sorters == ("tridesclous2",)
    layered = probe_config(
        tmp_path,
        {
            "spykingcircus2": {"detection": {"method_kwargs": {"detect_threshold": 6}}},
            "probes": {"imec0": {"spykingcircus2": {"apply_motion_correction": False}}},
        },
    )
    params = effective_params("spykingcircus2", layered.sorter_params["spykingcircus2"]).params
    # nested sections merge key by key over SpikeInterface's defaults: the other detection keys stay
    assert params["detection"]["method_kwargs"] == {"peak_sign": "neg", "detect_threshold": 6}
    assert params["detection"]["method"] == "matched_filtering" and params["apply_motion_correction"] is False
    # platform defaults make the sorts repeatable: a seed where SpikeInterface leaves it random
    assert effective_params("tridesclous2").params["seed"] == 42
    assert effective_params("mountainsort5").params["whitening_seed"] == 42


@pytest.mark.parametrize(
    "payload, words",
    [
        ({"sorter": "kilosort"}, ["'sorter' names 'kilosort'", "did you mean 'kilosort4'?"]),
        ({"sorter": []}, ["'sorter' must be a sorter name or a non-empty list"]),
        ({"sorter": ["spykingcircus2", "spykingcircus2"]}, ["names a sorter twice"]),
        ({"sorter": 4}, ["'sorter' must be"]),
        (
            {"spykingcircus2": {"detection": {"method_kwargs": {"detect_treshold": 6}}}},
            ["'spykingcircus2.detection.method_kwargs.detect_treshold'", "did you mean 'detect_threshold'?"],
        ),
        ({"tridesclous2": {"detect_threshold": "five"}}, ["tridesclous2.detect_threshold: must be a finite number"]),
        ({"tridesclous2": {"n_peaks_per_channel": 10.5}}, ["tridesclous2.n_peaks_per_channel: must be a whole number"]),
        ({"tridesclous2": {"freq_min": -1}}, ["tridesclous2.freq_min: must not be negative"]),
        ({"tridesclous2": {"peak_sign": "down"}}, ["tridesclous2.peak_sign: 'down' is not one of"]),
        ({"mountainsort5": {"scheme": 2}}, ["mountainsort5.scheme: 2 is not one of ['1', '2', '3']"]),
        ({"mountainsort5": {"filter": "yes"}}, ["mountainsort5.filter: must be true or false"]),
        ({"mountainsort5": {"whitening_seed": 1.5}}, ["a seed must be a whole number"]),
        ({"spykingcircus2": {"job_kwargs": {"n_job": 2}}}, ["unknown job setting(s) ['n_job']"]),
        ({"spykingcircus2": []}, ["'spykingcircus2' must be an object"]),
        ({"probes": {"imec0": {"mountainsort5": {"npca_per_chanel": 3}}}}, ["did you mean 'npca_per_channel'?"]),
    ],
)
def test_a_bad_sorter_or_parameter_is_one_error_naming_the_file_and_the_key(tmp_path, payload, words):
    with pytest.raises(SessionInputError) as caught:
        probe_config(tmp_path, payload)
    assert caught.value.path == tmp_path / CONFIG_FILE
    for word in words:
        assert word in str(caught.value), str(caught.value)
    assert caught.value.fix


def test_finding_sessions_does_not_check_the_sorter_the_sort_does(tmp_path):
    """As for a bad Kilosort value: the session is registered, and that probe's sort fails with the message."""
    config = probe_config(tmp_path, {"sorter": "kilosort5", "tridesclous2": {"peak_sign": "down"}}, check=False)
    assert config.sorters == ("kilosort4",)


@pytest.fixture(scope="module")
def tiny_session(tmp_path_factory) -> Path:
    return make_spikeglx_session(
        tmp_path_factory.mktemp("tiny") / "tiny_g0", DemoSessionSpec(duration_s=0.5, n_units=2)
    )


def versions(folder: Path, payload: dict | None) -> tuple[str, str]:
    config = folder / CONFIG_FILE
    config.unlink(missing_ok=True)
    if payload is not None:
        config.write_text(json.dumps(payload))
    return pipeline.session_settings_version(folder), pipeline.compared_settings_version(folder)


def test_data_versions_mark_the_sorting_or_the_compared_sortings_stale_never_both(tiny_session):
    kilosort_only = versions(tiny_session, None)
    assert kilosort_only == ("none", "none")
    # Kilosort-only configs keep the versions they had before sorters could be chosen: no store goes stale on upgrade
    assert versions(tiny_session, {"kilosort": {"Th_learned": 7.5}}) == (settings_hash({"Th_learned": 7.5}), "none")
    assert versions(tiny_session, {"sorter": "kilosort4"}) == kilosort_only
    circus = versions(tiny_session, {"sorter": "spykingcircus2"})
    assert circus[0] not in (kilosort_only[0], "none") and circus[1] == "none"
    tuned = versions(tiny_session, {"sorter": "spykingcircus2", "spykingcircus2": {"apply_motion_correction": False}})
    assert tuned[0] != circus[0]
    listed = versions(tiny_session, {"sorter": ["kilosort4", "spykingcircus2"]})
    assert listed[0] == "none" and listed[1] != "none"
    other_tuned = versions(
        tiny_session, {"sorter": ["kilosort4", "spykingcircus2"], "spykingcircus2": {"apply_motion_correction": False}}
    )
    assert other_tuned[0] == listed[0] and other_tuned[1] != listed[1], "only the compared sortings go stale"
    assert versions(tiny_session, {"sorter": "kilosort9"})[0].startswith("invalid-")


def gpu_inventory() -> Inventory:
    return Inventory.from_mapping(
        {
            "store": "/srv/store",
            "hosts": [
                {
                    "name": "nv",
                    "docker_url": "unix:///var/run/docker.sock",
                    "backend": "cuda",
                    "cpu_slots": 2,
                    "gpus": [{"id": "0", "memory_mib": 24576}],
                }
            ],
        }
    )


@pytest.mark.parametrize(
    "listed, primary_gpu, compared_gpu",
    [
        (["kilosort4"], True, False),
        (["spykingcircus2"], False, False),
        (["kilosort4", "tridesclous2"], True, False),
        (["mountainsort5", "kilosort4"], False, True),
        (None, True, True),  # not observed yet: as before there was a choice
    ],
)
def test_a_cpu_only_sorter_never_takes_a_gpu_slot(tmp_path, listed, primary_gpu, compared_gpu):
    key = "2026-03-02__rig1__s__imec0"
    if listed is not None:
        write_json_atomic(SessionStore(tmp_path, key).raw_manifest, {"sorters": listed})
    for role, expected in ((PRIMARY_SORTERS, primary_gpu), (COMPARED_SORTERS, compared_gpu)):
        tags = {NEEDS_TAG: "gpu", SORTERS_TAG: role}
        assert step_needs_gpu(tmp_path, key, tags) is expected
        [placement, *_] = candidate_placements(gpu_inventory(), StepRequest("run", "sorted_units", expected))
        assert (placement.gpu is not None) is expected and placement.device_backend == ("cuda:0" if expected else "cpu")
    assert step_needs_gpu(tmp_path, key, {NEEDS_TAG: "gpu"}) is True  # a GPU step that is no sort step
    assert needs_gpu(["spykingcircus2", "tridesclous2", "mountainsort5"]) is False


def test_sort_steps_carry_their_role_and_versions_are_known():
    from ks_platform.definitions import build_definitions

    job = build_definitions(sensors=[]).resolve_job_def("sort_session")
    tags = {node.name: dict(node.definition.tags) for node in job.graph.node_dict.values()}
    assert tags["sorted_units"][SORTERS_TAG] == PRIMARY_SORTERS and tags["sorted_units"][NEEDS_TAG] == "gpu"
    assert tags["compared_sortings"][SORTERS_TAG] == COMPARED_SORTERS
    assert {"compared_sortings", "sorter_agreement", "sorted_units", "unit_metrics"} <= set(tags)
    for name in ("kilosort4", "spykingcircus2", "tridesclous2", "mountainsort5"):
        assert sorter_version(name)

"""Fast unit tests of the domain core (no Kilosort run)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from ks_platform.core.errors import SessionInputError
from ks_platform.core.hardware import (
    BYTES_PER_SAMPLE_CHANNEL,
    FIXED_OVERHEAD_BYTES,
    MIN_BATCH_SIZE,
    recommended_batch_size,
)
from ks_platform.core.sessions import SessionRef, check_name, is_safe_name, key_name
from ks_platform.core.settings import effective_settings, validate_overrides
from ks_platform.core.store import atomic_directory


def test_settings_validation_against_kilosort_table(tmp_path):
    path = tmp_path / "kilosort4-settings.json"
    assert validate_overrides({"batch_size": 30000, "Th_universal": 8}, path) == {
        "batch_size": 30000,
        "Th_universal": 8.0,
    }
    with pytest.raises(SessionInputError, match="did you mean 'nblocks'"):
        validate_overrides({"nblock": 1}, path)
    with pytest.raises(SessionInputError, match="must be a number"):
        validate_overrides({"batch_size": "big"}, path)
    with pytest.raises(SessionInputError, match="out of range"):
        validate_overrides({"batch_size": 0}, path)
    with pytest.raises(SessionInputError, match="out of range"):
        validate_overrides({"batch_size": -5}, path)
    with pytest.raises(SessionInputError, match="taken from the recording"):
        validate_overrides({"n_chan_bin": 5}, path)


def test_settings_layers_and_hash():
    a = effective_settings(33, 30000.0, "generic", {"nblocks": 0}, platform_defaults={"nblocks": 5, "Th_learned": 7.0})
    assert a.settings["nblocks"] == 0 and a.settings["Th_learned"] == 7.0 and a.settings["n_chan_bin"] == 33
    b = effective_settings(33, 30000.0, "generic", {"nblocks": 1}, platform_defaults={"nblocks": 5, "Th_learned": 7.0})
    assert a.params_hash != b.params_hash
    assert (
        a.params_hash
        == effective_settings(
            33, 30000.0, "generic", {"nblocks": 0}, platform_defaults={"nblocks": 5, "Th_learned": 7.0}
        ).params_hash
    )


def test_batch_size_rule_reproduces_lab_hand_tuning():
    assert recommended_batch_size(None, 384) == 60_000  # CPU keeps Kilosort's default
    assert 4_000 <= recommended_batch_size(1 * 1024**3, 384) <= 5_000  # the lab's 1 GB laptop GPU
    assert recommended_batch_size(80 * 1024**3, 384) == 60_000
    assert recommended_batch_size(8 * 1024**3, 384) > recommended_batch_size(4 * 1024**3, 384)
    assert recommended_batch_size(100 * 1024**2, 384) == 3_000  # floor


def test_settings_reject_wrong_types_and_ranges_naming_file_and_fix(tmp_path):
    path = tmp_path / "kilosort4-settings.json"
    cases = {
        "batch_size": (0, "out of range"),
        "nblocks": (-1, "out of range"),
        "Th_universal": (0, "not allowed"),  # Kilosort's table excludes 0
        "max_peels": (10_001, "out of range"),
        "nt": (61.5, "whole number"),
        "templates_from_data": (1, "true or false"),
        "Th_learned": (True, "must be a number"),
        "highpass_cutoff": (float("nan"), "finite"),
        "drift_smoothing": ([0.5, 0.5], "list of 3"),
        "clear_cache": ("no", "true or false"),
    }
    for key, (value, problem) in cases.items():
        with pytest.raises(SessionInputError, match=problem) as caught:
            validate_overrides({key: value}, path)
        error = caught.value
        assert error.path == path and key in error.problem, key
        assert f"set {key!r} to" in error.fix and "Kilosort's default" in error.fix, error.fix
        assert str(path) in str(error) and "Fix:" in str(error)
    with pytest.raises(SessionInputError, match="JSON object, got list"):
        validate_overrides([1, 2], path)


def test_settings_accept_what_kilosort_accepts(tmp_path):
    path = tmp_path / "kilosort4-settings.json"
    ok = {
        "batch_size": 5000.0,
        "nt0min": None,
        "dmin": None,
        "drift_smoothing": [0.5, 0, 1],
        "templates_from_data": False,
        "clear_cache": True,
        "max_cluster_subset": 1000,
    }
    clean = validate_overrides(ok, path)
    assert clean["batch_size"] == 5000 and isinstance(clean["batch_size"], int)
    assert clean["nt0min"] is None and clean["drift_smoothing"] == [0.5, 0.0, 1.0] and clean["clear_cache"] is True
    with pytest.raises(SessionInputError, match="cannot be null"):
        validate_overrides({"batch_size": None}, path)


def test_batch_size_rule_boundaries():
    per_sample = 384 * BYTES_PER_SAMPLE_CHANNEL
    assert recommended_batch_size(FIXED_OVERHEAD_BYTES + per_sample * 60_000, 384) == 60_000
    assert (
        recommended_batch_size(FIXED_OVERHEAD_BYTES + per_sample * 60_000 - 1, 384) == 59_000
    )  # rounded down to 1 000
    assert recommended_batch_size(FIXED_OVERHEAD_BYTES + per_sample * 4_000, 384) == 4_000
    assert recommended_batch_size(FIXED_OVERHEAD_BYTES + per_sample * 4_000 - 1, 384) == 3_000  # floor
    assert (
        recommended_batch_size(FIXED_OVERHEAD_BYTES - 1, 384) == MIN_BATCH_SIZE
        and recommended_batch_size(0, 384) == MIN_BATCH_SIZE
    )
    assert recommended_batch_size(FIXED_OVERHEAD_BYTES + 400 * 60_000, 0) == 60_000  # 0 channels counts as 1
    assert (
        recommended_batch_size(FIXED_OVERHEAD_BYTES + 32 * BYTES_PER_SAMPLE_CHANNEL * 20_000, 32) == 20_000
    )  # scales with channels


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as staged:
            (staged / "half.npy").write_bytes(b"x")
            raise RuntimeError("killed")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_directory(final) as staged:
        (staged / "a").write_text("1")
    with atomic_directory(final) as staged:
        (staged / "b").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b"] and len(list(tmp_path.iterdir())) == 1


def test_partition_keys_round_trip_and_refuse_unsafe_keys(tmp_path):
    ref = SessionRef("rig1", "mouse12_g0", dt.date(2026, 3, 2), "imec0")
    assert ref.key == "2026-03-02__rig1__mouse12_g0__imec0" and SessionRef.parse(ref.key) == ref
    assert ref.session_key == "2026-03-02__rig1__mouse12_g0"
    for bad in (
        "2026-03-02__rig1__mouse12_g0",
        "2026-03-02__rig1__..__imec0",
        "2026-03-02__rig1__a b__imec0",
        "2026-3-2__rig1__a__imec0",
        "2026-03-02__rig1__x/../../y__imec0",
    ):
        with pytest.raises(ValueError):
            SessionRef.parse(bad)
    for bad in ("with space", "ünïcode", "..", "a__b", "x;rm -rf", "$(id)"):
        with pytest.raises(SessionInputError, match="KS_PLATFORM_LANDING"):
            check_name(bad, tmp_path / "x")


def test_unsafe_folder_names_get_a_stable_derived_key_name_never_a_rename_request():
    assert key_name("mouse12_g0") == "mouse12_g0"
    derived = {
        name: key_name(name)
        for name in ("with space", "ünïcode run", "..", "a__b", "x;rm -rf", "$(id)", "Record Node 101")
    }
    for name, key in derived.items():
        assert is_safe_name(key), (name, key)
        assert key == key_name(name)  # stable
        SessionRef.parse(f"2026-03-02__rig1__{key}__imec0")
    assert len(set(derived.values())) == len(derived)  # unique
    assert derived["with space"].startswith("with-space-h")


def test_kilosort_probe_maps_rows_and_skips_sync():
    from ks_platform.core.probes import kilosort_probe
    from ks_platform.core.synthetic import np1_probe

    probe = np1_probe(32)
    ks = kilosort_probe(probe, tuple(range(33)), tuple(range(32)))
    assert ks["n_chan"] == 32 and ks["chanMap"].tolist() == list(range(32))
    assert np.all(ks["kcoords"] == 0)


def test_doctor_fails_when_a_program_kilosort_calls_is_missing(tmp_path, monkeypatch):
    """A slim image without `ps` installs fine and fails minutes into the first sort: doctor says so up front."""
    from ks_platform.core.doctor import healthy, report, run_checks

    assert healthy(run_checks(tmp_path, backend="cpu"))
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no programs at all
    checks = run_checks(tmp_path, backend="cpu")
    assert not healthy(checks)
    assert "[FAIL] program ps: not on PATH" in report(checks) and "apt-get install procps" in report(checks)


def test_host_doctor_job_reports_each_check_and_fails_on_a_missing_program(tmp_path, monkeypatch):
    import dagster as dg

    from ks_platform.definitions import build_definitions
    from ks_platform.defs.resources import PlatformResource

    platform = PlatformResource(store_root=str(tmp_path / "store"), landing_roots=f"rig1={tmp_path}", backend="cpu")
    job = build_definitions(platform, sensors=[]).resolve_job_def("host_doctor")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance)
        assert result.success
        [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        rows = output.event_specific_data.metadata["checks"].value.records
        assert {"import kilosort", "program ps", "compute backend", "kernel on device", "free disk in store"} <= {
            r.data["check"] for r in rows
        }
        # nothing goes through an IO manager (a step container could not write the orchestrator's DAGSTER_HOME)
        assert not [e for e in result.all_events if e.event_type_value == "HANDLED_OUTPUT"]
        monkeypatch.setenv("PATH", str(tmp_path))
        failed = job.execute_in_process(instance=instance, raise_on_error=False)
        assert not failed.success
        [message] = [
            e.event_specific_data.error.message for e in failed.all_events if e.event_type_value == "STEP_FAILURE"
        ]
        assert "is not ready to sort" in message and "program ps" in message


def test_landing_root_problems_name_each_root_and_the_fix(tmp_path):
    from ks_platform.core.discovery import landing_root_problems
    from ks_platform.core.doctor import report, run_checks

    good, afile = tmp_path / "good", tmp_path / "afile"
    good.mkdir()
    afile.write_text("x")
    roots = {"rig1": good, "rig__2": good, "gone": tmp_path / "gone", "file": afile}
    problems = landing_root_problems(roots, good / "store")
    assert len(problems) == 5, problems
    assert all("Fix:" in p for p in problems)
    for needle in (
        "rig1=",
        "rig__2=",
        "gone=",
        "file=",
        "does not exist",
        "is a file",
        "cannot be part of a partition key",
        "lies inside",
    ):
        assert any(needle in p for p in problems), (needle, problems)
    assert landing_root_problems({"rig1": good}, tmp_path / "store") == []
    text = report(run_checks(tmp_path / "store", backend="cpu", landing_roots=roots))
    assert "[warn] landing roots:" in text and "does not exist" in text


def test_cli_instance_without_dagster_home_uses_the_projects_dagster_yaml(tmp_path, monkeypatch):
    from ks_platform.cli import pipeline_commands

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    instance = pipeline_commands._instance()
    try:
        written = tmp_path / "data" / "dagster_home" / "dagster.yaml"
        assert written.read_text() == pipeline_commands.PROJECT_DAGSTER_YAML.read_text()
        assert "max_concurrent_runs: 4" in written.read_text()
    finally:
        instance.dispose()
        monkeypatch.delenv("DAGSTER_HOME", raising=False)

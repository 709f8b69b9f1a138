"""Fast unit tests of the domain core (no Kilosort run)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from ks_platform.core.errors import SessionInputError
from ks_platform.core.hardware import recommended_batch_size
from ks_platform.core.sessions import SessionRef, check_name
from ks_platform.core.settings import effective_settings, validate_overrides
from ks_platform.core.store import atomic_directory


def test_settings_validation_against_kilosort_table(tmp_path):
    path = tmp_path / "kilosort4-settings.json"
    assert validate_overrides({"batch_size": 30000, "Th_universal": 8}, path) == {"batch_size": 30000, "Th_universal": 8.0}
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
    assert a.params_hash == effective_settings(33, 30000.0, "generic", {"nblocks": 0}, platform_defaults={"nblocks": 5, "Th_learned": 7.0}).params_hash


def test_batch_size_rule_reproduces_lab_hand_tuning():
    assert recommended_batch_size(None, 384) == 60_000  # CPU keeps Kilosort's default
    assert 4_000 <= recommended_batch_size(1 * 1024**3, 384) <= 5_000  # the lab's 1 GB laptop GPU
    assert recommended_batch_size(80 * 1024**3, 384) == 60_000
    assert recommended_batch_size(8 * 1024**3, 384) > recommended_batch_size(4 * 1024**3, 384)
    assert recommended_batch_size(100 * 1024**2, 384) == 3_000  # floor


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


def test_partition_keys_round_trip_and_refuse_unsafe_names(tmp_path):
    ref = SessionRef("rig1", "mouse12_g0", dt.date(2026, 3, 2))
    assert ref.key == "2026-03-02__rig1__mouse12_g0" and SessionRef.parse(ref.key) == ref
    for bad in ("with space", "ünïcode", "..", "a__b", "x;rm -rf", "$(id)"):
        with pytest.raises(SessionInputError, match="rename the folder"):
            check_name(bad, tmp_path / "x")


def test_kilosort_probe_maps_rows_and_skips_sync():
    from ks_platform.core.probes import kilosort_probe
    from ks_platform.core.synthetic import np1_probe

    probe = np1_probe(32)
    ks = kilosort_probe(probe, tuple(range(33)), tuple(range(32)))
    assert ks["n_chan"] == 32 and ks["chanMap"].tolist() == list(range(32))
    assert np.all(ks["kcoords"] == 0)

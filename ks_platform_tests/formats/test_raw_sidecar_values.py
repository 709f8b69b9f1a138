"""Every value of a raw-binary sidecar is validated before use: one clear error naming the sidecar, the key and the fix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ks_platform.core.discovery import discover
from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import open_recording

GOOD = {
    "sampling_frequency": 30000.0,
    "n_channels": 4,
    "dtype": "int16",
    "uv_per_bit": 0.195,
    "recording_date": "2026-03-02",
}


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("sampling_frequency", float("nan"), "sampling_frequency must be a finite number"),
        ("sampling_frequency", float("inf"), "sampling_frequency must be a finite number"),
        ("sampling_frequency", -30000, "sampling_frequency must be a finite number"),
        ("sampling_frequency", 0, "sampling_frequency must be a finite number"),
        ("sampling_frequency", "30 kHz", "sampling_frequency must be a finite number"),
        ("n_channels", "four", "n_channels must be a whole number"),
        ("n_channels", 0, "n_channels must be a whole number"),
        ("n_channels", 4.5, "n_channels must be a whole number"),
        ("n_channels", True, "n_channels must be a whole number"),
        ("dtype", "float128", "not a sample type"),
        ("dtype", "object", "not a sample type"),
        ("dtype", ">i2", "not a sample type"),
        ("dtype", 16, "not a sample type"),
        ("uv_per_bit", float("nan"), "uv_per_bit must be a finite number"),
        ("uv_per_bit", -0.195, "uv_per_bit must be a finite number"),
        ("recording_date", 20260302, "recording_date must be a YYYY-MM-DD string"),
        ("sorting_channels", "0-3", "sorting_channels must be a non-empty list"),
        ("sorting_channels", [], "sorting_channels must be a non-empty list"),
        ("probe_file", 5, "probe_file must be a file name"),
    ],
)
def test_a_bad_sidecar_value_is_one_clear_error_and_the_good_session_beside_it_is_found(tmp_path, key, value, problem):
    for name, sidecar in (("bad", {**GOOD, key: value}), ("good", GOOD)):
        folder = tmp_path / "landing" / name
        folder.mkdir(parents=True)
        np.zeros((300, 4), np.int16).tofile(folder / "rec.bin")
        (folder / "rec.json").write_text(json.dumps(sidecar))
    with pytest.raises(SessionInputError, match=problem) as caught:
        open_recording(tmp_path / "landing" / "bad")
    assert caught.value.path.name == "rec.json" and caught.value.fix
    found, rejected = discover({"rig1": tmp_path / "landing"})
    assert [f.folder.name for f in found] == ["good"] and [r.folder.name for r in rejected] == ["bad"]

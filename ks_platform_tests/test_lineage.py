"""Lineage (issue #4): every sorted_units and phy_bundle materialization says how the sorting was made."""

from __future__ import annotations

import dagster as dg

from ks_platform.core.lineage import git_commit, lineage_record
from ks_platform.core.names import IMAGE_DIGEST_ENV, IMAGE_ENV
from ks_platform.core.store import read_json
from ks_platform.defs.lineage_metadata import LINEAGE_KEYS


def _value(entry):
    return getattr(entry, "value", getattr(entry, "text", entry))


def test_sorted_units_and_phy_bundle_materializations_carry_lineage(sorted_workspace):
    ws, key, result = sorted_workspace
    assert result.success
    lineage = read_json(ws.store(key).sorting_dir / "lineage.json")
    binary = read_json(ws.store(key).binary_dir / "binary.json")
    events = {e.asset_key.path[-1]: e.materialization for e in result.get_asset_materialization_events()}
    for asset in ("sorted_units", "phy_bundle"):
        meta = events[asset].metadata
        missing = [k for k in LINEAGE_KEYS if k not in meta]
        assert not missing, (asset, missing)
        assert _value(meta["git_commit"]) == git_commit() and len(git_commit() or "") == 40
        assert _value(meta["kilosort_version"]) == lineage["versions"]["kilosort"] and _value(
            meta["kilosort_version"]
        ).startswith("4.")
        assert _value(meta["numpy_version"]) == lineage["versions"]["numpy"] and _value(
            meta["torch_version"]
        ).startswith("2.")
        assert _value(meta["backend"]) == "cpu" and _value(meta["device"]).startswith("cpu: ")
        assert _value(meta["input_checksum"]) == binary["checksum"]
        assert (
            _value(meta["params_hash"])
            == read_json(ws.store(key).sorting_dir / "effective_settings.json")["params_hash"]
        )
        assert _value(meta["seeds"]) == {"numpy": 1, "torch": 1, "torch_cuda": 1, "cluster_init_seed": 5}
        stages = {row.data["stage"]: row.data["seconds"] for row in meta["stage_seconds"].records}
        assert {"preproc", "drift", "clu", "postproc"} <= set(stages) and all(s >= 0 for s in stages.values())
        attempts = [row.data for row in meta["attempts"].records]
        assert [(a["batch_size"], a["outcome"]) for a in attempts] == [(60_000, "ok")]
        assert _value(meta["host"]) == lineage["host"]
    assert lineage["memory_plan"]["reason"].startswith("Kilosort's default batch_size on cpu")
    assert lineage["code_version"] == _value(events["sorted_units"].metadata["code_version"])


def test_lineage_names_the_container_image_when_set(monkeypatch):
    """The images (docker/) set these variables; results made in a container name the image and its digest."""
    monkeypatch.setenv(IMAGE_ENV, "ghcr.io/lab/ks-platform:cuda-1.0")
    monkeypatch.setenv(IMAGE_DIGEST_ENV, "sha256:" + "ab" * 32)
    record = lineage_record(params_hash="x")
    assert record["image"] == "ghcr.io/lab/ks-platform:cuda-1.0" and record["image_digest"].startswith("sha256:")
    assert set(record["versions"]) >= {"ks_platform", "kilosort", "torch", "spikeinterface", "numpy"}
    monkeypatch.delenv(IMAGE_ENV)
    monkeypatch.delenv(IMAGE_DIGEST_ENV)
    assert lineage_record()["image"] is None


def test_lineage_metadata_is_what_the_ui_renders():
    """Metadata values are Dagster types the UI renders (tables for stages and attempts)."""
    from ks_platform.defs.lineage_metadata import lineage_metadata

    meta = lineage_metadata(
        {
            "versions": {},
            "backend": {
                "backend": "rocm",
                "device_name": "AMD Radeon 680M",
                "hip_version": "6.2",
                "driver_version": "amdgpu 6.8",
            },
            "stage_seconds": {"preproc": 1.5},
            "attempts": [
                {"batch_size": 60000, "clear_cache": False, "outcome": "out of memory: …", "seconds": 2.0},
                {"batch_size": 30000, "clear_cache": True, "outcome": "ok", "seconds": 9.0},
            ],
        }
    )
    assert isinstance(meta["stage_seconds"], dg.TableMetadataValue) and len(meta["attempts"].records) == 2
    assert (
        meta["device"] == "rocm: AMD Radeon 680M"
        and _value(meta["gpu_driver"]) == "amdgpu 6.8"
        and _value(meta["hip_version"]) == "6.2"
    )

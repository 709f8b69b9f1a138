"""How a sorting was made, as Dagster metadata: one entry per lineage fact (shown on the asset's page)."""

from typing import Any

import dagster as dg

from ks_platform.defs.reporting import to_metadata_value

#: Metadata keys every ``sorted_units`` / ``phy_bundle`` materialization carries (tests check them).
LINEAGE_KEYS = (
    "sorter",
    "sorter_version",
    "ks_platform_version",
    "git_commit",
    "kilosort_version",
    "torch_version",
    "spikeinterface_version",
    "numpy_version",
    "backend",
    "device",
    "cuda_version",
    "hip_version",
    "gpu_driver",
    "host",
    "container_image",
    "image_digest",
    "params_hash",
    "input_checksum",
    "seeds",
    "stage_seconds",
    "attempts",
)


def lineage_metadata(lineage: dict[str, Any]) -> dict[str, Any]:
    """Flatten ``lineage.json`` (see ``core.lineage.lineage_record`` / ``core.sorting``) into metadata values."""
    versions = lineage.get("versions", {})
    backend = lineage.get("backend", {})
    attempts = lineage.get("attempts", [])
    stage_seconds = lineage.get("stage_seconds", {})
    sorter = lineage.get("sorter") or {"name": "kilosort4", "version": versions.get("kilosort")}  # older lineage
    return {
        "sorter": to_metadata_value(sorter.get("name")),
        "sorter_version": to_metadata_value(sorter.get("version")),
        "ks_platform_version": to_metadata_value(versions.get("ks_platform")),
        "git_commit": to_metadata_value(lineage.get("git_commit")),
        "kilosort_version": to_metadata_value(versions.get("kilosort")),
        "torch_version": to_metadata_value(versions.get("torch")),
        "spikeinterface_version": to_metadata_value(versions.get("spikeinterface")),
        "numpy_version": to_metadata_value(versions.get("numpy")),
        "backend": to_metadata_value(backend.get("backend")),
        "device": f"{backend.get('backend')}: {backend.get('device_name')}",
        "cuda_version": to_metadata_value(backend.get("cuda_version")),
        "hip_version": to_metadata_value(backend.get("hip_version")),
        "gpu_driver": to_metadata_value(backend.get("driver_version")),
        "host": to_metadata_value(lineage.get("host")),
        "container_image": to_metadata_value(lineage.get("image")),
        "image_digest": to_metadata_value(lineage.get("image_digest")),
        "params_hash": to_metadata_value(lineage.get("params_hash")),
        "input_checksum": to_metadata_value(lineage.get("input_checksum")),
        "seeds": dg.MetadataValue.json(lineage.get("seeds", {})),
        "stage_seconds": dg.MetadataValue.table(
            records=[
                dg.TableRecord({"stage": stage, "seconds": float(seconds)}) for stage, seconds in stage_seconds.items()
            ],
            schema=dg.TableSchema(columns=[dg.TableColumn("stage", "string"), dg.TableColumn("seconds", "float")]),
        ),
        "attempts": dg.MetadataValue.table(
            records=[
                dg.TableRecord(
                    {
                        "batch_size": int(a.get("batch_size") or 0),  # Kilosort's; 0 for other sorters
                        "clear_cache": bool(a.get("clear_cache", False)),
                        "outcome": str(a["outcome"]),
                        "seconds": float(a["seconds"]),
                    }
                )
                for a in attempts
            ],
            schema=dg.TableSchema(
                columns=[
                    dg.TableColumn("batch_size", "int"),
                    dg.TableColumn("clear_cache", "bool"),
                    dg.TableColumn("outcome", "string"),
                    dg.TableColumn("seconds", "float"),
                ]
            ),
        ),
    }

"""A real Dagster run worker in its own process, for fault tests that ``kill -9`` it.

    python -m ks_platform_tests.run_worker '{"store": ..., "landing": ..., "key": ..., "assets": [...], "zero_copy": true}'

Uses the instance in ``$DAGSTER_HOME`` (persistent SQLite), so a later worker sees what an earlier one recorded.
"""

from __future__ import annotations

import json
import sys

import dagster as dg


def main(argv: list[str]) -> int:
    from ks_platform.definitions import build_definitions
    from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME
    from ks_platform.defs.resources import PlatformResource

    config = json.loads(argv[0])
    platform = PlatformResource(
        store_root=config["store"],
        landing_roots=f"rig1={config['landing']}",
        backend="cpu",
        allow_zero_copy=config.get("zero_copy", True),
    )
    instance = dg.DagsterInstance.get()
    if config["key"] not in instance.get_dynamic_partitions(SESSIONS_PARTITIONS_NAME):
        instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, [config["key"]])
    job = build_definitions(platform).resolve_job_def("sort_session")
    selection = [dg.AssetKey(name) for name in config["assets"]] if config.get("assets") else None
    result = job.execute_in_process(
        partition_key=config["key"], instance=instance, raise_on_error=False, asset_selection=selection
    )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

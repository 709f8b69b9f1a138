"""Code location for ``bench/backfill_queue.py``: three 5-asset chains (as many assets as a session's pipeline) on one
dynamic partitions definition, differing only in their backfill policy. The assets never run (the queue is closed)."""

from __future__ import annotations

import os

import dagster as dg

SESSIONS = dg.DynamicPartitionsDefinition(name="bench_sessions")
CHUNK = int(os.environ.get("BENCH_CHUNK", "20"))
POLICIES = {
    "per_session": None,  # today's shape: one run per session
    "chunked": dg.BackfillPolicy.multi_run(max_partitions_per_run=CHUNK),
    "single_run": dg.BackfillPolicy.single_run(),
}
STEPS = ("recording", "probe", "sorted_units", "phy_bundle", "quality")


def _chain(shape: str, policy: dg.BackfillPolicy | None) -> list[dg.AssetsDefinition]:
    assets, previous = [], None
    for step in STEPS:
        deps = [dg.AssetKey([shape, previous])] if previous else []

        @dg.asset(
            name=step, key_prefix=[shape], group_name=shape, partitions_def=SESSIONS, backfill_policy=policy, deps=deps
        )
        def _step() -> None:
            return None

        assets.append(_step)
        previous = step
    return assets


defs = dg.Definitions(assets=[a for shape, policy in POLICIES.items() for a in _chain(shape, policy)])

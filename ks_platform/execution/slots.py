"""GPU/CPU slot accounting in the Dagster instance, so concurrent runs (and run workers) see the same slots.

Each :class:`~ks_platform.execution.placement.Slot` is a Dagster concurrency pool (``ks_platform/gpu/<host>/<id>``
with limit 1, ``ks_platform/cpu/<host>`` with the host's CPU slots). Claims go through the instance's event-log
storage (``claim_concurrency_slot``), which is transactional in SQLite and PostgreSQL, queues waiting steps in
order, and is visible in the UI's concurrency page. A step waiting for several candidate GPUs is queued on each
and keeps the first one it gets; the other queue entries are withdrawn at once. Dagster's run monitoring frees
the slots of a run that dies (``free_concurrency_slots_for_run``), so a crash does not leak a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import dagster as dg
import sqlalchemy.exc

from ks_platform.execution.placement import Placement, Slot


def claim_id(step_key: str, slot: Slot) -> str:
    """The claimant name for one step on one slot (distinct from the step key Dagster's own pools use)."""
    return f"{step_key}@{slot.key}"


class SlotLedger:
    """Claims and releases placement slots in a Dagster instance."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self._storage = instance.event_log_storage
        if not self._storage.supports_global_concurrency_limits:
            raise RuntimeError(
                "this Dagster instance's storage does not support concurrency slots: run `dagster instance migrate`"
            )

    def ensure_capacity(self, slots: Iterable[Slot]) -> None:
        """Make each slot's pool exist with the inventory's capacity (idempotent)."""
        for slot in slots:
            self.ensure_pool(slot.key, slot.capacity)

    def ensure_pool(self, pool: str, limit: int) -> bool:
        """Set a Dagster pool's limit (e.g. ``kilosort`` to the sort slots); True when this call changed it.

        Runs starting together may set the same pool at once: a unique-key clash is retried after re-reading it."""
        for attempt in range(3):
            if self._storage.get_concurrency_info(pool).slot_count == limit:
                return False
            try:
                self._storage.set_concurrency_slots(pool, limit)
                return True
            except sqlalchemy.exc.DBAPIError:
                if attempt == 2:
                    raise
                time.sleep(0.5)
        return False

    def try_claim(self, run_id: str, step_key: str, candidates: Sequence[Placement]) -> Placement | None:
        """Claim the first free candidate (queueing on the others); None when every candidate is busy."""
        for candidate in candidates:
            status = self._storage.claim_concurrency_slot(
                candidate.slot.key, run_id, claim_id(step_key, candidate.slot)
            )
            if status.is_claimed:
                self.withdraw(run_id, step_key, [other for other in candidates if other.slot != candidate.slot])
                return candidate
        return None

    def withdraw(self, run_id: str, step_key: str, placements: Iterable[Placement]) -> None:
        """Leave the queues of (or give back) these slots."""
        for placement in placements:
            self._storage.free_concurrency_slot_for_step(run_id, claim_id(step_key, placement.slot))

    def holders(self, slot: Slot) -> list[str]:
        """``run_id[:8]/step`` of whoever holds the slot now (for the wait message)."""
        info = self._storage.get_concurrency_info(slot.key)
        return [f"run {claim.run_id[:8]} {claim.step_key.split('@')[0]}" for claim in info.claimed_slots]

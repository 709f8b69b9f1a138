"""GPU/CPU slot accounting in the Dagster instance, so concurrent runs (and run workers) see the same slots.

Each :class:`~ks_platform.execution.placement.Slot` is a Dagster concurrency pool (``ks_platform/gpu/<host>/<id>``
with limit 1, ``ks_platform/cpu/<host>`` with the host's CPU slots). Claims go through the instance's event-log
storage (``claim_concurrency_slot``), which is transactional in SQLite and PostgreSQL, queues waiting steps in
order, and is visible in the UI's concurrency page. A step waiting for several candidate GPUs is queued on each
and keeps the first one it gets; the other queue entries are withdrawn at once. Dagster's run monitoring frees
the slots of a run that dies (``free_concurrency_slots_for_run``), so a crash does not leak a GPU.

Dagster's claim picks a free slot row and then writes the claimant into it in two statements, so two processes that
claim the same pool at the same instant can both be told CLAIMED for the one slot (seen in test_parallel_sorts: two
runs started together both sorted on GPU 0). The ledger therefore serializes the claims of one slot: a
transaction-scoped advisory lock on PostgreSQL, an ``flock`` on a file in the instance's folder otherwise (SQLite: one
host).
"""

from __future__ import annotations

import fcntl
import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

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
        self._postgres = type(self._storage).__module__.startswith("dagster_postgres")
        self._lock_dir = Path(instance.root_directory) if not self._postgres else None

    @contextmanager
    def _claims_serialized(self, pool: str) -> Iterator[None]:
        """Hold a lock that every ledger claiming ``pool`` takes (see the module docstring)."""
        key = f"ks_platform/slot-claim/{pool}"
        if self._postgres:
            lock_id = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
            with self._storage.index_transaction() as conn:  # released when this transaction ends
                conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
                yield
            return
        assert self._lock_dir is not None
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        with open(self._lock_dir / ".ks_platform_slot_claims.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

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
            with self._claims_serialized(candidate.slot.key):
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

"""The platform's code location with Dagster's stock multiprocess executor (``spawn``: every step process imports
Dagster, the code location and the sorting stack itself) — the baseline of ``bench/backfill_busy.py --executor spawn``."""

import dagster as dg

from ks_platform.definitions import build_definitions

defs = build_definitions(executor=dg.multiprocess_executor)

"""The platform's code location with the executor it had before issue #27: Dagster's own multiprocess executor with
steps forked from the preloaded forkserver, whose run loops without sleeping while its sort waits for the
``kilosort`` pool — the baseline of ``bench/waiting_sessions.py``."""

import dagster as dg

from ks_platform.core.names import STEP_PRELOAD_MODULES
from ks_platform.definitions import build_definitions

stock_forkserver = dg.multiprocess_executor.configured(
    {"start_method": {"forkserver": {"preload_modules": list(STEP_PRELOAD_MODULES)}}}, name="multiprocess"
)
defs = build_definitions(executor=stock_forkserver)

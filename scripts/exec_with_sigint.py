"""``exec_with_sigint.py PROGRAM ARGS…``: run PROGRAM with SIGINT at its default.

A shell's background job (``&``, nohup, a service) starts with SIGINT ignored, and Dagster gives SIGTERM the SIGINT
handler, so a ``dagster dev`` started that way would stop on neither. ``make dev`` and ``scripts/executor_dev.sh``
start Dagster through this.
"""

import os
import signal
import sys

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execv(sys.argv[1], sys.argv[1:])

"""Run every benchmark with the command BENCHMARKS.md names for it (`make bench`), one after the other.

    .venv/bin/python bench/run_all.py [--only platform_overhead conversion sensor_tick container_overhead]

Each script measures its baseline in the same run and appends its raw rows to ``bench/results/``; together they
take about an hour on 2 cores. Run them on a quiet machine: other jobs on the cores skew the Kilosort timings.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent

#: name → the arguments BENCHMARKS.md gives for it.
BENCHMARKS: dict[str, list[str]] = {
    "platform_overhead": ["--duration", "60"],
    "conversion": ["--sizes-gb", "1", "4", "--repeats", "5"],
    "sensor_tick": ["--sessions", "10000", "--repeats", "7"],
    "container_overhead": ["--duration", "15", "--pairs", "2"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=list(BENCHMARKS))
    args = parser.parse_args()
    failed = []
    for name in args.only:
        command = [sys.executable, str(BENCH / f"{name}.py"), *BENCHMARKS[name]]
        print(f"== {' '.join(command)}", flush=True)
        if subprocess.run(command).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

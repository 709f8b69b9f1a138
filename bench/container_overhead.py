"""Benchmark (issue #5): the sort step in the ``ks-platform:cpu`` container vs in-process, and container start latency.

Same session, same command (``ks-platform sort SESSION --out … --backend cpu --quiet``), run with the host's
virtualenv (in-process baseline: no container) and inside the image (``docker run --rm --network none``, landing
mounted read-only, non-root user), in ABBA order (host, container, container, host for ``--pairs 2``) so slow
drifts of a shared machine cancel out. Per run: wall time of the whole command and Kilosort's own time
(``sort_seconds`` in sorting_summary.json), so the container's cost separates from Kilosort's. Start latency:
``docker run --rm IMAGE --help`` vs ``.venv/bin/ks-platform --help``, median of ``--starts`` runs each.
Load average before/after is recorded (the machine may be shared). Results are appended to
bench/results/container_overhead.json and printed as a Markdown table for BENCHMARKS.md.

    .venv/bin/python bench/container_overhead.py [--duration 15] [--pairs 1] [--starts 10] [--image ks-platform:cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session  # noqa: E402
from ks_platform_tests import docker_support  # noqa: E402

HOST_CLI = Path(sys.executable).parent / "ks-platform"


def _timed_run(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return elapsed


def _sort_host(session: Path, out: Path) -> float:
    return _timed_run([str(HOST_CLI), "sort", str(session), "--out", str(out), "--backend", "cpu", "--quiet"])


def _sort_container(image: str, session: Path, out: Path, digest: str) -> float:
    out.mkdir(parents=True)
    os.chmod(out, 0o777)  # the image's user (uid 1000) writes here
    return _timed_run([
        "docker", "run", "--rm", "--network", "none", "--user", "1000:1000",
        "-v", f"{session.parent}:/data/landing:ro", "-v", f"{out}:/data/out",
        "-e", f"KS_PLATFORM_IMAGE_DIGEST={digest}",
        image, "sort", f"/data/landing/{session.name}", "--out", "/data/out/session", "--backend", "cpu", "--quiet",
    ])  # fmt: skip


def _kilosort_seconds(out: Path) -> float:
    """Kilosort's own runtime as its ops report it (the sorting summary's ``stage_seconds.runtime``)."""
    return float(json.loads((out / "sorting" / "sorting_summary.json").read_text())["stage_seconds"]["runtime"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of the synthetic 32-channel session")
    parser.add_argument("--pairs", type=int, default=1, help="host/container pairs, ABBA order")
    parser.add_argument("--starts", type=int, default=10, help="start-latency repetitions")
    parser.add_argument("--image", default=docker_support.CPU_IMAGE)
    args = parser.parse_args()
    docker_support.docker_engine()
    if args.image == docker_support.CPU_IMAGE:
        docker_support.cpu_image()
    digest = docker_support.image_id(args.image)
    load_before = os.getloadavg()

    starts_container = [
        _timed_run(["docker", "run", "--rm", "--network", "none", args.image, "--help"]) for _ in range(args.starts)
    ]
    starts_host = [_timed_run([str(HOST_CLI), "--help"]) for _ in range(args.starts)]

    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        session = make_spikeglx_session(
            tmp / "landing" / "bench_session", DemoSessionSpec(duration_s=args.duration, seed=1)
        )
        order = [
            kind
            for pair in range(args.pairs)
            for kind in (("host", "container") if pair % 2 == 0 else ("container", "host"))
        ]
        for index, kind in enumerate(order):
            out = tmp / f"out-{index}-{kind}"
            wall = _sort_host(session, out) if kind == "host" else _sort_container(args.image, session, out, digest)
            result = out / "session" if kind == "container" else out
            runs.append({"kind": kind, "wall_s": round(wall, 2), "kilosort_s": _kilosort_seconds(result)})
            print(json.dumps(runs[-1]), flush=True)
        first = {
            kind: next(tmp / f"out-{i}-{k}" for i, k in enumerate(order) if k == kind) for kind in ("host", "container")
        }
        import numpy as np

        identical = np.array_equal(
            np.load(first["host"] / "sorting" / "spike_times.npy"),
            np.load(first["container"] / "session" / "sorting" / "spike_times.npy"),
        )
        shutil.rmtree(tmp / "landing")

    def median(kind: str, field: str) -> float:
        return statistics.median(r[field] for r in runs if r["kind"] == kind)

    record = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "image": args.image,
        "image_digest": digest,
        "duration_s": args.duration,
        "runs": runs,
        "sort_wall_ratio_container_over_host": round(median("container", "wall_s") / median("host", "wall_s"), 3),
        "kilosort_ratio_container_over_host": round(
            median("container", "kilosort_s") / median("host", "kilosort_s"), 3
        ),
        "container_overhead_outside_kilosort_s": round(
            (median("container", "wall_s") - median("container", "kilosort_s"))
            - (median("host", "wall_s") - median("host", "kilosort_s")),
            2,
        ),
        "start_container_median_s": round(statistics.median(starts_container), 3),
        "start_host_cli_median_s": round(statistics.median(starts_host), 3),
        "start_ratio_container_over_host": round(
            statistics.median(starts_container) / statistics.median(starts_host), 3
        ),
        "starts": args.starts,
        "spike_times_identical": bool(identical),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    results = REPO / "bench" / "results" / "container_overhead.json"
    results.parent.mkdir(exist_ok=True)
    history = json.loads(results.read_text()) if results.exists() else []
    results.write_text(json.dumps([*history, record], indent=1) + "\n")
    print(json.dumps(record, indent=1))
    print("\n| measure | container | in-process (host venv) | ratio |\n|---|---|---|---|")
    print(
        f"| `ks-platform sort` wall, median (s) | {median('container', 'wall_s'):.1f} | {median('host', 'wall_s'):.1f} "
        f"| {record['sort_wall_ratio_container_over_host']} |"
    )
    print(
        f"| Kilosort inside it, median (s) | {median('container', 'kilosort_s'):.1f} | "
        f"{median('host', 'kilosort_s'):.1f} | {record['kilosort_ratio_container_over_host']} |"
    )
    print(
        f"| start: `--help`, median of {args.starts} (s) | {record['start_container_median_s']} | "
        f"{record['start_host_cli_median_s']} | {record['start_ratio_container_over_host']} |"
    )


if __name__ == "__main__":
    main()

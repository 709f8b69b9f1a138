"""Benchmark (issue #2): sort the same ≥60 s recording through the platform and with a bare run_kilosort.

Both run in this process on the same binary, probe and settings, in an ABBA order (bare, platform, platform,
bare, … for ``--pairs`` > 1) so that slow drifts of the machine cancel out. Wall time and process CPU time are
recorded for each run; the ratio platform / bare (medians) is printed and appended to
bench/results/platform_overhead.json. Goal: ≤ 1.03.

    .venv/bin/python bench/platform_overhead.py --duration 60 [--pairs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import dagster as dg
import torch
from kilosort import run_kilosort

from ks_platform.core.formats import open_recording
from ks_platform.core.names import SESSIONS_PARTITIONS_NAME, SORT_JOB_NAME, SUMMARY_FILE
from ks_platform.core.probes import kilosort_probe, probe_for_recording
from ks_platform.core.sessions import SessionRef
from ks_platform.core.store import read_json
from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session
from ks_platform.defs.resources import PlatformResource


def _timed(fn) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--units", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=1, help="bare/platform pairs, run in ABBA order")
    args = parser.parse_args()
    from ks_platform.definitions import build_definitions

    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
        tmp = Path(tmp)
        spec = DemoSessionSpec(duration_s=args.duration, n_channels=args.channels, n_units=args.units, seed=1)
        folder = make_spikeglx_session(tmp / "landing" / "bench_session", spec)
        source = open_recording(folder)
        probe, _ = probe_for_recording(source)
        ks_probe = kilosort_probe(probe, tuple(range(source.n_channels)), source.sorting_channels)
        platform = PlatformResource(
            store_root=str(tmp / "store"), landing_roots=f"rig1={tmp / 'landing'}", backend="cpu"
        )
        key = SessionRef("rig1", folder.name, spec.recording_date, "imec0").key
        instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, [key])
        job = build_definitions(platform, sensors=[]).resolve_job_def(SORT_JOB_NAME)
        # The five assets of issue #2 and their checks; unit_metrics (SpikeInterface quality metrics, issue #4) is
        # extra analysis a bare run_kilosort does not do either.
        five_assets = [
            dg.AssetKey(name)
            for name in ("raw_recording", "probe_map", "recording_binary", "sorted_units", "phy_bundle")
        ]
        summary_path = tmp / "store" / "sessions" / key / "sorting" / SUMMARY_FILE

        def bare(i: int) -> float:
            ops, *_ = run_kilosort(
                settings={"n_chan_bin": source.n_channels, "fs": source.sampling_frequency},
                probe=ks_probe,
                filename=source.zero_copy_path,
                results_dir=tmp / f"bare{i}",
                data_dtype="int16",
                device=torch.device("cpu"),
            )
            return float(ops["runtime"])

        def through_platform(i: int) -> float:
            result = job.execute_in_process(partition_key=key, instance=instance, asset_selection=five_assets)
            assert result.success
            return float(read_json(summary_path)["stage_seconds"]["runtime"])

        runs: dict[str, list[tuple[float, float, float]]] = {"bare": [], "platform": []}
        order = []
        for pair in range(args.pairs):
            order += (
                [("bare", bare), ("platform", through_platform)]
                if pair % 2 == 0
                else [("platform", through_platform), ("bare", bare)]
            )
        for i, (name, fn) in enumerate(order):
            wall, cpu, kilosort_internal = _timed(lambda fn=fn, i=i: fn(i))
            runs[name].append((wall, cpu, kilosort_internal))
            print(
                f"[{i + 1}/{len(order)}] {name}: wall {wall:.1f} s, cpu {cpu:.1f} s, Kilosort's own runtime "
                f"{kilosort_internal:.1f} s",
                flush=True,
            )

    def median(name: str, index: int) -> float:
        return statistics.median(run[index] for run in runs[name])

    bare_wall, platform_wall = median("bare", 0), median("platform", 0)
    row = {
        "recording": f"{args.duration:g} s x {args.channels} ch x {args.units} units (SpikeGLX, zero-copy)",
        "order": "".join("A" if name == "bare" else "B" for name, _ in order),
        "bare_run_kilosort_s": round(bare_wall, 1),
        "platform_all_five_assets_s": round(platform_wall, 1),
        "ratio": round(platform_wall / bare_wall, 3),
        "cpu_ratio": round(median("platform", 1) / median("bare", 1), 3),
        "kilosort_internal_bare_s": round(median("bare", 2), 1),
        "kilosort_internal_platform_s": round(median("platform", 2), 1),
        "platform_added_s": round(platform_wall - median("platform", 2), 1),
        "platform_added_fraction_of_bare": round((platform_wall - median("platform", 2)) / bare_wall, 3),
        "runs": runs,
        "host": f"{torch.get_num_threads()} torch threads, CPU",
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    with open(out / "platform_overhead.json", "a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()

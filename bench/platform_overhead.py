"""Benchmark (issue #2): sort the same ≥60 s recording through the platform and with a bare run_kilosort.

Both runs happen in this process, one after the other, on the same binary, probe and settings; the
ratio platform / bare is printed and appended to bench/results/platform_overhead.json. Goal: ≤ 1.03.

    .venv/bin/python bench/platform_overhead.py --duration 60
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import dagster as dg
import torch
from kilosort import run_kilosort

from ks_platform.core.formats import open_recording
from ks_platform.core.probes import kilosort_probe, probe_for_recording
from ks_platform.core.sessions import SessionRef
from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session
from ks_platform.defs.partitions import SESSIONS_PARTITIONS_NAME
from ks_platform.defs.resources import PlatformResource


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--units", type=int, default=20)
    args = parser.parse_args()
    from ks_platform.definitions import build_definitions

    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
        tmp = Path(tmp)
        spec = DemoSessionSpec(duration_s=args.duration, n_channels=args.channels, n_units=args.units, seed=1)
        folder = make_spikeglx_session(tmp / "landing" / "bench_session", spec)
        source = open_recording(folder)
        probe, _ = probe_for_recording(source)
        ks_probe = kilosort_probe(probe, tuple(range(source.n_channels)), source.sorting_channels)

        t0 = time.perf_counter()
        bare_ops, *_ = run_kilosort(settings={"n_chan_bin": source.n_channels, "fs": source.sampling_frequency}, probe=ks_probe, filename=source.zero_copy_path, results_dir=tmp / "bare", data_dtype="int16", device=torch.device("cpu"))
        bare = time.perf_counter() - t0

        platform = PlatformResource(store_root=str(tmp / "store"), landing_roots=f"rig1={tmp / 'landing'}", backend="cpu")
        key = SessionRef("rig1", folder.name, spec.recording_date).key
        instance.add_dynamic_partitions(SESSIONS_PARTITIONS_NAME, [key])
        job = build_definitions(platform).resolve_job_def("sort_session")
        t0 = time.perf_counter()
        result = job.execute_in_process(partition_key=key, instance=instance)
        through_platform = time.perf_counter() - t0
        assert result.success
        from ks_platform.core.store import read_json

        summary = read_json(tmp / "store" / "sessions" / key / "sorting" / "sorting_summary.json")
        platform_kilosort = float(summary["stage_seconds"]["runtime"])

    row = {
        "recording": f"{args.duration:g} s x {args.channels} ch x {args.units} units (SpikeGLX, zero-copy)",
        "bare_run_kilosort_s": round(bare, 1),
        "platform_all_five_assets_s": round(through_platform, 1),
        "ratio": round(through_platform / bare, 3),
        "kilosort_internal_bare_s": round(float(bare_ops["runtime"]), 1),
        "kilosort_internal_platform_s": round(platform_kilosort, 1),
        "platform_added_s": round(through_platform - platform_kilosort, 1),
        "platform_added_fraction_of_bare": round((through_platform - platform_kilosort) / bare, 3),
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

"""Benchmark: bombcell's labels and UnitMatch's tracks against the ground truth of generated sessions.

Labels: a synthetic SpikeGLX session per probe shape (``core/synthetic.py``: SpikeInterface's generator, NP1.0
geometry) is sorted by the platform's pipeline functions (probe map, binary, Kilosort 4 on the CPU, Phy folder);
bombcell then labels it twice: with its defaults, and with the short-recording settings the test sessions use
(``minNumSpikes``, ``keepUncertainRPVUnits``). Each Kilosort cluster is matched to the truth (SpikeInterface,
agreement ≥ 0.5): a well-detected unit is one matched at accuracy ≥ 0.8, a false unit a cluster matched to no neuron.

Tracks: the synthetic chronic pair of ``test_unit_tracks.py`` (same neurons on two days, 6 µm of drift, 2 lost, 2 new)
sorted, labelled (``label_session``) and tracked (``track_subject``, UnitMatch) in one store; a predicted match is two
clusters of one track on two days, a true match two clusters matched to the same neuron.

    .venv/bin/python bench/labels_truth.py                        # 32 ch × 15 s, 384 ch × 5 s, the chronic pair
    .venv/bin/python bench/labels_truth.py --shapes 32:10:15 --no-chronic
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHORT = {"minNumSpikes": 100, "keepUncertainRPVUnits": True}
#: As in ks_platform_tests/test_unit_tracks.py.
CHRONIC_CONFIG = {"bombcell": {"minNumSpikes": 50, "keepUncertainRPVUnits": True}, "unitmatch": {"units": "all"}}
WORK = Path("/tmp/ks_labels_truth")


def sort(session: Path, store) -> float:
    from ks_platform.core import pipeline
    from ks_platform.core.formats import scan_session

    scan = scan_session(session)
    pipeline.observe_raw_recording(scan, store)
    pipeline.build_probe_map(scan, store)
    pipeline.build_recording_binary(scan, store)
    sorted_ = pipeline.sort_session(scan, store, backend="cpu")
    pipeline.export_phy(store, scan)
    return float(sorted_.metadata["sort_seconds"])


def truth_of(session: Path, store):
    from ks_platform.core.ground_truth import matched_truth
    from ks_platform.core.store import read_json

    return matched_truth(
        session / "ground_truth.json",
        np.load(store.sorting_dir / "spike_times.npy"),
        np.load(store.sorting_dir / "spike_clusters.npy"),
        read_json(store.binary_dir / "binary.json")["sampling_frequency"],
    )


def label_rows(channels: int, units: int, duration: float, rate: float, seed: int) -> list[dict]:
    from ks_platform.core import unit_labels
    from ks_platform.core.ground_truth import score_labels
    from ks_platform.core.session_config import ProbeConfig
    from ks_platform.core.store import SessionStore
    from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session

    base = WORK / f"{channels}ch_{units}u_{duration:g}s"
    shutil.rmtree(base, ignore_errors=True)
    session, out = base / "session", base / "store"
    spec = DemoSessionSpec(duration_s=duration, n_channels=channels, n_units=units, seed=seed, firing_rate_hz=rate)
    make_spikeglx_session(session, spec)
    (session / "kilosort4-settings.json").write_text(json.dumps({"nblocks": 0}) + "\n")
    store = SessionStore.in_folder(out)
    kilosort_s = sort(session, store)
    clusters, accuracy = truth_of(session, store)
    rows = []
    for name, overrides in (("bombcell defaults", {}), ("short-recording settings", SHORT)):
        started = time.perf_counter()
        labels = unit_labels.label_units(store, ProbeConfig(bombcell=overrides), "neuropixels")
        step_s = time.perf_counter() - started
        score = score_labels(labels.labels, clusters, accuracy)
        rows.append(
            {
                "channels": channels,
                "duration_s": duration,
                "parameters": name,
                "truth_units": len(accuracy),
                "sorted_units": labels.summary["n_units"],
                **score.to_json(),
                "counts": labels.summary["counts"],
                "kilosort_s": round(kilosort_s, 1),
                "bombcell_s": labels.summary["seconds"],
                "step_s": round(step_s, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def chronic_row() -> dict:
    from ks_platform.core import pipeline, unit_tracks
    from ks_platform.core.formats import scan_session
    from ks_platform.core.ground_truth import score_tracks
    from ks_platform.core.sessions import SessionRef, key_name
    from ks_platform.core.store import SessionStore
    from ks_platform.core.synthetic import ChronicSpec, make_chronic_sessions

    spec = ChronicSpec(duration_s=10.0, n_neurons=14, seed=11)  # test_unit_tracks.CHRONIC
    base = WORK / "chronic"
    shutil.rmtree(base, ignore_errors=True)
    folders = make_chronic_sessions(base / "landing", spec)
    root = base / "store"
    truth, kilosort_s, label_s, keys = {}, [], [], []
    for day, folder in enumerate(folders):
        (folder / "kilosort4-settings.json").write_text(json.dumps({"nblocks": 0}) + "\n")
        (folder / "ks_session.json").write_text(json.dumps(CHRONIC_CONFIG) + "\n")
        scan = scan_session(folder)
        key = SessionRef("landing", key_name(folder.name), spec.start_date + dt.timedelta(days=day), "imec0").key
        store = SessionStore(root, key)
        kilosort_s.append(sort(folder, store))
        started = time.perf_counter()
        labelled = pipeline.label_session(store, scan)
        label_s.append(time.perf_counter() - started)
        truth[key], _ = truth_of(folder, store)
        keys.append(key)
    implant = labelled.metadata["track_key"]
    assert implant, labelled.metadata["tracking_problem"]
    started = time.perf_counter()
    pipeline.track_subject(root, implant)
    track_s = time.perf_counter() - started
    tracks = unit_tracks.load_tracks(root, implant)
    rows = [(r.session, int(r.cluster_id), int(r.track_id)) for r in tracks.table.itertuples()]
    score = score_tracks(rows, truth)
    row = {
        "pair": f"{spec.n_channels} ch × {spec.duration_s:g} s × 2 days, {spec.drift_um:g} µm drift, "
        f"{spec.lost_per_day} lost, {spec.new_per_day} new",
        "units_tracked": tracks.summary["n_units"],
        "tracks_across_days": tracks.summary["n_tracks_across_sessions"],
        "predicted_matches": score.predicted,
        "true_matches": score.true,
        "correct_matches": score.correct,
        "precision": round(score.precision, 3),
        "recall": round(score.recall, 3),
        "kilosort_s": [round(s, 1) for s in kilosort_s],
        "labels_step_s": [round(s, 1) for s in label_s],
        "unitmatch_step_s": round(track_s, 1),
        "unitmatch_version": tracks.summary["unitmatch_version"],
        "left_out": tracks.summary["left_out"],
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes", default="32:10:15,384:30:5", help="channels:units:seconds per probe shape, comma-separated"
    )
    parser.add_argument("--rate", type=float, default=12.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-chronic", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = ROOT / "bench" / "results" / f"labels_truth-{stamp}.json"
    path.parent.mkdir(exist_ok=True)
    result: dict = {
        "args": vars(args),
        "host": os.uname().nodename,
        "load_before": os.getloadavg(),
        "complete": False,
        "labels": [],
    }

    def save() -> None:  # after every section: a run stopped half-way keeps the rows it measured
        result["load_now"] = os.getloadavg()
        result["wall_s"] = round(time.perf_counter() - started, 1)
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")

    for shape in filter(None, args.shapes.split(",")):
        channels, units, seconds = shape.split(":")
        result["labels"] += label_rows(int(channels), int(units), float(seconds), args.rate, args.seed)
        save()
    if not args.no_chronic:
        result["tracks"] = chronic_row()
    result["complete"] = True
    save()
    print(
        "\n| probe | bombcell parameters | truth units | sorted | well-detected labelled GOOD | false units not GOOD "
        "| labels | Kilosort (CPU) | bombcell | labels step |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for r in result["labels"]:
        print(
            f"| {r['channels']} ch × {r['duration_s']:g} s | {r['parameters']} | {r['truth_units']} | "
            f"{r['sorted_units']} | {r['well_detected_good']} / {r['well_detected']} | "
            f"{r['false_units_not_good']} / {r['false_units']} | "
            f"{', '.join(f'{k} {v}' for k, v in sorted(r['counts'].items()))} | {r['kilosort_s']:.0f} s | "
            f"{r['bombcell_s']:.1f} s | {r['step_s']:.1f} s |"
        )
    if "tracks" in result:
        t = result["tracks"]
        print(
            f"\ntracks: {t['pair']}: precision {t['precision']:.2f} ({t['correct_matches']}/{t['predicted_matches']}), "
            f"recall {t['recall']:.2f} ({t['correct_matches']}/{t['true_matches']}), UnitMatch {t['unitmatch_step_s']} s"
        )
    print(f"wrote {path} ({result['wall_s']} s)")


if __name__ == "__main__":
    main()

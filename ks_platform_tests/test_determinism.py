"""Determinism (issue #4): `ks-platform determinism` sorts the canonical binary again on CPU and must find the
outputs bit-identical to the Dagster materialization's (one extra Kilosort run)."""

from __future__ import annotations

import json

import numpy as np

from ks_platform.cli import main
from ks_platform.core.determinism import compare_sortings
from ks_platform.core.names import SESSION_SETTINGS_FILE


def test_determinism_command_on_cpu_finds_identical_outputs(sorted_workspace, tmp_path, capsys):
    ws, key, result = sorted_workspace
    assert result.success
    store = ws.store(key)
    report_path = tmp_path / "report.json"
    code = main(
        [
            "determinism",
            "--binary",
            str(store.binary_dir),
            "--probe",
            str(store.probe_dir / "kilosort_probe.json"),
            "--device",
            "cpu",
            "--reference",
            str(store.sorting_dir),
            "--settings",  # the session's own settings, as the reference was sorted with them
            str(next(ws.landing.iterdir()) / SESSION_SETTINGS_FILE),
            "--workdir",
            str(tmp_path / "runs"),
            "--json",
            str(report_path),
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    print(
        json.dumps(
            {
                k: report[k]
                for k in ("device", "identical", "n_spikes", "n_clusters", "spikes_at_same_times", "sort_seconds")
            }
        )
    )
    assert code == 0, out
    assert report["identical"] is True and out.startswith("IDENTICAL on cpu")
    assert report["n_spikes"][0] == report["n_spikes"][1] > 0 and report["spikes_at_same_times"] == [1.0]
    assert {a["name"] for a in report["arrays"][0]} == {
        "spike_times.npy",
        "spike_clusters.npy",
        "amplitudes.npy",
        "templates.npy",
    }


def test_comparison_reports_what_differs(sorted_workspace, tmp_path):
    """A sorting with one spike moved and one template changed is reported as different, with by how much."""
    import shutil

    ws, key, _ = sorted_workspace
    sorting = ws.store(key).sorting_dir
    changed = tmp_path / "changed"
    shutil.copytree(sorting, changed)
    times = np.load(changed / "spike_times.npy")
    times[3] += 2
    np.save(changed / "spike_times.npy", times)
    templates = np.load(changed / "templates.npy")
    templates[0, 10, 0] += 0.25
    np.save(changed / "templates.npy", templates)
    diffs, shared = compare_sortings(sorting, changed)
    by_name = {d.name: d for d in diffs}
    assert by_name["spike_times.npy"].identical is False and by_name["spike_times.npy"].max_abs_diff == 2.0
    assert (
        by_name["templates.npy"].max_abs_diff == np.float32(0.25)
        or abs(by_name["templates.npy"].max_abs_diff - 0.25) < 1e-6
    )
    assert by_name["spike_clusters.npy"].identical and shared < 1.0


def test_bad_binary_folder_is_a_readable_error(tmp_path, capsys):
    code = main(["determinism", "--binary", str(tmp_path / "nope"), "--probe", str(tmp_path / "p.json"), "--quiet"])
    assert code == 2 and "binary.json" in capsys.readouterr().err

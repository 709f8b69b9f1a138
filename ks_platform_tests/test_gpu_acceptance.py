"""The GPU acceptance script (bench/gpu_acceptance.sh) in its CPU mode, so it cannot rot while no GPU is here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _names(path: Path) -> set[str]:
    """Normalized distribution names of a requirements-style list (comments and pins dropped)."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.sub(r"[-_.]+", "-", re.split(r"[=<>!~ ]", line, maxsplit=1)[0]).lower())
    return names


@pytest.fixture(scope="module")
def cpu_acceptance(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("acceptance")
    env = {**os.environ, "PYTHON": sys.executable}
    command = [
        "bash",
        str(REPO / "bench" / "gpu_acceptance.sh"),
        "run",
        "--mode",
        "cpu",
        "--out",
        str(out),
        "--bundle",
        str(out / "none"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    report_path = out / "acceptance.json"
    assert report_path.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads(report_path.read_text())


@pytest.mark.slow
def test_cpu_mode_sorts_twice_identically_and_meets_the_ground_truth_bar(cpu_acceptance):
    done, report = cpu_acceptance
    assert done.returncode == 0 and "ACCEPTED" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert report["mode"] == "cpu" and len(report["sorts"]) == 2
    assert all(row["backend"] == "cpu" and row["ground_truth_passed"] for row in report["sorts"])
    assert report["determinism"]["identical"], report["determinism"]  # CPU sorts are bit-identical
    assert {check["name"] for check in report["doctor"]}, "doctor ran"
    assert all(row["memory_plan"]["batch_size"] > 0 and row["rss_peak_bytes"] > 0 for row in report["sorts"])
    forked = report["forked_step"]  # the default executor's way of starting a step, using the device
    assert forked["ok"] and forked["device"] == "cpu" and "kilosort" in forked["inherited"], forked


@pytest.mark.slow
def test_the_bundle_and_the_node_image_hold_everything_the_run_imported(cpu_acceptance):
    _, report = cpu_acceptance
    provided = _names(REPO / "bench" / "gpu_bundle.txt") | _names(REPO / "bench" / "gpu_node_packages.txt")
    provided |= {"ks-platform", "torch"}  # the project travels as source; PyTorch is the node's own
    imported = {re.sub(r"[-_.]+", "-", name).lower() for name in report["imported_distributions"]}
    # Python's own backports that pip vendors into setuptools are no distributions a node needs.
    missing = sorted(imported - provided - {"backports-tarfile", "setuptools", "pip"})
    assert missing == [], f"add these to bench/gpu_bundle.txt (pinned as in the venv): {missing}"


def test_the_bundle_list_is_pinned_and_names_nothing_the_node_already_has():
    bundle = REPO / "bench" / "gpu_bundle.txt"
    lines = [line.strip() for line in bundle.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines and all("==" in line for line in lines), "every wheel of the bundle is pinned"
    assert _names(bundle) & _names(REPO / "bench" / "gpu_node_packages.txt") == set()

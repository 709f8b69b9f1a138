#!/usr/bin/env bash
# Regenerate docker/requirements.lock: resolve ks_platform[k8s] (+ setuptools, wheel for the image's install step)
# with pip, constrained to the versions installed in the dev virtualenv (.venv) -- the set the test suite runs -- so
# the images and the tests use the same versions. torch is left out: each backend brings its own build.
#   docker/relock.sh            (PYTHON=... to use another environment)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" -m pip freeze --exclude-editable | grep -Ev '^(-e|#)' >"$work/constraints.txt"
"$py" -m pip install --dry-run --ignore-installed --quiet --report "$work/report.json" -c "$work/constraints.txt" ".[k8s]" setuptools wheel
"$py" - "$work/report.json" docker/requirements.lock <<'PY'
import json, sys
report, lock = sys.argv[1:]
skip = {"torch", "ks-platform", "ks_platform", "triton"}
pins = sorted(
    (item["metadata"]["name"], item["metadata"]["version"])
    for item in json.load(open(report))["install"]
    if item["metadata"]["name"].lower() not in skip and not item["metadata"]["name"].lower().startswith("nvidia-")
)
header = [
    "# Runtime dependencies of ks_platform, pinned for the images (regenerate: docker/relock.sh).",
    "# torch is not here: each backend brings its own build (see docker/Dockerfile).",
]
open(lock, "w").write("\n".join(header + [f"{name}=={version}" for name, version in sorted(pins, key=lambda p: p[0].lower())]) + "\n")
print(f"{lock}: {len(pins)} pins")
PY

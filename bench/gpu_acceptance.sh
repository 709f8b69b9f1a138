#!/usr/bin/env bash
# GPU acceptance for an air-gapped node (PyTorch with CUDA preinstalled, no network).
#
#   bash bench/gpu_acceptance.sh bundle [DIR]           here: wheels of bench/gpu_bundle.txt into DIR (.gpu_bundle)
#   bash bench/gpu_acceptance.sh run [--mode gpu|cpu] --out DIR [--bundle DIR]
#                                                       on the node: install the bundle privately, then doctor,
#                                                       3 sorts, a 1 GiB capped sort, CPU vs GPU -> DIR/acceptance.json
# The project itself travels as source; the bundle is at most 64 MiB (checked here).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
limit_bytes=$((64 * 1024 * 1024))
command="${1:-}"; shift || true

case "$command" in
  bundle)
    dir="${1:-$here/.gpu_bundle}"
    python="${PYTHON:-$here/.venv/bin/python}"
    rm -rf "$dir" && mkdir -p "$dir"
    platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
               --platform manylinux2014_x86_64)
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${platforms[@]}" -d "$dir" -r "$here/bench/gpu_bundle.txt"
    size=$(du -sb "$dir" | cut -f1)
    echo "bundle: $(ls "$dir" | wc -l) wheels, $((size / 1024 / 1024)) MiB in $dir"
    if ((size > limit_bytes)); then echo "bundle is over 64 MiB" >&2; exit 1; fi
    ;;
  run)
    bundle="$here/.gpu_bundle"; args=()
    while (($#)); do
      case "$1" in --bundle) bundle="$2"; shift 2 ;; *) args+=("$1"); shift ;; esac
    done
    python="${PYTHON:-python3}"
    if [[ -d "$bundle" ]] && compgen -G "$bundle/*.whl" >/dev/null; then
      site="${TMPDIR:-/tmp}/ks_platform_site"
      "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$bundle"/*.whl
      export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    exec "$python" "$here/bench/gpu_acceptance.py" "${args[@]}"
    ;;
  *)
    echo "usage: $0 bundle [DIR] | run [--mode gpu|cpu] --out DIR [--bundle DIR]" >&2; exit 2 ;;
esac

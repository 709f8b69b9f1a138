#!/usr/bin/env bash
# System packages the test suite needs (run as root). Exits non-zero when they cannot be installed, and in CI
# (CI=true) when not root.
set -euo pipefail
need=()
# PostgreSQL server for the shared-instance tests (ks_platform_tests/postgres_support.py runs initdb/pg_ctl).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
# Docker engine + debootstrap for the offline base image (ks_platform_tests/docker_support.py starts dockerd).
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
# Chromium for the browser test of the UI (ks_platform_tests/test_ui_browser.py drives it with Playwright;
# Playwright's own browser download does not work offline, so the test points it at /usr/bin/chromium).
command -v chromium >/dev/null || need+=(chromium)
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "not root: install ${need[*]} yourself (the tests that need them fail in CI, skip elsewhere)" >&2
    [[ "${CI:-}" == "true" ]] && exit 1
    exit 0
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  echo "installed: ${need[*]}"
fi
# What the tests need must be there now: a failed install fails here, not as skipped tests later.
missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
for program in dockerd debootstrap chromium; do command -v "$program" >/dev/null || missing+=("$program"); done
if ((${#missing[@]})) && [[ $(id -u) -eq 0 ]]; then
  echo "could not install: ${missing[*]}" >&2
  exit 1
fi

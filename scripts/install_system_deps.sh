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
# Xvfb + the X/OpenGL libraries PyQt5's bundled Qt loads, for opening Phy's GUI headless
# (ks_platform_tests/test_phy_gui.py; Mesa's llvmpipe renders Phy's OpenGL views).
phy_gui=(xvfb libgl1 libegl1 libgl1-mesa-dri libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0 libxcb-icccm4
  libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xinerama0
  libxcb-xkb1)
for package in "${phy_gui[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || need+=("$package")
done
# SLURM (controller, node daemon, clients) + munge for the one-node test cluster (ks_platform_tests/slurm_support.py).
[[ -x /usr/sbin/slurmctld && -x /usr/sbin/slurmd ]] && command -v sbatch >/dev/null || need+=(slurm-wlm)
[[ -x /usr/sbin/munged ]] || need+=(munge)
# SLURM accounting (slurmdbd + MariaDB) for sacct once slurmctld forgot a job (ks_platform_tests/test_slurm_accounting.py
# starts both itself). Installed in their own apt-get call with service starts turned off (policy-rc.d).
accounting=()
[[ -x /usr/sbin/slurmdbd ]] && command -v sacct >/dev/null || accounting+=(slurmdbd)
[[ -x /usr/sbin/mariadbd ]] && command -v mariadb-install-db >/dev/null || accounting+=(mariadb-server)
# OpenSSH server for the ssh:// engine tests (ks_platform_tests/test_executor_remote.py starts sshd on a free port).
[[ -x /usr/sbin/sshd ]] && command -v ssh-keygen >/dev/null || need+=(openssh-server)
if ((${#need[@]} + ${#accounting[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "not root: install ${need[*]} ${accounting[*]} yourself (the tests that need them fail in CI, skip elsewhere)" >&2
    [[ "${CI:-}" == "true" ]] && exit 1
    exit 0
  fi
  apt-get update -qq
fi
if ((${#need[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  echo "installed: ${need[*]}"
fi
if ((${#accounting[@]})); then
  policy_added=false
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_added=true
  fi
  status=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${accounting[@]}" >/dev/null || status=$?
  [[ $policy_added == true ]] && rm -f /usr/sbin/policy-rc.d
  ((status == 0)) || exit "$status"
  echo "installed: ${accounting[*]}"
fi
# What the tests need must be there now: a failed install fails here, not as skipped tests later.
missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
for program in dockerd debootstrap chromium Xvfb sbatch squeue scontrol scancel sinfo sacct sacctmgr mariadb-install-db; do
  command -v "$program" >/dev/null || missing+=("$program")
done
for program in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged /usr/sbin/slurmdbd /usr/sbin/mariadbd; do [[ -x "$program" ]] || missing+=("$program"); done
[[ -x /usr/sbin/sshd ]] || missing+=(/usr/sbin/sshd)
for package in "${phy_gui[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})) && [[ $(id -u) -eq 0 ]]; then
  echo "could not install: ${missing[*]}" >&2
  exit 1
fi

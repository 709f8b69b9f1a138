#!/usr/bin/env bash
# Make a Docker engine available: install docker.io if dockerd is missing (root), start dockerd if it is not
# answering, wait for it. Idempotent; prints the engine version.
set -euo pipefail
if docker info >/dev/null 2>&1; then docker version --format 'docker engine {{.Server.Version}} already running'; exit 0; fi
if ! command -v dockerd >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]]; then echo "dockerd is not installed and this is not root: install docker.io" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if [[ $(id -u) -ne 0 ]]; then echo "the Docker engine is not running and this is not root: start it (systemctl start docker)" >&2; exit 1; fi
log=${DOCKERD_LOG:-/var/log/ks-platform-dockerd.log}
nohup dockerd >"$log" 2>&1 &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then docker version --format 'docker engine {{.Server.Version}} started'; exit 0; fi
  sleep 1
done
echo "dockerd did not answer within 60 s; see $log" >&2
tail -20 "$log" >&2
exit 1

#!/usr/bin/env bash
# Build the local base image offline (no registry can be pulled from here): a minimal Debian bookworm with
# python3 (and procps: Kilosort calls `ps`), made by debootstrap from the machine's own apt mirror, imported with `docker import`.
#   docker/make_base_image.sh [TAG]      (default ks-platform-base:bookworm; skipped when it exists)
set -euo pipefail
tag=${1:-ks-platform-base:bookworm}
if docker image inspect "$tag" >/dev/null 2>&1; then echo "base image $tag exists"; exit 0; fi
if ! command -v debootstrap >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
mirror=$( (grep -hsoE '^(URIs:|deb) *https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources || true) | grep -v security | awk 'NR==1 {print $NF}')
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d /tmp/ks-platform-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm from $mirror into $root"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,procps bookworm "$root" "$mirror" >/tmp/debootstrap.log 2>&1 || { tail -30 /tmp/debootstrap.log >&2; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$tag"
docker image inspect "$tag" --format "base image $tag: {{.Id}} {{.Size}} bytes"

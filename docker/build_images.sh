#!/usr/bin/env bash
# Build the ks_platform images:  docker/build_images.sh [cpu|cuda|rocm ...]   (default: cpu)
#   - starts/installs the Docker engine if needed (scripts/start_docker.sh)
#   - cpu : from the local offline base (docker/make_base_image.sh) unless BASE_IMAGE is set; torch = the local
#           CPU wheel (pip's find-links, copied into the build context)
#   - cuda: BASE_IMAGE defaults to the local base too (torch==2.13.0 from PyPI: CUDA 13 wheels that bundle the CUDA
#           user-space libraries, several GB); real-world base: BASE_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04
#   - rocm: needs BASE_IMAGE=rocm/pytorch:… (Docker Hub; its torch is the ROCm build): cannot be built offline, so
#           without BASE_IMAGE it is skipped with a message (the Dockerfile is linted by the tests instead)
# Tags: ks-platform:<backend>. Build output goes to /tmp/ks-platform-build-<backend>.log. Prints tag, id, seconds, size.
set -euo pipefail
cd "$(dirname "$0")/.."
backends=("${@:-cpu}")
bash scripts/start_docker.sh
mkdir -p docker/wheels docker/build-ca
# A TLS-inspecting proxy's CA (pip's `cert`, or the system bundle) is needed while building, then dropped.
ca=$(pip config get global.cert 2>/dev/null || true)
ca=${BUILD_CA_BUNDLE:-${ca:-/etc/ssl/certs/ca-certificates.crt}}
if [[ -s $ca ]]; then cp -u "$ca" docker/build-ca/ca.crt; else : >docker/build-ca/ca.crt; fi
torch_wheel=""
for dir in ${PIP_FIND_LINKS:-} $(pip config get global.find-links 2>/dev/null || true) /opt/wheels; do
  found=$(ls "$dir"/torch-2.13.0+cpu-*.whl 2>/dev/null | head -1 || true)
  if [[ -n $found ]]; then torch_wheel=$found; break; fi
done
for backend in "${backends[@]}"; do
  log=/tmp/ks-platform-build-$backend.log
  case $backend in
    cpu)
      [[ -n $torch_wheel ]] || { echo "no torch-2.13.0+cpu wheel in pip's find-links: pip download torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu -d docker/wheels" >&2; exit 1; }
      cp -u "$torch_wheel" docker/wheels/
      base=${BASE_IMAGE:-ks-platform-base:bookworm}
      torch_req=/tmp/wheels/$(basename "$torch_wheel") ;;
    cuda)
      base=${BASE_IMAGE:-ks-platform-base:bookworm}
      torch_req="torch==2.13.0" ;;
    rocm)
      if [[ -z ${BASE_IMAGE:-} ]]; then
        echo "rocm: the image builds FROM rocm/pytorch (Docker Hub), which cannot be pulled here; set BASE_IMAGE=rocm/pytorch:rocm7.2.4_ubuntu24.04_py3.12_pytorch_release_2.10.0 where it can" >&2
        continue
      fi
      base=$BASE_IMAGE
      torch_req="" ;;
    *) echo "unknown backend $backend (cpu, cuda, rocm)" >&2; exit 2 ;;
  esac
  # Concurrent callers (test sessions, the executor's fixtures) wait for each other per image, not across images.
  if [[ $base == ks-platform-base:* ]]; then
    (flock 9; bash docker/make_base_image.sh "$base") 9>/tmp/ks-platform-build-base.lock
  fi
  commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  [[ -z $(git status --porcelain -- ks_platform pyproject.toml 2>/dev/null) ]] || commit="$commit-dirty"
  echo "building ks-platform:$backend from $base (log: $log)"
  start=$(date +%s)
  (
    flock 9
    docker build --network host -f docker/Dockerfile \
      --build-arg BASE_IMAGE="$base" --build-arg BACKEND="$backend" --build-arg TORCH_REQUIREMENT="$torch_req" \
      --build-arg IMAGE_TAG="ks-platform:$backend" --build-arg GIT_COMMIT="$commit" -t "ks-platform:$backend" . >"$log" 2>&1
  ) 9>"/tmp/ks-platform-build-$backend.lock" || { tail -40 "$log" >&2; exit 1; }
  # The tag moved to the new build: drop this image's older, now untagged builds (~2 GB each; never one in use).
  docker image prune --force --filter "label=org.opencontainers.image.ref.name=ks-platform:$backend" >/dev/null
  docker image inspect "ks-platform:$backend" --format "ks-platform:$backend {{.Id}} $(( $(date +%s) - start )) s, {{.Size}} bytes"
done

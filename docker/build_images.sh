#!/usr/bin/env bash
# Build the ks_platform images:  docker/build_images.sh [cpu|cuda|rocm ...]   (default: cpu)
#   - starts/installs the Docker engine if needed (scripts/start_docker.sh)
#   - cpu : from the local offline base (docker/make_base_image.sh) unless BASE_IMAGE is set; torch = the local
#           CPU wheel (pip's find-links, copied into the build context)
#   - cuda: BASE_IMAGE defaults to the local base too (torch's PyPI wheels bundle the CUDA runtime; several GB)
#   - rocm: needs the rocm/pytorch base from Docker Hub: cannot be built offline (the Dockerfile is linted instead)
# Tags: ks-platform:<backend>. Build output goes to /tmp/ks-platform-build-<backend>.log.
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
      echo "rocm: the image builds FROM rocm/pytorch (Docker Hub), which cannot be pulled here; lint only" >&2
      continue ;;
    *) echo "unknown backend $backend (cpu, cuda, rocm)" >&2; exit 2 ;;
  esac
  [[ $base == ks-platform-base:* ]] && bash docker/make_base_image.sh "$base"
  echo "building ks-platform:$backend from $base (log: $log)"
  start=$(date +%s)
  docker build --network host -f docker/Dockerfile \
    --build-arg BASE_IMAGE="$base" --build-arg BACKEND="$backend" --build-arg TORCH_REQUIREMENT="$torch_req" \
    --build-arg IMAGE_TAG="ks-platform:$backend" --build-arg GIT_COMMIT="$(git rev-parse HEAD 2>/dev/null || echo unknown)" -t "ks-platform:$backend" . >"$log" 2>&1 || { tail -40 "$log" >&2; exit 1; }
  docker image inspect "ks-platform:$backend" --format "ks-platform:$backend {{.Id}} $(( $(date +%s) - start )) s, {{.Size}} bytes"
done

#!/usr/bin/env bash
# Build every image of this deployment (run from this directory); --push also pushes them, which the
# Swarm stack needs (`docker stack deploy` never builds).
set -euo pipefail
cd "$(dirname "$0")"

push=false
if [ "${1:-}" = "--push" ]; then
  push=true
fi

build() {
  local tag=$1 dockerfile=$2
  shift 2
  docker build -f "${dockerfile}" -t "${tag}" "$@" .
  if [ "${push}" = true ]; then
    docker push "${tag}"
  fi
}

build haloserve-rocm:latest haloserve.Dockerfile --build-arg ROCM_VERSION=7.0 --build-arg GPU_TARGETS=gfx1151
build halo-rocm-test:latest rocm-test.Dockerfile --build-arg ROCM_VERSION=7.0 --build-arg GPU_TARGETS=gfx1151

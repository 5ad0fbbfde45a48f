#!/usr/bin/env bash
# Verify that this container sees the Strix Halo GPU through ROCm: rocminfo, rocm-smi, HIP, a matmul.
# Exit status 0 when every step passed.
set -uo pipefail

failures=0
step() {
  local title=$1
  shift
  echo "== ${title}"
  if "$@"; then
    echo "   ok"
  else
    echo "   FAILED"
    failures=$((failures + 1))
  fi
}

gpu_agent() {
  # gfx1151 is the Radeon 8060S; under ROCm 6.4's HSA_OVERRIDE_GFX_VERSION=11.0.0 it shows as gfx1100
  rocminfo | grep -E -m1 'Name: +gfx(1151|1100)'
}

step "devices /dev/kfd and /dev/dri" test -c /dev/kfd -a -d /dev/dri
step "rocminfo lists a gfx1151 agent" gpu_agent
step "rocm-smi" rocm-smi --showproductname --showmeminfo vram gtt
step "hipconfig" hipconfig --version
step "HIP matmul matches the CPU" /opt/rocm-test/hip-matmul
if command -v clinfo >/dev/null; then
  step "OpenCL platform" clinfo --list
fi

echo "HSA_OVERRIDE_GFX_VERSION=${HSA_OVERRIDE_GFX_VERSION:-<unset>}"
if [ "${failures}" -gt 0 ]; then
  echo "${failures} step(s) failed: run \`halo doctor\` on the host"
  exit 1
fi
echo "all checks passed"

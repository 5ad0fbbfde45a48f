#!/usr/bin/env bash
# Peers of the gateway benchmark (nothing committed):
#   - LiteLLM's proxy, from PyPI, in its own venv under benchmarks/.work/litellm-venv;
#   - nginx as a plain reverse proxy and wrk as the load generator, from Debian packages
#     (apt-get; skipped with a message when apt is not usable here).
# Re-running skips what is already installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work="$here/.work"
mkdir -p "$work"

if [ ! -x "$work/litellm-venv/bin/litellm" ]; then
  echo "== installing litellm[proxy] into $work/litellm-venv"
  python3 -m venv "$work/litellm-venv"
  "$work/litellm-venv/bin/pip" install --quiet 'litellm[proxy]>=1.50'
fi

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "== apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
      || echo "!! apt-get failed: the benchmark will skip what is missing (${missing[*]})"
  else
    echo "!! not root or no apt-get: install ${missing[*]} yourself; the benchmark skips what is missing"
  fi
fi
echo "gateway peers ready in $work"

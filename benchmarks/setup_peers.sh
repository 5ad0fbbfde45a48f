#!/usr/bin/env bash
# Build the peers the serving benchmarks compare against, from PyPI sources only (nothing committed):
#   - llama.cpp's llama-server and ggml-rpc-server (RPC on), from the llama.cpp vendored in the
#     llama-cpp-python sdist (same version as the engine haloserve embeds, so the kernels are identical;
#     same GGML_OPENMP=OFF / GGML_RPC=ON as haloserve's llama-cpp-python build);
#   - llama-cpp-python's own OpenAI server (python -m llama_cpp.server), in a separate venv with its
#     [server] extra (skip it with PEERS_SKIP_LCP=1: the RPC and many-models benchmarks do not use it).
# Everything goes under benchmarks/.work/ (git-ignored). Re-running skips what is already built with the
# same flags (a build made with other flags, e.g. without RPC, is rebuilt).
# PYTHON overrides the interpreter whose llama-cpp-python version is matched (default: the repo's .venv).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work="$here/.work"
root=$(cd "$here/.." && pwd)
py="${PYTHON:-$root/.venv/bin/python}"
mkdir -p "$work"
ver=$("$py" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
jobs=$(nproc 2>/dev/null || echo 2)
flags="-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=OFF -DGGML_RPC=ON \
-DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF \
-DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF"
stamp="$ver $flags"

if [ ! -x "$work/llama-server" ] || [ ! -x "$work/ggml-rpc-server" ] \
   || [ "$(cat "$work/build.flags" 2>/dev/null)" != "$stamp" ]; then
  echo "== building llama-server and ggml-rpc-server from llama-cpp-python $ver's vendored llama.cpp"
  sdist="$work/sdist/llama_cpp_python-$ver.tar.gz"
  if [ ! -f "$sdist" ]; then
    "$py" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$ver" -d "$work/sdist"
  fi
  [ -d "$work/llama_cpp_python-$ver" ] || tar -xzf "$sdist" -C "$work"
  src="$work/llama_cpp_python-$ver/vendor/llama.cpp"
  rm -f "$work/build.flags"
  # shellcheck disable=SC2086  # $flags is a list of cmake arguments
  cmake -S "$src" -B "$work/build" $flags > "$work/cmake.log"
  cmake --build "$work/build" --target llama-server ggml-rpc-server -j "$jobs" > "$work/build.log"
  cp "$work/build/bin/llama-server" "$work/llama-server"
  cp "$work/build/bin/ggml-rpc-server" "$work/ggml-rpc-server"
  echo "$stamp" > "$work/build.flags"
fi

if [ -z "${PEERS_SKIP_LCP:-}" ] && [ ! -x "$work/lcp-venv/bin/python" ]; then
  echo "== installing llama-cpp-python[server] $ver into its own venv"
  python3 -m venv "$work/lcp-venv"
  "$work/lcp-venv/bin/pip" install --quiet "llama-cpp-python[server]==$ver"
fi
echo "peers ready in $work"

#!/usr/bin/env bash
# Build the peers the serving benchmark compares against, from PyPI sources only (nothing committed):
#   - llama.cpp's llama-server, from the llama.cpp vendored in the llama-cpp-python sdist (same version
#     as the engine haloserve embeds, so the kernels are identical);
#   - llama-cpp-python's own OpenAI server (python -m llama_cpp.server), in a separate venv with its
#     [server] extra.
# Everything goes under benchmarks/.work/ (git-ignored). Re-running skips what is already built.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work="$here/.work"
root=$(cd "$here/.." && pwd)
py="$root/.venv/bin/python"
mkdir -p "$work"
ver=$("$py" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
jobs=$(nproc 2>/dev/null || echo 2)

if [ ! -x "$work/llama-server" ]; then
  echo "== building llama-server from llama-cpp-python $ver's vendored llama.cpp"
  "$py" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$ver" -d "$work/sdist"
  tar -xzf "$work/sdist/llama_cpp_python-$ver.tar.gz" -C "$work"
  src="$work/llama_cpp_python-$ver/vendor/llama.cpp"
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF > "$work/cmake.log"
  cmake --build "$work/build" --target llama-server -j "$jobs" > "$work/build.log"
  cp "$work/build/bin/llama-server" "$work/llama-server"
fi

if [ ! -x "$work/lcp-venv/bin/python" ]; then
  echo "== installing llama-cpp-python[server] $ver into its own venv"
  python3 -m venv "$work/lcp-venv"
  "$work/lcp-venv/bin/pip" install --quiet "llama-cpp-python[server]==$ver"
fi
echo "peers ready in $work"

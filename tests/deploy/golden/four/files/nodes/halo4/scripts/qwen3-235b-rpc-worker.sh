#!/usr/bin/env bash
# qwen3-235b: llama.cpp RPC worker on node halo4, without Docker (the compose service
# qwen3-235b-rpc runs the same server). Start every worker before the main server on halo3.
# The RPC protocol has no authentication: it listens on the private address 10.0.1.4 only.
set -euo pipefail

# llama.cpp allocates with hipMallocManaged (zero-copy UMA)
export GGML_CUDA_ENABLE_UNIFIED_MEMORY=1
# hipBLASLt GEMMs: faster prompt processing
export ROCBLAS_USE_HIPBLASLT=1
# fewer hardware queues: less contention for one inference process
export GPU_MAX_HW_QUEUES=2
# ggml-rpc-server in recent llama.cpp builds, rpc-server in older ones (build with -DGGML_RPC=ON)
bin=$(command -v ggml-rpc-server || command -v rpc-server || true)
if [ -z "${bin}" ]; then
  echo "no ggml-rpc-server or rpc-server on PATH: build llama.cpp with -DGGML_RPC=ON" >&2
  exit 1
fi
# -H address, -p port, -c cache tensors on local disk (faster reloads)
exec "${bin}" -H 10.0.1.4 -p 50052 -c

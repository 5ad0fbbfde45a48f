#!/usr/bin/env bash
# qwen3-235b: halo rpc-worker on node halo2, without Docker (the compose service
# qwen3-235b-rpc runs the same server). Start every worker before the main server on halo1.
# The RPC protocol has no authentication: it listens on the private address 10.0.1.2 only.
set -euo pipefail

# llama.cpp allocates with hipMallocManaged (zero-copy UMA)
export GGML_CUDA_ENABLE_UNIFIED_MEMORY=1
# hipBLASLt GEMMs: faster prompt processing
export ROCBLAS_USE_HIPBLASLT=1
# fewer hardware queues: less contention for one inference process
export GPU_MAX_HW_QUEUES=2
# --cache keeps the tensors it received on local disk, so a reload of the main server does not resend them
mkdir -p /var/cache/halo-rpc
exec halo rpc-worker --host 10.0.1.2 --port 50052 --cache /var/cache/halo-rpc

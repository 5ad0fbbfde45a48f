#!/usr/bin/env bash
# qwen3-235b: the main llama.cpp server of an RPC split over halo3, halo4, without Docker
# (the compose service qwen3-235b runs the same settings). Start the rpc-server workers first.
set -euo pipefail

export LLAMA_ARG_MODEL=/srv/models/Qwen3-235B-A22B-Q4_K_M-00001-of-00003.gguf
export LLAMA_ARG_ALIAS=qwen3-235b
export LLAMA_ARG_HOST=0.0.0.0
export LLAMA_ARG_PORT=8090
# total context, split across the slots (from the plan)
export LLAMA_ARG_CTX_SIZE=65536
# slots decoding together
export LLAMA_ARG_N_PARALLEL=2
# KV cache type of K
export LLAMA_ARG_CACHE_TYPE_K=q8_0
# KV cache type of V (quantised V needs flash attention)
export LLAMA_ARG_CACHE_TYPE_V=q8_0
export LLAMA_ARG_FLASH_ATTN=on
# every layer on the GPU
export LLAMA_ARG_N_GPU_LAYERS=999
export LLAMA_ARG_BATCH=2048
export LLAMA_ARG_UBATCH=512
# the plan already checked the fit; do not let llama.cpp shrink the context
export LLAMA_ARG_FIT=off
# MiB of prompt cache in system RAM, sized to what Linux has left
export LLAMA_ARG_CACHE_RAM=8192
# layer split by usable memory: each worker in --rpc order, then the local GPU
export LLAMA_ARG_TENSOR_SPLIT=1,1
# mmap loading is very slow on ROCm UMA (llama.cpp issue 15018)
export LLAMA_ARG_MMAP=false
# the model's chat template (tool calling)
export LLAMA_ARG_JINJA=true
export LLAMA_ARG_ENDPOINT_METRICS=true
# --rpc: rpc-server workers on the private RDMA network (no authentication)
export LLAMA_ARG_RPC=10.0.1.4:50052
# llama.cpp allocates with hipMallocManaged (zero-copy UMA)
export GGML_CUDA_ENABLE_UNIFIED_MEMORY=1
# hipBLASLt GEMMs: faster prompt processing
export ROCBLAS_USE_HIPBLASLT=1
# fewer hardware queues: less contention for one inference process
export GPU_MAX_HW_QUEUES=2
exec llama-server

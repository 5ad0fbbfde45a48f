#!/usr/bin/env bash
# qwen3-235b: halo serve, the main node of an RPC split over halo1, halo2, without Docker
# (the compose service qwen3-235b runs the same settings). Start the halo rpc-worker workers first; a
# worker lost later makes halo serve answer 503 until it is back, then reload by itself.
set -euo pipefail

export LLAMA_ARG_MODEL=/srv/models/Qwen3-235B-A22B-Q4_K_M-00001-of-00003.gguf
export LLAMA_ARG_ALIAS=qwen3-235b
export LLAMA_ARG_HOST=0.0.0.0
export LLAMA_ARG_PORT=8080
# total context, split across the slots (from the plan)
export LLAMA_ARG_CTX_SIZE=32768
# slots decoding together
export LLAMA_ARG_N_PARALLEL=1
# KV cache type of K
export LLAMA_ARG_CACHE_TYPE_K=q8_0
# KV cache type of V (quantised V needs flash attention)
export LLAMA_ARG_CACHE_TYPE_V=q8_0
export LLAMA_ARG_FLASH_ATTN=on
# every layer on the GPU
export LLAMA_ARG_N_GPU_LAYERS=999
export LLAMA_ARG_BATCH=2048
export LLAMA_ARG_UBATCH=512
# mmap loading is very slow on ROCm UMA (llama.cpp issue 15018)
export LLAMA_ARG_MMAP=false
export LLAMA_ARG_ENDPOINT_METRICS=true
# llama.cpp allocates with hipMallocManaged (zero-copy UMA)
export GGML_CUDA_ENABLE_UNIFIED_MEMORY=1
# hipBLASLt GEMMs: faster prompt processing
export ROCBLAS_USE_HIPBLASLT=1
# fewer hardware queues: less contention for one inference process
export GPU_MAX_HW_QUEUES=2
# --rpc: the workers in device order; --tensor-split: their shares then this node's, by usable GPU memory
exec halo serve --rpc 10.0.1.2:50052 --tensor-split 56,120

#!/usr/bin/env bash
# llama-3.3-70b: Ray worker on halo2, joining the head on halo1 (10.0.1.1).
# Runs in the compose service llama-3.3-70b-ray-worker or directly on the host.
set -euo pipefail
# NCCL/RCCL over RoCE v2: the RDMA interface, device and GID index of this node (check with `show_gids`).
# MTU: every hop needs MTU 9000; a mismatch shows as hangs in the first all-reduce.
export NCCL_SOCKET_IFNAME="=enp1s0f0np0"
export GLOO_SOCKET_IFNAME=enp1s0f0np0
export NCCL_IB_HCA="=mlx5_0"
export NCCL_IB_GID_INDEX=3
export VLLM_HOST_IP=10.0.1.2

# hipBLASLt GEMMs: faster prompt processing
export ROCBLAS_USE_HIPBLASLT=1
# fewer hardware queues: less contention for one inference process
export GPU_MAX_HW_QUEUES=2

exec ray start --address=10.0.1.1:6379 --node-ip-address="${VLLM_HOST_IP}" --num-gpus=1 --block

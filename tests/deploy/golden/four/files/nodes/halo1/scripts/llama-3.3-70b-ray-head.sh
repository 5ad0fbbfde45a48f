#!/usr/bin/env bash
# llama-3.3-70b: Ray head on halo1, then `vllm serve` with tensor parallelism over 2 nodes
# (halo1, halo2). Runs in the compose service llama-3.3-70b-ray-head or directly on the host.
set -euo pipefail
# NCCL/RCCL over RoCE v2: the RDMA interface, device and GID index of this node (check with `show_gids`).
# MTU: every hop needs MTU 9000; a mismatch shows as hangs in the first all-reduce.
export NCCL_SOCKET_IFNAME="=enp1s0f0np0"
export GLOO_SOCKET_IFNAME=enp1s0f0np0
export NCCL_IB_HCA="=mlx5_0"
export NCCL_IB_GID_INDEX=3
export VLLM_HOST_IP=10.0.1.1

# hipBLASLt GEMMs: faster prompt processing
export ROCBLAS_USE_HIPBLASLT=1
# fewer hardware queues: less contention for one inference process
export GPU_MAX_HW_QUEUES=2
export HF_HOME="${HF_HOME:-/models/huggingface}"

# the Ray dashboard listens on :8265 of every interface: keep it behind your firewall
ray start --head --node-ip-address="${VLLM_HOST_IP}" --port=6379 --dashboard-host=0.0.0.0 --num-gpus=1

# wait until every worker has joined (each runs llama-3.3-70b-ray-worker.sh)
alive() {
  python3 -c 'import ray; ray.init(address="auto", logging_level="ERROR"); print(sum(n["Alive"] for n in ray.nodes()))'
}
tries=0
until [ "$(alive 2>/dev/null || echo 0)" -ge 2 ]; do
  tries=$((tries + 1))
  if [ "${tries}" -ge 120 ]; then
    echo "fewer than 2 Ray nodes joined within 10 minutes: start the workers, check \`ray status\`" >&2
    exit 1
  fi
  echo "waiting for 2 Ray nodes..."
  sleep 5
done

exec vllm serve meta-llama/Llama-3.3-70B-Instruct --max-model-len 32768 --max-num-seqs 4 --gpu-memory-utilization 0.74 --tensor-parallel-size 2 --distributed-executor-backend ray --served-model-name llama-3.3-70b --host 0.0.0.0 --port 8010

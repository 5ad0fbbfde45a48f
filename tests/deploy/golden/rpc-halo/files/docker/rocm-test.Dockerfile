# ROCm test image: rocminfo, rocm-smi and a small HIP matmul checked against the CPU.
# Build: docker build -f rocm-test.Dockerfile -t halo-rocm-test:latest .
# Run:   docker compose --profile test run --rm rocm-test
# Package versions follow the pinned base image and the refs above (hadolint: no per-package pins).
# hadolint global ignore=DL3008,DL3013,DL3059
ARG ROCM_VERSION=7.0
FROM rocm/dev-ubuntu-24.04:${ROCM_VERSION}-complete
ARG GPU_TARGETS=gfx1151
RUN apt-get update \
 && apt-get install -y --no-install-recommends clinfo \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/rocm-test
COPY verify-rocm.sh hip-matmul.cpp ./
RUN hipcc -O2 --offload-arch="${GPU_TARGETS}" -o hip-matmul hip-matmul.cpp \
 && chmod +x verify-rocm.sh
# llama.cpp allocates with hipMallocManaged (zero-copy UMA)
ENV GGML_CUDA_ENABLE_UNIFIED_MEMORY=1
# hipBLASLt GEMMs: faster prompt processing
ENV ROCBLAS_USE_HIPBLASLT=1
# fewer hardware queues: less contention for one inference process
ENV GPU_MAX_HW_QUEUES=2
CMD ["/opt/rocm-test/verify-rocm.sh"]

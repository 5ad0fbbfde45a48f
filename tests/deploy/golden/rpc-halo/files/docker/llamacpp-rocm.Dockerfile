# llama.cpp with HIP (ROCm) for Strix Halo's Radeon 8060S, rendered by `halo deploy render`.
# Build: docker build -f llamacpp-rocm.Dockerfile -t halo-llamacpp-rocm:latest .
#
# GPU_TARGETS is gfx1151 (Strix Halo; gfx1150 is a different chip whose kernels do not run here). Only
# ROCm 6.4.x needs gfx1100 kernels plus HSA_OVERRIDE_GFX_VERSION=11.0.0; ROCm 7.x runs gfx1151 natively.
# Package versions follow the pinned base image and the refs above (hadolint: no per-package pins).
# hadolint global ignore=DL3008,DL3013,DL3059
ARG ROCM_VERSION=7.0
FROM rocm/dev-ubuntu-24.04:${ROCM_VERSION}-complete AS build
ARG LLAMA_CPP_REF=master
ARG GPU_TARGETS=gfx1151
# GGML_NATIVE=ON tunes the CPU side for the build machine (Zen 5 AVX-512 when built on the node itself);
# set it to OFF when building on another kind of machine.
ARG GGML_NATIVE=ON
RUN apt-get update \
 && apt-get install -y --no-install-recommends git cmake ninja-build libcurl4-openssl-dev rocwmma-dev \
 && rm -rf /var/lib/apt/lists/*
RUN git clone --depth 1 --branch "${LLAMA_CPP_REF}" https://github.com/ggml-org/llama.cpp /src
WORKDIR /src
# GGML_HIP=ON                 the ROCm/HIP backend
# GGML_HIP_ROCWMMA_FATTN=ON   rocWMMA flash attention: much faster prefill at long context on RDNA 3.5
# GGML_RPC=ON                 rpc-server and --rpc, for models split over several nodes (not MPI)
# -mllvm --amdgpu-unroll-threshold-local=600
#                             keeps the compiler's loop unrolling in check; without it prompt processing
#                             regresses by about 40% on RDNA 3.5 with recent ROCm compilers
RUN HIPCXX="$(hipconfig -l)/clang" HIP_PATH="$(hipconfig -R)" \
    cmake -S . -B build -G Ninja \
      -DCMAKE_BUILD_TYPE=Release \
      -DGGML_HIP=ON \
      -DGGML_HIP_ROCWMMA_FATTN=ON \
      -DGGML_RPC=ON \
      -DGGML_NATIVE="${GGML_NATIVE}" \
      -DGPU_TARGETS="${GPU_TARGETS}" \
      -DCMAKE_HIP_FLAGS="-mllvm --amdgpu-unroll-threshold-local=600" \
      -DLLAMA_CURL=ON \
 && cmake --build build --config Release -j"$(nproc)" \
 && mkdir -p /opt/llama \
 && cp -a build/bin /opt/llama/bin

# Runtime: the same ROCm libraries (rocBLAS, hipBLASLt) without the compilers' build tree.
FROM rocm/dev-ubuntu-24.04:${ROCM_VERSION}-complete
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl libcurl4t64 libgomp1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/llama /opt/llama
ENV PATH=/opt/llama/bin:$PATH \
    LD_LIBRARY_PATH=/opt/llama/bin
# llama.cpp allocates with hipMallocManaged (zero-copy UMA)
ENV GGML_CUDA_ENABLE_UNIFIED_MEMORY=1
# hipBLASLt GEMMs: faster prompt processing
ENV ROCBLAS_USE_HIPBLASLT=1
# fewer hardware queues: less contention for one inference process
ENV GPU_MAX_HW_QUEUES=2
# Settings come from LLAMA_ARG_* variables (see docker-compose.yml); no entrypoint script needed.
EXPOSE 8080 50052
HEALTHCHECK --interval=30s --timeout=5s --start-period=15m --retries=3 \
  CMD ["sh", "-c", "curl -fsS http://127.0.0.1:${LLAMA_ARG_PORT:-8080}/health || exit 1"]
ENTRYPOINT ["llama-server"]

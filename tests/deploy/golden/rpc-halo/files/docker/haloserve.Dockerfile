# The haloserve image (`halo serve`, `halo gateway`, `halo doctor`), rendered by `halo deploy render`.
# Build: docker build -f haloserve.Dockerfile -t haloserve-rocm:latest .
#
# haloserve itself: wheels/haloserve-0.1.0-py3-none-any.whl, the wheel `halo deploy render` built from its own checkout.
# llama-cpp-python is rebuilt for the GPU (HIP, gfx1151).
# Package versions follow the pinned base image and the refs above (hadolint: no per-package pins).
# hadolint global ignore=DL3008,DL3013,DL3059
ARG ROCM_VERSION=7.0
FROM rocm/dev-ubuntu-24.04:${ROCM_VERSION}-complete
ARG GPU_TARGETS=gfx1151
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl git cmake ninja-build g++ python3-venv python3-dev \
      rocwmma-dev \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
# The same HIP flags as the llama.cpp image (rocWMMA flash attention, RPC, the unroll threshold note
# there), without OpenMP: halo serve decodes on its own thread, which libgomp slows down (docs/serve.md)
RUN HIPCXX="$(hipconfig -l)/clang" HIP_PATH="$(hipconfig -R)" \
    CMAKE_ARGS="-DGGML_HIP=ON -DGPU_TARGETS=${GPU_TARGETS} -DGGML_HIP_ROCWMMA_FATTN=ON -DGGML_RPC=ON -DGGML_OPENMP=OFF -DCMAKE_HIP_FLAGS='-mllvm --amdgpu-unroll-threshold-local=600'" \
    pip install --no-cache-dir --no-binary llama-cpp-python llama-cpp-python
COPY wheels/haloserve-0.1.0-py3-none-any.whl /tmp/wheels/haloserve-0.1.0-py3-none-any.whl
RUN pip install --no-cache-dir /tmp/wheels/haloserve-0.1.0-py3-none-any.whl \
 && rm -f /tmp/wheels/haloserve-0.1.0-py3-none-any.whl
# llama.cpp allocates with hipMallocManaged (zero-copy UMA)
ENV GGML_CUDA_ENABLE_UNIFIED_MEMORY=1
# hipBLASLt GEMMs: faster prompt processing
ENV ROCBLAS_USE_HIPBLASLT=1
# fewer hardware queues: less contention for one inference process
ENV GPU_MAX_HW_QUEUES=2
EXPOSE 8080 8000
CMD ["halo", "--help"]

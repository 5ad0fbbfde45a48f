# A minimal vLLM image for Strix Halo (ROCm, gfx1151), rendered by `halo deploy render`. Text models only.
# Build: docker build -f vllm-rocm.Dockerfile -t halo-vllm-rocm:latest .
#
# Stage 1 builds PyTorch-dependent vLLM kernels for one GPU target only (PYTORCH_ROCM_ARCH), which keeps
# both the build time and the image small; stage 2 copies the virtualenv onto the ROCm runtime.
# Note: `pip install vllm[rocm]` is not a published extra; vLLM for ROCm is built from source.
# Package versions follow the pinned base image and the refs above (hadolint: no per-package pins).
# hadolint global ignore=DL3008,DL3013,DL3059
ARG ROCM_VERSION=7.0
FROM rocm/dev-ubuntu-24.04:${ROCM_VERSION}-complete AS build
ARG VLLM_REF=main
ARG GPU_TARGETS=gfx1151
# PyTorch wheels built for this ROCm line (see https://pytorch.org/get-started/locally/)
ARG TORCH_INDEX=https://download.pytorch.org/whl/rocm7.0
ENV PYTORCH_ROCM_ARCH=${GPU_TARGETS} \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends git python3-venv python3-dev cmake ninja-build \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && pip install --no-cache-dir --upgrade pip setuptools wheel
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" torch
RUN git clone --depth 1 --branch "${VLLM_REF}" https://github.com/vllm-project/vllm /src
WORKDIR /src
RUN pip install --no-cache-dir -r requirements/rocm.txt \
 && pip install --no-cache-dir "ray[default]" \
 && pip install --no-cache-dir --no-build-isolation . \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
 && { find /opt/venv -name '*.so' -exec strip --strip-unneeded {} + 2>/dev/null || true; }

FROM rocm/dev-ubuntu-24.04:${ROCM_VERSION}-complete
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl python3 libibverbs1 ibverbs-providers rdma-core \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# hipBLASLt GEMMs: faster prompt processing
ENV ROCBLAS_USE_HIPBLASLT=1
# fewer hardware queues: less contention for one inference process
ENV GPU_MAX_HW_QUEUES=2
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=15m --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:8000/health"]
CMD ["vllm", "--help"]

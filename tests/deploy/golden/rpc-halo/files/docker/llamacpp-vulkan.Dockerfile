# llama.cpp with Vulkan (Mesa RADV) for Strix Halo, rendered by `halo deploy render`. No ROCm needed.
# Build: docker build -f llamacpp-vulkan.Dockerfile -t halo-llamacpp-vulkan:latest .
# Package versions follow the pinned base image and the refs above (hadolint: no per-package pins).
# hadolint global ignore=DL3008,DL3013,DL3059
FROM ubuntu:24.04 AS build
ARG LLAMA_CPP_REF=master
ARG GGML_NATIVE=ON
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates cmake ninja-build g++ \
      libcurl4-openssl-dev libvulkan-dev glslc spirv-headers \
 && rm -rf /var/lib/apt/lists/*
RUN git clone --depth 1 --branch "${LLAMA_CPP_REF}" https://github.com/ggml-org/llama.cpp /src
WORKDIR /src
# GGML_VULKAN=ON  the Vulkan backend (RADV on the Radeon 8060S)
# GGML_RPC=ON     rpc-server and --rpc, for models split over several nodes
RUN cmake -S . -B build -G Ninja \
      -DCMAKE_BUILD_TYPE=Release \
      -DGGML_VULKAN=ON \
      -DGGML_RPC=ON \
      -DGGML_NATIVE="${GGML_NATIVE}" \
      -DLLAMA_CURL=ON \
 && cmake --build build --config Release -j"$(nproc)" \
 && mkdir -p /opt/llama \
 && cp -a build/bin /opt/llama/bin

FROM ubuntu:24.04
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl libcurl4t64 libgomp1 libvulkan1 mesa-vulkan-drivers \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/llama /opt/llama
ENV PATH=/opt/llama/bin:$PATH \
    LD_LIBRARY_PATH=/opt/llama/bin \
    AMD_VULKAN_ICD=RADV
EXPOSE 8080 50052
HEALTHCHECK --interval=30s --timeout=5s --start-period=15m --retries=3 \
  CMD ["sh", "-c", "curl -fsS http://127.0.0.1:${LLAMA_ARG_PORT:-8080}/health || exit 1"]
ENTRYPOINT ["llama-server"]

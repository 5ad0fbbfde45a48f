"""ggml's device registry and llama.cpp's load log: which devices, where the layers and the KV cache went."""

from __future__ import annotations

import pytest

from haloserve.engine.devices import architectures, gpu_devices, kv_buffers, list_devices, model_placement

HIP_INIT = [
    "ggml_cuda_init: found 1 ROCm devices:\n",
    "  Device 0: AMD Radeon Graphics, gfx1151 (0x1151), VMM: no, Wave Size: 32\n",
]
CUDA_INIT = ["  Device 0: NVIDIA H200, compute capability 9.0, VMM: yes\n"]
GPU_LOAD = [
    "load_tensors: layer   0 assigned to device CPU, is_swa = 0\n",
    "load_tensors: layer   1 assigned to device ROCm0, is_swa = 0\n",
    "load_tensors: layer   2 assigned to device ROCm0, is_swa = 0\n",
    "load_tensors:        ROCm0 model buffer size =  4096.00 MiB\n",
    "load_tensors:   CPU_Mapped model buffer size =   300.50 MiB\n",
]


def test_gpu_architecture_from_the_backend_start_up_lines() -> None:
    assert architectures(HIP_INIT) == {0: "gfx1151"}
    assert architectures(CUDA_INIT) == {0: "compute capability 9.0"}
    assert architectures(["llama_context: n_ctx = 4096\n"]) == {}


def test_placement_from_the_load_log() -> None:
    p = model_placement(GPU_LOAD)
    assert (p.n_layers, p.layers_offloaded, p.layer_devices) == (3, 2, {"CPU": 1, "ROCm0": 2})
    assert p.weights == {"ROCm0": 4096 * 2**20, "CPU_Mapped": int(300.5 * 2**20)}
    kv = kv_buffers(["llama_kv_cache:      ROCm0 KV buffer size =   512.00 MiB\n"])
    assert kv == {"ROCm0": 512 * 2**20}


@pytest.mark.model
def test_this_build_lists_its_cpu() -> None:
    devices = list_devices()
    cpu = [d for d in devices if d.type == "cpu"]
    assert len(cpu) == 1 and cpu[0].name == "CPU" and cpu[0].backend == "CPU" and cpu[0].description
    assert all(d.is_gpu for d in gpu_devices(devices))

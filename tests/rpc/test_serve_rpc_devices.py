"""Which devices llama.cpp gets with --rpc, and how its load log is attributed to them (pure code)."""

from __future__ import annotations

from haloserve.engine.devices import Device, device_usage, model_placement, offload_devices

MIB = 2**20


def dev(name: str, backend: str, type_: str = "gpu", description: str = "") -> Device:
    """A device as ggml's registry lists it."""
    return Device(name, description or name, type_, backend, 64 * 2**30, 60 * 2**30)


CPU = dev("CPU", "CPU", "cpu", "AMD EPYC")
RPC0 = dev("RPC0", "RPC", description="10.0.0.2:50052")
RPC1 = dev("RPC1", "RPC", description="10.0.0.3:50052")


def test_rpc_devices_first_in_rpc_order_then_local_gpus_igpus_only_without_a_gpu() -> None:
    rocm, vk = dev("ROCm0", "ROCm", "igpu"), dev("Vulkan0", "Vulkan", "gpu")
    assert offload_devices(["RPC1", "RPC0"], [CPU, RPC0, RPC1, rocm]) == ("RPC1", "RPC0", "ROCm0")
    assert offload_devices(["RPC0"], [CPU, RPC0, rocm, vk]) == ("RPC0", "Vulkan0")
    assert offload_devices(["RPC0", "RPC1"], [CPU, RPC0, RPC1]) == ("RPC0", "RPC1")  # CPU: never offloaded


def test_layers_and_buffers_are_attributed_to_each_device() -> None:
    log = [
        *(f"load_tensors: layer {i:3d} assigned to device RPC0, is_swa = 0" for i in range(16)),
        *(f"load_tensors: layer {i:3d} assigned to device RPC1, is_swa = 0" for i in range(16, 31)),
        "load_tensors:   CPU_Mapped model buffer size =    28.69 MiB",
        "load_tensors: RPC0[10.0.0.2:50052] model buffer size =    33.82 MiB",
        "load_tensors: RPC0[10.0.0.3:50052] model buffer size =    58.28 MiB",
    ]
    kv = {"RPC0[10.0.0.2:50052]": 24 * MIB, "RPC0[10.0.0.3:50052]": 21 * MIB}
    usage = {u["name"]: u for u in device_usage([CPU, RPC0, RPC1], model_placement(log), kv)}
    assert [usage[n]["layers"] for n in ("CPU", "RPC0", "RPC1")] == [0, 16, 15]
    assert usage["CPU"]["weights_bytes"] == int(28.69 * MIB) and usage["CPU"]["kv_cache_bytes"] == 0
    # each worker's buffers are named after its own device index and endpoint: RPC0[...] on both
    assert usage["RPC1"]["weights_bytes"] == int(58.28 * MIB) and usage["RPC1"]["kv_cache_bytes"] == 21 * MIB
    assert usage["RPC0"]["weights_bytes"] == int(33.82 * MIB) and usage["RPC0"]["memory_free"] == 60 * 2**30

"""Which ggml backends and devices this llama.cpp build has, and where a loaded model put its layers.

The device list comes from ggml's backend device registry (``ggml_backend_dev_count``/``_get``/``_name``/
``_description``/``_type``/``_memory`` in the ``libggml`` llama-cpp-python ships), so it names what the
build really has: CPU, ROCm/HIP (its description carries the gfx target), Vulkan, CUDA, RPC. Where the
layers and the KV cache went is read from llama.cpp's own load log (one line per layer and per buffer),
the same lines llama-server prints, so the report cannot drift from what llama.cpp did.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger("haloserve.llama")

# ggml-backend.h's enum ggml_backend_dev_type
DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}
GPU_TYPES = frozenset({"gpu", "igpu"})

_LAYER_RE = re.compile(r"load_tensors: layer\s+\d+ assigned to device (\S+?),")
_MODEL_BUF_RE = re.compile(r"load_tensors:\s+(\S+) model buffer size\s*=\s*([0-9.]+) MiB")
# ggml-cuda's start-up line per device: HIP names the gfx target, CUDA the compute capability
_ARCH_RE = re.compile(r"Device (\d+): [^\n]*?, (gfx[0-9a-z]+|compute capability [0-9.]+)")
_KV_BUF_RE = re.compile(r"(\S+) KV buffer size\s*=\s*([0-9.]+)\s*MiB")


@dataclass(frozen=True, slots=True)
class Device:
    """One ggml backend device."""

    name: str  # "CPU", "ROCm0", "Vulkan0", "CUDA0", "RPC[host:port]"
    description: str  # e.g. "AMD Radeon Graphics (gfx1151)" for ROCm
    type: str  # cpu, gpu, igpu, accel, meta
    backend: str  # the registry it belongs to: "CPU", "ROCm", "Vulkan", "CUDA", "RPC", ...
    memory_total: int
    memory_free: int

    @property
    def is_gpu(self) -> bool:
        """True for a (discrete or integrated) GPU or an RPC device, where ``-ngl`` can put layers."""
        return self.type in GPU_TYPES


@functools.cache
def _ggml() -> Any:
    from llama_cpp._ggml import libggml

    g = libggml
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    g.ggml_backend_dev_count.argtypes, g.ggml_backend_dev_count.restype = [], sz
    g.ggml_backend_dev_get.argtypes, g.ggml_backend_dev_get.restype = [sz], vp
    for fn in (g.ggml_backend_dev_name, g.ggml_backend_dev_description):
        fn.argtypes, fn.restype = [vp], ctypes.c_char_p
    g.ggml_backend_dev_type.argtypes, g.ggml_backend_dev_type.restype = [vp], ctypes.c_int
    g.ggml_backend_dev_memory.argtypes = [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)]
    g.ggml_backend_dev_memory.restype = None
    g.ggml_backend_dev_backend_reg.argtypes, g.ggml_backend_dev_backend_reg.restype = [vp], vp
    g.ggml_backend_reg_name.argtypes, g.ggml_backend_reg_name.restype = [vp], ctypes.c_char_p
    g.ggml_backend_dev_by_name.argtypes, g.ggml_backend_dev_by_name.restype = [ctypes.c_char_p], vp
    return g


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", errors="replace") if raw else ""


def architectures(lines: Iterable[str]) -> dict[int, str]:
    """GPU index -> gfx target or compute capability, from ggml-cuda/HIP's start-up log lines."""
    return {int(m.group(1)): m.group(2) for line in lines for m in [_ARCH_RE.search(line)] if m}


def list_devices() -> list[Device]:
    """Every device in ggml's registry; empty if it cannot be read. A ROCm/CUDA device's description gets
    its gfx target or compute capability from the backend's start-up log when it lacks one."""
    from haloserve.engine.llamalog import init_backend

    arch = architectures(init_backend().init_lines)
    try:
        g = _ggml()
        out = []
        for i in range(int(g.ggml_backend_dev_count())):
            dev = g.ggml_backend_dev_get(i)
            free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
            g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            reg = g.ggml_backend_dev_backend_reg(dev)
            name = _text(g.ggml_backend_dev_name(dev))
            description = _text(g.ggml_backend_dev_description(dev))
            m = re.fullmatch(r"(?:ROCm|CUDA)(\d+)", name)
            if m and int(m.group(1)) in arch and arch[int(m.group(1))] not in description:
                description += f" ({arch[int(m.group(1))]})"
            out.append(
                Device(
                    name=name,
                    description=description,
                    type=DEVICE_TYPES.get(int(g.ggml_backend_dev_type(dev)), "unknown"),
                    backend=_text(g.ggml_backend_reg_name(reg)) if reg else "",
                    memory_total=int(total.value),
                    memory_free=int(free.value),
                )
            )
        return out
    except (ImportError, AttributeError, OSError) as exc:  # an unusual build: say so, do not guess
        log.warning("cannot read ggml's device registry: %s", exc)
        return []


def device_handles(names: Iterable[str]) -> list[int]:
    """ggml device handles by name (for llama.cpp's ``devices`` model parameter); ValueError if unknown."""
    g, out = _ggml(), []
    for name in names:
        dev = g.ggml_backend_dev_by_name(name.encode())
        if not dev:
            raise ValueError(f"ggml has no device named {name!r}")
        out.append(dev)
    return out


def offload_devices(rpc_names: Iterable[str], devices: Iterable[Device]) -> tuple[str, ...]:
    """The devices llama.cpp offloads to by default, in its order: the RPC workers' devices first (in
    ``--rpc`` order), then the local GPUs, the integrated ones only when there is no discrete one."""
    local = [d for d in devices if d.backend != "RPC"]
    gpus = [d.name for d in local if d.type == "gpu"]
    igpus = [d.name for d in local if d.type == "igpu"]
    return (*rpc_names, *(gpus or igpus))


def gpu_devices(devices: Iterable[Device]) -> list[Device]:
    """The devices ``-ngl`` can offload layers to."""
    return [d for d in devices if d.is_gpu]


@dataclass(slots=True)
class Placement:
    """Where llama.cpp put a model's layers and buffers, read from its load log."""

    n_layers: int = 0  # repeating layers plus the output layer, as llama.cpp counts them
    layers_offloaded: int = 0  # of those, on a device other than the CPU
    layer_devices: dict[str, int] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)  # buffer name -> bytes
    kv_cache: dict[str, int] = field(default_factory=dict)  # buffer name -> bytes

    def as_dict(self) -> dict[str, Any]:
        """Plain data for /props and the start-up line."""
        return asdict(self)


def model_placement(lines: Iterable[str]) -> Placement:
    """Layers per device and weight buffers from the log lines of one model load."""
    p = Placement()
    for line in lines:
        m = _LAYER_RE.search(line)
        if m:
            p.n_layers += 1
            p.layer_devices[m.group(1)] = p.layer_devices.get(m.group(1), 0) + 1
            if m.group(1) != "CPU":
                p.layers_offloaded += 1
            continue
        m = _MODEL_BUF_RE.search(line)
        if m:
            p.weights[m.group(1)] = p.weights.get(m.group(1), 0) + int(float(m.group(2)) * 2**20)
    return p


def kv_buffers(lines: Iterable[str]) -> dict[str, int]:
    """KV cache bytes per buffer (device) from the log lines of one context creation."""
    out: dict[str, int] = {}
    for line in lines:
        for name, mib in _KV_BUF_RE.findall(line):
            out[name] = out.get(name, 0) + int(float(mib) * 2**20)
    return out


def _holds(device: Device, buffer: str) -> bool:
    """Whether the buffer named ``buffer`` in llama.cpp's log lives on ``device``: ``CPU_Mapped`` on CPU,
    ``ROCm0`` on ROCm0, ``RPC0[host:port]`` on the RPC device whose description is ``host:port``."""
    if device.backend.startswith("RPC"):
        return buffer.startswith("RPC") and buffer.endswith(f"[{device.description}]")
    return buffer == device.name or buffer.startswith(device.name + "_")


def device_usage(devices: Iterable[Device], placement: Placement, kv: dict[str, int]) -> list[dict[str, Any]]:
    """Per device: the layers llama.cpp assigned to it (its load log), the bytes of weights and KV cache
    in its buffers, and its memory as the device reports it now."""
    out = []
    for d in devices:
        weights = sum(v for k, v in placement.weights.items() if _holds(d, k))
        out.append(
            {
                "name": d.name,
                "backend": d.backend,
                "description": d.description,
                "layers": placement.layer_devices.get(d.name, 0),
                "weights_bytes": weights,
                "kv_cache_bytes": sum(v for k, v in kv.items() if _holds(d, k)),
                "memory_free": d.memory_free,
                "memory_total": d.memory_total,
            }
        )
    return out


def describe(devices: Iterable[Device]) -> str:
    """One line naming each device: ``CPU (AMD EPYC ...), ROCm0 (gfx1151, 96.0 GiB)``."""
    from haloserve.units import fmt_bytes

    parts = []
    for d in devices:
        mem = f", {fmt_bytes(d.memory_total)}" if d.is_gpu and d.memory_total else ""
        parts.append(f"{d.name} [{d.backend or d.type}] ({d.description}{mem})")
    return ", ".join(parts) or "none found"


def supports_mlock() -> bool:
    """Whether this llama.cpp build can lock the model in RAM."""
    import llama_cpp as lc

    return bool(lc.llama_supports_mlock())

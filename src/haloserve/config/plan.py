"""Settings of ``halo plan``: the context to plan, the node's memory and the hardware figures.

Sizes accept ``128``, ``128G``, ``0.5GiB`` or ``512MB`` (bare numbers are GiB); contexts accept ``262144``,
``256k`` or ``1M`` (k = 1024 tokens). Context, slots, cache types and batch sizes also read llama-server's
``LLAMA_ARG_*`` variables, so a plan matches the server those variables configure.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

from haloserve.config.base import HaloSettings, option
from haloserve.units import parse_size

_CTX_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")


def _size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError("not a size")
    return parse_size(value, default_unit="GiB")


def _tokens(value: Any) -> Any:
    if isinstance(value, str):
        m = _CTX_RE.match(value)
        if not m:
            raise ValueError(f"not a token count: {value!r} (use 262144, 256k or 1M)")
        scale = {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
        return round(float(m.group(1)) * scale)
    return value


Size = Annotated[int, BeforeValidator(_size)]
Tokens = Annotated[int, BeforeValidator(_tokens)]


class PlanSettings(HaloSettings):
    """Options of ``halo plan`` (model, context and node)."""

    ctx: Tokens | None = option(
        None,
        "Total context in tokens, shared by the slots as in llama-server (default: trained context).",
        env=("LLAMA_ARG_CTX_SIZE",),
        aliases=("-c", "--ctx-size"),
        metavar="TOKENS",
        ge=1,
    )
    parallel: int = option(
        1, "Parallel slots (llama-server -np).", env=("LLAMA_ARG_N_PARALLEL",), aliases=("-np",), ge=1, le=256
    )
    kv_type: str | None = option(
        None, "KV cache type for both K and V (f16, q8_0, q4_0 ...).", metavar="TYPE"
    )
    cache_type_k: str | None = option(
        None,
        "KV cache type for K (overrides --kv-type).",
        env=("LLAMA_ARG_CACHE_TYPE_K",),
        aliases=("-ctk",),
        metavar="TYPE",
    )
    cache_type_v: str | None = option(
        None,
        "KV cache type for V (overrides --kv-type).",
        env=("LLAMA_ARG_CACHE_TYPE_V",),
        aliases=("-ctv",),
        metavar="TYPE",
    )
    quant: str | None = option(
        None,
        "Weight quantisation for a config.json or catalog model (Q4_K_M, Q8_0, BF16 ...).",
        metavar="QUANT",
    )
    vllm_model: str | None = option(
        None,
        "Hugging Face repo the vllm serve line loads (default: the model's); an -AWQ/-GPTQ/-FP8 repo is "
        "sized as such.",
        metavar="REPO",
    )
    vllm_quant: str | None = option(
        None,
        "Weights vLLM loads: bf16, fp16, fp8, awq, gptq, gptq-int8 (default: from the repo name, else BF16).",
        metavar="FORMAT",
    )
    ram: Size = option(
        "128", "Memory installed per node, GiB unless a unit is given.", metavar="SIZE", validate_default=True
    )
    carveout: Size = option(
        "0.5", "BIOS UMA frame buffer (carve-out) per node.", metavar="SIZE", validate_default=True
    )
    gpu_limit: Size | None = option(None, "TTM/GTT limit per node (instead of --ttm-pages).", metavar="SIZE")
    ttm_pages: int | None = option(None, "TTM limit as ttm.pages_limit (4 KiB pages).", metavar="PAGES", ge=1)
    os_reserve: Size = option(
        "8", "RAM kept for Linux and llama-server's host buffers.", metavar="SIZE", validate_default=True
    )
    nodes: int = option(
        1, "Nodes to plan a cluster over (llama.cpp RPC or vLLM tensor parallel).", ge=1, le=64
    )
    node_address: list[str] = option(
        default_factory=list,
        description="Address of each node for the RPC commands, the main node first (comma-separated or "
        "repeated; default: node1..nodeN).",
        metavar="HOST[,HOST...]",
    )
    ubatch: int = option(
        512, "Physical batch (llama-server -ub).", env=("LLAMA_ARG_UBATCH",), aliases=("-ub",), ge=1
    )
    batch: int = option(
        2048, "Logical batch (llama-server -b).", env=("LLAMA_ARG_BATCH",), aliases=("-b",), ge=1
    )
    kv_unified: bool = option(
        False, "One KV stream shared by all slots (llama-server --kv-unified).", env=("LLAMA_ARG_KV_UNIFIED",)
    )
    swa_full: bool = option(
        False,
        "Full-size caches for sliding-window layers (llama-server --swa-full).",
        env=("LLAMA_ARG_SWA_FULL",),
    )
    flash_attn: bool = option(True, "Flash attention (needed for a quantised V cache).")
    overhead: Size = option(
        "1", "GPU runtime overhead estimate per node.", metavar="SIZE", validate_default=True
    )
    bandwidth: float = option(256.0, "Theoretical memory bandwidth, GB/s (ceiling).", gt=0, le=100000)
    bandwidth_achievable: float = option(
        215.0, "Memory bandwidth kernels reach, GB/s (realistic).", gt=0, le=100000
    )
    tflops: float = option(59.4, "Peak FP16 TFLOPS (prefill ceiling).", gt=0, le=100000)
    decode_efficiency: float | None = option(
        None, "Decode kernel efficiency (default 0.85 dense, 0.55 MoE).", gt=0, le=1, metavar="FRACTION"
    )
    prefill_efficiency: float | None = option(
        None, "Prefill efficiency (default 0.25 dense, 0.10 MoE).", gt=0, le=1, metavar="FRACTION"
    )
    link_latency_us: float = option(
        50.0, "Network latency per hop / all-reduce step, microseconds.", ge=0, le=1e6
    )

    def node_addresses(self) -> tuple[str, ...]:
        """``--node-address`` values with commas split (``a,b`` is ``--node-address a --node-address b``)."""
        return tuple(p.strip() for item in self.node_address for p in item.split(",") if p.strip())

    def kv_types(self) -> tuple[str, str]:
        """(K type, V type): the specific flags win over ``--kv-type``; f16 by default."""
        base = self.kv_type or "f16"
        return (self.cache_type_k or base).lower(), (self.cache_type_v or base).lower()

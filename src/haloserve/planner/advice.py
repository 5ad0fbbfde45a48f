"""Warnings and ready-to-paste settings derived from a plan: ``LLAMA_ARG_*`` for llama-server and
``halo serve``, ``vllm serve`` flags, RoPE scaling past the trained context, and how much RAM is left for
llama-server's host-side prompt cache.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

from haloserve.planner.budget import NodeBudget
from haloserve.planner.rpc_launch import rpc_endpoints
from haloserve.planner.spec import ModelSpec, Weights
from haloserve.planner.vllm import KV_DTYPES
from haloserve.units import GiB, MiB, fmt_bytes

if TYPE_CHECKING:
    from haloserve.planner.cluster import ClusterPlan
    from haloserve.planner.types import MemoryBreakdown, PlanInputs
    from haloserve.planner.vllm import VllmPlan

OS_FLOOR = 2 * GiB  # RAM a headless Linux needs for itself
CACHE_RAM_DEFAULT = 8192 * MiB  # llama-server's default --cache-ram (common.h cache_ram_mib)


def free_ram_bytes(budget: NodeBudget, gpu_bytes: int, host_bytes: int) -> int:
    """RAM left to Linux on a node whose GPU uses ``gpu_bytes`` (taken from RAM beyond the carve-out)
    and whose host side keeps ``host_bytes`` (the token embeddings llama.cpp leaves on the CPU)."""
    from_ram = max(0, gpu_bytes - budget.carveout_bytes)
    return budget.os_visible_bytes - from_ram - host_bytes


def cache_ram_mib(budget: NodeBudget, gpu_bytes: int, host_bytes: int) -> int:
    """A ``--cache-ram`` (MiB) that keeps llama-server's prompt cache inside the RAM left to Linux."""
    spare = free_ram_bytes(budget, gpu_bytes, host_bytes) - OS_FLOOR
    return int(max(0, min(CACHE_RAM_DEFAULT, spare)) // MiB)


def rope_scaling(spec: ModelSpec, ctx_per_slot: int) -> tuple[int, int] | None:
    """(YaRN factor, original context) when a slot's context is past the model's trained context."""
    if ctx_per_slot <= spec.ctx_train:
        return None
    orig = spec.ctx_native or spec.ctx_train
    return math.ceil(ctx_per_slot / orig), orig


def warnings_for(
    spec: ModelSpec,
    weights: Weights,
    budget: NodeBudget,
    inputs: PlanInputs,
    mem: MemoryBreakdown,
    fits: bool,
    best_kv: str | None,
    node_bytes: int | None = None,
) -> list[str]:
    """Everything the user should know about this plan, most important first."""
    out: list[str] = []
    lay = mem.layout
    need = mem.total_bytes if node_bytes is None else node_bytes
    if not fits:
        per_node = " per node" if inputs.nodes > 1 else ""
        out.append(
            f"needs {fmt_bytes(need)} of GPU memory{per_node} but {fmt_bytes(budget.usable_bytes)} is usable"
            + (f"; KV type {best_kv} would fit" if best_kv and best_kv != inputs.type_k else "")
        )
    if lay.n_ctx_seq > spec.ctx_train:
        yarn = rope_scaling(spec, lay.n_ctx_seq)
        out.append(
            f"context per slot ({lay.n_ctx_seq:,}) is past the model's trained context "
            f"({spec.ctx_train:,}): quality degrades unless RoPE scaling is on "
            f"(YaRN factor {yarn[0] if yarn else '?'}, set below)"
        )
    requested = inputs.ctx or spec.ctx_train
    if lay.n_ctx != requested:
        out.append(
            f"llama.cpp allocates {lay.n_ctx:,} cells for --ctx {requested:,} "
            f"(padded to 256 per slot, {lay.n_ctx_seq:,} per slot)"
        )
    free = free_ram_bytes(budget, need, mem.host_bytes)
    if free < OS_FLOOR:
        out.append(
            f"only {fmt_bytes(max(0, free))} of RAM is left to Linux and llama-server's host buffers; "
            "lower the context or --os-reserve more"
        )
    if not weights.exact:
        out.append("weights are an estimate (parameters x bits per weight); plan a GGUF file for exact sizes")
    if not inputs.flash_attn:
        out.append("without flash attention the compute buffer grows with the context (KQ scores in F32)")
    if spec.is_moe and inputs.parallel > 1:
        out.append(
            "MoE slots decoding together read more experts per step; aggregate speed assumes random routing"
        )
    out.extend(budget.notes)
    return out


def llama_server_env(
    spec: ModelSpec,
    budget: NodeBudget,
    inputs: PlanInputs,
    mem: MemoryBreakdown,
    cluster: ClusterPlan | None,
) -> dict[str, str]:
    """``LLAMA_ARG_*`` variables for llama-server (``halo serve`` reads the same names)."""
    lay = mem.layout
    need = max(s.total_bytes for s in cluster.rpc) if cluster else mem.total_bytes
    env: dict[str, str] = {}
    if inputs.model_ref and inputs.model_ref.endswith(".gguf"):
        env["LLAMA_ARG_MODEL"] = inputs.model_ref
    env.update(
        {
            "LLAMA_ARG_CTX_SIZE": str(lay.n_ctx),
            "LLAMA_ARG_N_PARALLEL": str(lay.n_seq),
            "LLAMA_ARG_CACHE_TYPE_K": inputs.type_k,
            "LLAMA_ARG_CACHE_TYPE_V": inputs.type_v,
            "LLAMA_ARG_FLASH_ATTN": "on" if inputs.flash_attn else "off",
            "LLAMA_ARG_N_GPU_LAYERS": "999",
            "LLAMA_ARG_BATCH": str(inputs.n_batch),
            "LLAMA_ARG_UBATCH": str(inputs.n_ubatch),
            "LLAMA_ARG_FIT": "off",
            "LLAMA_ARG_CACHE_RAM": str(cache_ram_mib(budget, need, mem.host_bytes)),
        }
    )
    if inputs.unified_kv:
        env["LLAMA_ARG_KV_UNIFIED"] = "true"
    if inputs.swa_full:
        env["LLAMA_ARG_SWA_FULL"] = "true"
    yarn = rope_scaling(spec, lay.n_ctx_seq)
    if yarn:
        env["LLAMA_ARG_ROPE_SCALING_TYPE"] = "yarn"
        env["LLAMA_ARG_ROPE_SCALE"] = str(yarn[0])
        env["LLAMA_ARG_YARN_ORIG_CTX"] = str(yarn[1])
    if cluster is not None:
        env["LLAMA_ARG_RPC"] = ",".join(rpc_endpoints(cluster.nodes, inputs.node_addresses))
        env["LLAMA_ARG_TENSOR_SPLIT"] = cluster.tensor_split
    return env


def vllm_args(spec: ModelSpec, inputs: PlanInputs, mem: MemoryBreakdown, vllm: VllmPlan) -> list[str]:
    """``vllm serve`` arguments for the same context, slots and node count, with the memory fraction
    sized from the weights vLLM loads (:mod:`haloserve.planner.vllm`); none when vLLM would not fit."""
    if not vllm.fits:
        return []
    util = vllm.utilization
    args = [
        "vllm",
        "serve",
        vllm.model,
        "--max-model-len",
        str(mem.layout.n_ctx_seq),
        "--max-num-seqs",
        str(inputs.parallel),
        "--gpu-memory-utilization",
        f"{util:.2f}",
        "--tensor-parallel-size",
        str(inputs.nodes),
    ]
    yarn = rope_scaling(spec, mem.layout.n_ctx_seq)
    if yarn:
        rope: dict[str, object] = {
            "rope_type": "yarn",
            "factor": float(yarn[0]),
            "original_max_position_embeddings": yarn[1],
        }
        if spec.rope_theta:
            rope["rope_theta"] = spec.rope_theta
        args += ["--hf-overrides", json.dumps({"rope_parameters": rope}, separators=(",", ":"))]
    kv = KV_DTYPES.get(inputs.type_k)
    if kv and kv != "auto":
        args += ["--kv-cache-dtype", kv]
    if inputs.nodes > 1:
        args += ["--distributed-executor-backend", "ray"]
    return args

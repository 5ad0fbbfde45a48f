"""Compose a :class:`Plan`: does the model fit, with how much headroom, how far can the context go, which
KV type would fit, how many nodes are needed, how fast it can run, and the settings to paste.

``plan_model(spec, weights, budget, inputs)`` is the one entry point; ``halo deploy`` calls it to check a
placement and ``memory_for`` / ``max_context`` are exposed for callers that only need one answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from haloserve.errors import ConfigError
from haloserve.planner.advice import llama_server_env, vllm_args, warnings_for
from haloserve.planner.budget import NodeBudget, TTMRecommendation, tuned_budget
from haloserve.planner.cluster import ClusterPlan, nodes_needed, plan_cluster, rpc_split
from haloserve.planner.memory import (
    compute_buffer_bytes,
    kv_cache,
    kv_layer_bytes,
    recurrent_state_bytes,
    runtime_overhead_bytes,
)
from haloserve.planner.quant import KV_QUALITY_LADDER, kv_type
from haloserve.planner.rpc_launch import RpcLaunch, rpc_launch
from haloserve.planner.spec import ModelSpec, Weights
from haloserve.planner.speed import SpeedEstimate, estimate_speed
from haloserve.planner.types import MAX_CONTEXT, MemoryBreakdown, PlanInputs
from haloserve.planner.vllm import VllmPlan, plan_vllm


def memory_for(
    spec: ModelSpec, weights: Weights, inputs: PlanInputs, ctx: int | None = None
) -> MemoryBreakdown:
    """The single-node memory of ``spec`` for ``inputs`` (``ctx`` overrides ``inputs.ctx``)."""
    n_ctx = ctx or inputs.ctx or spec.ctx_train
    cache = kv_cache(
        spec,
        n_ctx,
        inputs.parallel,
        inputs.type_k,
        inputs.type_v,
        unified=inputs.unified_kv,
        swa_full=inputs.swa_full,
        n_ubatch=inputs.n_ubatch,
        n_batch=inputs.n_batch,
    )
    compute = compute_buffer_bytes(
        spec, cache.layout, inputs.type_k, inputs.type_v, flash_attn=inputs.flash_attn
    )
    return MemoryBreakdown(
        weights_bytes=weights.gpu_bytes,
        kv_cache_bytes=cache.total_bytes,
        kv_k_bytes=cache.k_bytes,
        kv_v_bytes=cache.v_bytes,
        recurrent_bytes=recurrent_state_bytes(spec, inputs.parallel),
        compute_buffer_bytes=compute,
        overhead_bytes=runtime_overhead_bytes(inputs.overhead_bytes),
        host_bytes=weights.host_bytes,
        layout=cache.layout,
    )


def node_need_bytes(spec: ModelSpec, weights: Weights, inputs: PlanInputs, ctx: int | None = None) -> int:
    """GPU bytes of the most loaded node: the whole plan on one node, else the largest RPC share."""
    mem = memory_for(spec, weights, inputs, ctx)
    if inputs.nodes == 1:
        return mem.total_bytes
    kv_layers = kv_layer_bytes(spec, mem.layout, inputs.type_k, inputs.type_v)
    shares = rpc_split(
        spec,
        weights,
        kv_layers,
        mem.recurrent_bytes,
        mem.compute_buffer_bytes,
        mem.overhead_bytes,
        inputs.nodes,
        inputs.tensor_split,
    )
    return max(s.total_bytes for s in shares)


def _fits(spec: ModelSpec, weights: Weights, inputs: PlanInputs, ctx: int, usable: int) -> bool:
    return node_need_bytes(spec, weights, inputs, ctx) <= usable


def max_context(spec: ModelSpec, weights: Weights, inputs: PlanInputs, usable: int) -> int:
    """The largest total context (a multiple of 256 per slot) that fits in ``usable`` bytes; 0 if none."""
    step = 256 if inputs.unified_kv else 256 * inputs.parallel
    if not _fits(spec, weights, inputs, step, usable):
        return 0
    lo, hi = 1, 2
    while hi * step <= MAX_CONTEXT and _fits(spec, weights, inputs, hi * step, usable):
        lo, hi = hi, hi * 2
    if hi * step > MAX_CONTEXT:
        return lo * step
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _fits(spec, weights, inputs, mid * step, usable):
            lo = mid
        else:
            hi = mid
    return lo * step


def kv_type_that_fits(spec: ModelSpec, weights: Weights, inputs: PlanInputs, usable: int) -> str | None:
    """The best-quality KV type (same for K and V) that fits at the requested context, or ``None``."""
    for name in KV_QUALITY_LADDER:
        if not inputs.flash_attn and kv_type(name).block_size > 1:
            continue
        trial = _replace(inputs, type_k=name, type_v=name)
        try:
            if _fits(spec, weights, trial, inputs.ctx or spec.ctx_train, usable):
                return name
        except ConfigError:  # head size not a multiple of the type's block
            continue
    return None


def _replace(inputs: PlanInputs, **changes: Any) -> PlanInputs:
    return PlanInputs(**{**inputs.__dict__, **changes})


@dataclass(frozen=True)
class Plan:
    """The answer of ``halo plan`` (and the check ``halo deploy`` runs per placement)."""

    spec: ModelSpec
    weights: Weights
    inputs: PlanInputs
    budget: NodeBudget
    memory: MemoryBreakdown
    fits: bool
    headroom_bytes: int
    max_context: int
    kv_type_that_fits: str | None
    nodes_needed: int | None
    cluster: ClusterPlan | None
    speed: SpeedEstimate
    ttm: TTMRecommendation
    warnings: tuple[str, ...]
    llama_env: dict[str, str]
    vllm: VllmPlan
    vllm_args: tuple[str, ...]

    @property
    def rpc_launch(self) -> RpcLaunch | None:
        """The ``halo rpc-worker`` / ``halo serve --rpc`` commands of a cluster plan (``None``: one node)."""
        return rpc_launch(self)

    @property
    def verdict(self) -> str:
        """One word: fits / tight / no."""
        if not self.fits:
            return "does not fit"
        return "fits" if self.headroom_bytes >= 0.05 * self.budget.usable_bytes else "fits (tight)"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``: the keys scripts rely on first, then the details."""
        mem, lay = self.memory, self.memory.layout
        return {
            "model": self.spec.name,
            "verdict": self.verdict,
            "fits": self.fits,
            "weights_bytes": mem.weights_bytes,
            "kv_cache_bytes": mem.kv_cache_bytes,
            "compute_buffer_bytes": mem.compute_buffer_bytes,
            "total_bytes": mem.total_bytes,
            "usable_bytes": self.budget.usable_bytes,
            "headroom_bytes": self.headroom_bytes,
            "max_context": self.max_context,
            "max_context_per_slot": self.max_context // max(1, self.inputs.parallel),
            "nodes_needed": self.nodes_needed,
            "decode_tokens_per_s_ceiling": round(self.speed.decode_tokens_per_s_ceiling, 1),
            "decode_tokens_per_s_realistic": round(self.speed.decode_tokens_per_s_realistic, 1),
            "kv_type_that_fits": self.kv_type_that_fits,
            "context": {
                "requested": self.inputs.ctx or self.spec.ctx_train,
                "n_ctx": lay.n_ctx,
                "per_slot": lay.n_ctx_seq,
                "slots": lay.n_seq,
                "streams": lay.n_stream,
                "swa_cells_per_stream": lay.swa_size,
                "type_k": self.inputs.type_k,
                "type_v": self.inputs.type_v,
                "trained": self.spec.ctx_train,
            },
            "memory": {
                "weights_file_bytes": self.weights.total_bytes,
                "weights_gpu_bytes": mem.weights_bytes,
                "weights_host_bytes": mem.host_bytes,
                "weights_exact": self.weights.exact,
                "weights_quant": self.weights.quant,
                "weights_source": self.weights.source,
                "kv_k_bytes": mem.kv_k_bytes,
                "kv_v_bytes": mem.kv_v_bytes,
                "recurrent_state_bytes": mem.recurrent_bytes,
                "compute_buffer_bytes": mem.compute_buffer_bytes,
                "overhead_bytes": mem.overhead_bytes,
            },
            "budget": self.budget.to_dict(),
            "ttm": self.ttm.to_dict(),
            "speed": self.speed.to_dict(),
            "cluster": self.cluster.to_dict() if self.cluster else None,
            "rpc_launch": launch.to_dict() if (launch := self.rpc_launch) else None,
            "spec": self.spec.summary(),
            "warnings": list(self.warnings),
            "llama_server_env": dict(self.llama_env),
            "vllm": self.vllm.to_dict(),
            "vllm_args": list(self.vllm_args),
        }


def plan_model(
    spec: ModelSpec, weights: Weights, budget: NodeBudget, inputs: PlanInputs | None = None
) -> Plan:
    """Plan ``spec`` with ``weights`` on nodes of ``budget`` for ``inputs`` (see :class:`Plan`)."""
    inputs = inputs or PlanInputs()
    mem = memory_for(spec, weights, inputs)
    usable = budget.usable_bytes
    kv_layers = kv_layer_bytes(spec, mem.layout, inputs.type_k, inputs.type_v)
    parts = (spec, weights, kv_layers, mem.recurrent_bytes, mem.compute_buffer_bytes, mem.overhead_bytes)
    speed = estimate_speed(
        spec, weights, mem.layout.n_ctx_seq, inputs.parallel, inputs.type_k, inputs.type_v, inputs.hardware
    )
    vllm = plan_vllm(spec, inputs, mem, usable, weights)
    cluster = None
    if inputs.nodes > 1:
        cluster = plan_cluster(
            *parts,
            usable,
            inputs.nodes,
            speed.decode_bytes_per_token,
            inputs.hardware.bandwidth_peak,
            vllm.tp,
            vllm.fits,
            speed.decode_bytes_per_token - weights.decode_bytes + vllm.weights.decode_bytes,
            inputs.link_latency,
            inputs.tensor_split,
        )
    fits = cluster.rpc_fits if cluster else mem.total_bytes <= usable
    per_node = max(s.total_bytes for s in cluster.rpc) if cluster else mem.total_bytes
    best_kv = kv_type_that_fits(spec, weights, inputs, usable)
    warnings = warnings_for(spec, weights, budget, inputs, mem, fits, best_kv, per_node)
    return Plan(
        spec=spec,
        weights=weights,
        inputs=inputs,
        budget=budget,
        memory=mem,
        fits=fits,
        headroom_bytes=usable - per_node,
        max_context=max_context(spec, weights, inputs, usable),
        kv_type_that_fits=best_kv,
        nodes_needed=nodes_needed(*parts, usable),
        cluster=cluster,
        speed=speed,
        ttm=tuned_budget(budget.ram_bytes, budget.carveout_bytes, budget.os_reserve_bytes)[1],
        warnings=tuple(warnings),
        llama_env=llama_server_env(spec, budget, inputs, mem, cluster),
        vllm=vllm,
        vllm_args=tuple(vllm_args(spec, inputs, mem, vllm)),
    )

"""Memory and speed planning: model metadata in, a :class:`Plan` out. Pure functions over plain data.

Typical use (``halo deploy`` checks every placement this way)::

    from haloserve.planner import PlanInputs, node_budget, plan_model, resolve_model
    model = resolve_model("qwen3-30b-a3b", quant="Q4_K_M")
    plan = plan_model(model.spec, model.weights, node_budget(128 * GiB), PlanInputs(ctx=262144, parallel=2))
    plan.fits, plan.headroom_bytes, plan.max_context
"""

from haloserve.planner.budget import NodeBudget, TTMRecommendation, node_budget, recommend_ttm, tuned_budget
from haloserve.planner.catalog import CatalogEntry, load_catalog, lookup
from haloserve.planner.cluster import ClusterPlan, nodes_needed, plan_cluster
from haloserve.planner.memory import (
    ContextLayout,
    KVCache,
    compute_buffer_bytes,
    context_layout,
    kv_cache,
    kv_cache_bytes,
    recurrent_state_bytes,
)
from haloserve.planner.plan import Plan, max_context, memory_for, node_need_bytes, plan_model
from haloserve.planner.source import ResolvedModel, resolve_model
from haloserve.planner.spec import ModelSpec, RecurrentState, Weights
from haloserve.planner.speed import Hardware, SpeedEstimate, estimate_speed
from haloserve.planner.types import MemoryBreakdown, PlanInputs
from haloserve.planner.weights import estimate_weights

__all__ = [
    "CatalogEntry",
    "ClusterPlan",
    "ContextLayout",
    "Hardware",
    "KVCache",
    "MemoryBreakdown",
    "ModelSpec",
    "NodeBudget",
    "Plan",
    "PlanInputs",
    "RecurrentState",
    "ResolvedModel",
    "SpeedEstimate",
    "TTMRecommendation",
    "Weights",
    "compute_buffer_bytes",
    "context_layout",
    "estimate_speed",
    "estimate_weights",
    "kv_cache",
    "kv_cache_bytes",
    "load_catalog",
    "lookup",
    "max_context",
    "memory_for",
    "node_budget",
    "node_need_bytes",
    "nodes_needed",
    "plan_cluster",
    "plan_model",
    "recommend_ttm",
    "recurrent_state_bytes",
    "resolve_model",
    "tuned_budget",
]

"""Memory per bundle of a deployment, from ``halo plan``'s own function (:func:`plan_model`)."""

from __future__ import annotations

from haloserve.cluster.spec import Deployment
from haloserve.planner import PlanInputs, plan_model, resolve_model, tuned_budget
from haloserve.units import GiB, MiB, fmt_bytes


def plan_need(dep: Deployment) -> Deployment:
    """``dep`` with ``need_mib`` (one entry per bundle: the server first, then RPC workers) filled in.

    The numbers are ``halo plan``'s for the same model and settings: the whole plan on one node, or the
    per-node shares of an even RPC layer split. The budget only decides the plan's own fit verdict, which
    placement replaces with the cluster's real free memory.
    """
    model = resolve_model(dep.source)
    inputs = PlanInputs(
        ctx=dep.ctx,
        parallel=dep.parallel,
        type_k=dep.cache_type_k,
        type_v=dep.cache_type_v,
        nodes=dep.nodes if dep.split == "rpc" else 1,
        model_ref=model.ref,
    )
    budget, _ = tuned_budget(128 * GiB)
    plan = plan_model(model.spec, model.weights, budget, inputs)
    if plan.cluster is not None:
        shares = [s.total_bytes for s in plan.cluster.rpc]
    else:
        shares = [plan.memory.total_bytes]
    mem = plan.memory
    need = [-(-b // MiB) for b in shares]  # whole MiB, rounded up
    summary = (
        f"halo plan: {fmt_bytes(mem.weights_bytes)} weights + {fmt_bytes(mem.kv_cache_bytes)} KV "
        f"({mem.layout.n_ctx} ctx, {dep.parallel} slots, {dep.cache_type_k}/{dep.cache_type_v}) + "
        f"{fmt_bytes(mem.compute_buffer_bytes + mem.overhead_bytes + mem.recurrent_bytes)} buffers "
        f"= {fmt_bytes(mem.total_bytes)}"
    )
    if len(shares) > 1:
        summary += " split as " + " + ".join(fmt_bytes(b) for b in shares)
    return dep.model_copy(update={"need_mib": need, "plan_summary": summary})

"""Fit first: every placement in a spec is checked with the planner before a file is written.

Each node's GPU budget is the planner's with the TTM limit the host set-up will write
(:func:`tuned_budget`, which ``halo doctor`` and ``halo plan`` call too), unless the spec pins
``ttm_pages``. A model is planned once per placement: alone on each replica's node, as a llama.cpp RPC
layer split proportional to each node's usable memory (each share checked against its own node), or as
vLLM tensor parallelism (the planner's ``ClusterPlan``). What every model needs on a node is summed, so
two models sharing a node are checked together. A model that does not fit stops the render with the
planner's numbers and the changes that would make it fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from haloserve.deploy.loader import Loc, SpecError, dotted, line_of, node_ports, port_clashes
from haloserve.deploy.spec import DeploySpec, Model, Node
from haloserve.errors import ConfigError
from haloserve.planner import (
    NodeBudget,
    Plan,
    PlanInputs,
    ResolvedModel,
    TTMRecommendation,
    node_budget,
    plan_model,
    recommend_ttm,
    resolve_model,
    tuned_budget,
)
from haloserve.planner.advice import OS_FLOOR, free_ram_bytes
from haloserve.planner.cluster import tensor_split_for
from haloserve.planner.vllm import vllm_format
from haloserve.units import fmt_bytes

RAM_NOTE = "of RAM is left to Linux"  # the planner's warning, judged per node for a split


@dataclass(frozen=True)
class NodeMemory:
    """A node's GPU budget, the TTM settings behind it, and what each model uses there."""

    node: Node
    budget: NodeBudget
    ttm: TTMRecommendation
    used: dict[str, int] = field(default_factory=dict)

    @property
    def used_bytes(self) -> int:
        """GPU bytes of every model on this node."""
        return sum(self.used.values())


@dataclass(frozen=True)
class Placement:
    """One model as planned: what was resolved, the plan, and its GPU bytes on each of its nodes."""

    index: int
    model: Model
    resolved: ResolvedModel
    plan: Plan
    per_node: dict[str, int]
    verdict: str = ""

    def __post_init__(self) -> None:
        if not self.verdict:  # frozen: set once, from the plan unless the split judged each node
            object.__setattr__(self, "verdict", self.plan.verdict)


@dataclass(frozen=True)
class FitReport:
    """The outcome of the fit check: placements, node memory, and the planner's warnings."""

    placements: list[Placement]
    nodes: dict[str, NodeMemory]
    warnings: list[str]


def node_memory(node: Node) -> NodeMemory:
    """The budget a node has once the host set-up has raised its TTM limit."""
    budget, ttm = tuned_budget(node.ram, node.carveout, node.os_reserve)
    if node.ttm_pages:  # a pinned limit: plan with it, and write it (capped at what Linux can spare)
        budget = node_budget(
            node.ram, node.carveout, ttm_pages=node.ttm_pages, os_reserve_bytes=node.os_reserve
        )
        ttm = recommend_ttm(budget, min(budget.gtt_limit_bytes, budget.os_visible_bytes - node.os_reserve))
    return NodeMemory(node, budget, ttm)


def rpc_order(model: Model) -> list[str]:
    """The nodes of an RPC split in llama.cpp's device order: the workers (``--rpc`` order), then the main."""
    return [*model.nodes[1:], *model.nodes[:1]]


def _inputs(model: Model, nodes: int, ref: str | None, split: tuple[float, ...] | None = None) -> PlanInputs:
    vllm = model.engine == "vllm"
    return PlanInputs(
        tensor_split=split,
        ctx=model.ctx,
        parallel=model.parallel,
        type_k=model.cache_type_k,
        type_v=model.cache_type_v,
        nodes=nodes,
        model_ref=ref,
        # vLLM loads the hf: repo, so quant: names that checkpoint's format (bf16, fp8, awq ...)
        vllm_quant=model.quant if vllm else None,
    )


def _suggestions(model: Model, plan: Plan) -> list[str]:
    out = []
    if model.engine == "vllm":
        tp = plan.cluster.tp if plan.cluster else None
        if tp is not None and not tp.feasible:
            out.append(f"a tensor-parallel size the heads divide by ({tp.reason})")
        out.append("more nodes in a tensor-parallel split")
    elif plan.nodes_needed and plan.nodes_needed > len(model.nodes):
        out.append(f"split: rpc over {plan.nodes_needed} nodes")
    kv = plan.kv_type_that_fits
    if kv and kv != model.cache_type_k:
        out.append(f"cache_type_k/cache_type_v: {kv}")
    if plan.max_context:
        out.append(f"ctx: {plan.max_context} or less")
    return out


def _plan(model: Model, i: int, memory: dict[str, NodeMemory]) -> tuple[Placement, list[str]]:
    if model.engine == "vllm" and model.quant:
        try:
            vllm_format(model.hf, model.quant)
        except ConfigError as exc:
            raise _PlanProblem(("models", i, "quant"), exc.message) from None
    try:
        # quant: of a vLLM model is its checkpoint's format, which the GGUF estimate does not know
        resolved = resolve_model(model.source, None if model.engine == "vllm" else model.quant)
        group = model.nodes if model.split != "none" else model.nodes[:1]  # what one instance spans
        # the planner assumes equal nodes: plan on the smallest budget among the model's nodes
        smallest = min((memory[name].budget for name in model.nodes), key=lambda b: b.usable_bytes)
        ref = model.hf or (resolved.ref if resolved.kind != "gguf" else None)
        if model.engine == "vllm" and ref is None:
            raise _PlanProblem(("models", i, "source"), "vLLM loads a Hugging Face model: set hf: (its id)")
        split = None
        if model.split == "rpc":  # proportional to each node's usable memory (tuned_budget), device order
            split = tensor_split_for([memory[name].budget.usable_bytes for name in rpc_order(model)])
        plan = plan_model(resolved.spec, resolved.weights, smallest, _inputs(model, len(group), ref, split))
    except ConfigError as exc:
        raise _PlanProblem(("models", i, "source"), exc.message) from None
    per_node: dict[str, int] = {}
    if model.engine == "vllm" and not plan.vllm.tp.feasible:
        raise _PlanProblem(("models", i, "nodes"), plan.vllm.problem)
    if model.engine == "vllm" and not plan.vllm.fits:
        hint = (
            "more nodes in a tensor-parallel split, a quantised repo in hf: (AWQ/GPTQ/FP8) or a smaller ctx"
        )
        raise _PlanProblem(("models", i, "nodes"), f"{plan.vllm.problem}; try {hint}")
    if model.engine == "vllm":  # sized from the weights vLLM loads, not the GGUF estimate
        per_node = dict.fromkeys(group if model.split != "none" else model.nodes, plan.vllm.tp.per_node_bytes)
    elif model.split == "rpc" and plan.cluster:
        shares = zip(rpc_order(model), plan.cluster.rpc, strict=True)
        per_node = {name: share.total_bytes for name, share in shares}
    else:
        per_node = dict.fromkeys(model.nodes, plan.memory.total_bytes)
    notes = [f"{model.name}: {w}" for w in (*resolved.notes, *plan.warnings) if not w.startswith("needs ")]
    verdict = ""
    if model.split == "rpc" and plan.cluster:
        # nodes of a split may differ: judge each share against its own node, not the smallest budget
        notes = [n for n in notes if RAM_NOTE not in n] + _rpc_ram_notes(model, plan, per_node, memory)
        room = [memory[name].budget.usable_bytes - need for name, need in per_node.items()]
        tight = any(
            r < 0.05 * memory[name].budget.usable_bytes for r, name in zip(room, per_node, strict=True)
        )
        verdict = "does not fit" if min(room) < 0 else ("fits (tight)" if tight else "fits")
    return Placement(i, model, resolved, plan, per_node, verdict), notes


def _rpc_ram_notes(
    model: Model, plan: Plan, per_node: dict[str, int], memory: dict[str, NodeMemory]
) -> list[str]:
    """The RAM each node of a split leaves to Linux (the main node also keeps the token embeddings)."""
    out = []
    for name, need in per_node.items():
        host = plan.memory.host_bytes if name == model.nodes[0] else 0
        free = free_ram_bytes(memory[name].budget, need, host)
        if free < OS_FLOOR:
            out.append(
                f"{model.name}: only {fmt_bytes(max(0, free))} of RAM is left to Linux on {name}; "
                "lower the context or raise os_reserve"
            )
    return out


class _PlanProblem(Exception):
    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc, self.message = loc, message


def check_fit(spec: DeploySpec, where: str = "<spec>", lines: dict[Loc, int] | None = None) -> FitReport:
    """Plan every model of ``spec``; raise :class:`SpecError` (``where:line``) when one does not fit.

    Models placed by ``nodes:`` are planned first; models given as ``replicas:`` then go, in spec order,
    to the candidate nodes with the most GPU memory left (and their port free).
    """
    lines = lines or {}
    memory = {node.name: node_memory(node) for node in spec.nodes}
    placed: dict[int, Placement] = {}
    warnings: list[str] = []
    explicit = [i for i, m in enumerate(spec.models) if m.replicas is None]
    for i in explicit + [i for i, m in enumerate(spec.models) if m.replicas is not None]:
        try:
            model = spec.models[i]
            if model.replicas is not None:
                model = _choose_nodes(spec, i, memory, placed)
            placement, notes = _plan(model, i, memory)
        except _PlanProblem as exc:
            raise SpecError(f"{where}:{line_of(lines, exc.loc)}: models[{i}]: {exc.message}") from None
        placed[i] = placement
        warnings.extend(notes)
        for name, need in placement.per_node.items():
            memory[name].used[placement.model.name] = need
    placements = [placed[i] for i in sorted(placed)]
    clash = next(port_clashes(spec.model_copy(update={"models": [p.model for p in placements]})), None)
    if clash is not None:
        raise SpecError(f"{where}:{line_of(lines, clash.loc)}: {dotted(clash.loc)}: {clash.message}")
    for name, mem in memory.items():
        if mem.used_bytes > mem.budget.usable_bytes:
            raise _overflow(name, mem, placements, where, lines)
    return FitReport(placements, memory, list(dict.fromkeys(warnings)))


def _choose_nodes(
    spec: DeploySpec, i: int, memory: dict[str, NodeMemory], placed: dict[int, Placement]
) -> Model:
    """``spec.models[i]`` with ``nodes`` set to the ``replicas`` candidates with the most room left."""
    model = spec.models[i]
    assert model.replicas is not None
    candidates = model.nodes or [n.name for n in spec.nodes]
    taken = node_ports(spec.model_copy(update={"models": [p.model for p in placed.values()]}))
    room: list[tuple[int, str]] = []
    free_now: list[str] = []
    need = 0
    for name in candidates:
        if any(port == model.port for port, _, _ in taken.get(name, [])):
            free_now.append(f"{name}: port {model.port} taken")
            continue
        trial, _ = _plan(model.model_copy(update={"nodes": [name]}), i, memory)
        need = trial.per_node[name]
        free = memory[name].budget.usable_bytes - memory[name].used_bytes
        free_now.append(f"{name} {fmt_bytes(free)} free")
        if need <= free:
            room.append((free - need, name))
    if len(room) < model.replicas:
        raise _PlanProblem(
            ("models", i, "replicas"),
            f"{model.replicas} replica(s) of {model.name!r} need {fmt_bytes(need)} each but only {len(room)} "
            f"of {len(candidates)} candidate node(s) have room ({'; '.join(free_now)})",
        )
    chosen = {name for _, name in sorted(room, key=lambda r: -r[0])[: model.replicas]}
    return model.model_copy(update={"nodes": [n for n in candidates if n in chosen]})


def _overflow(
    name: str, mem: NodeMemory, placements: list[Placement], where: str, lines: dict[Loc, int]
) -> SpecError:
    usable = fmt_bytes(mem.budget.usable_bytes)
    here = [p for p in placements if name in p.per_node]
    biggest = max(here, key=lambda p: p.per_node[name])
    loc = ("models", biggest.index)
    at = f"{where}:{line_of(lines, loc)}"
    if len(here) == 1 or biggest.per_node[name] > mem.budget.usable_bytes:
        p = biggest
        tried = f"ctx {p.plan.memory.layout.n_ctx:,}, {p.model.parallel} slot(s), KV {p.model.cache_type_k}"
        hint = "; ".join(_suggestions(p.model, p.plan)) or "a smaller quantisation"
        return SpecError(
            f"{at}: model {p.model.name!r} does not fit node {name}: needs {fmt_bytes(p.per_node[name])} "
            f"of GPU memory ({tried}) but {usable} is usable; try {hint}"
        )
    parts = ", ".join(f"{p.model.name} {fmt_bytes(p.per_node[name])}" for p in here)
    return SpecError(
        f"{at}: models on node {name} need {fmt_bytes(mem.used_bytes)} together ({parts}) but {usable} is "
        f"usable; move {biggest.model.name!r} to another node or shrink its ctx/KV type"
    )

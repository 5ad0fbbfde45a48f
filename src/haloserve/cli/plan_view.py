"""Rich rendering of ``halo plan`` results: the plan, the catalog and the corrected seed tables."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

from haloserve.cli.render import console, markup_safe, print_json
from haloserve.planner.rpc_launch import node_addresses
from haloserve.units import GB, fmt_bytes

if TYPE_CHECKING:
    from haloserve.planner import Plan


def _b(n: float) -> str:
    return fmt_bytes(n) if n >= 0 else "-" + fmt_bytes(-n)


def _rate(x: float) -> str:
    return f"{x:,.1f} tok/s"


def show_plan(plan: Plan, kind: str, notes: tuple[str, ...] = ()) -> None:
    """Print ``plan`` as tables: memory, context, speed, cluster, warnings and settings to paste."""
    out = console()
    spec, w, mem, budget, inputs = plan.spec, plan.weights, plan.memory, plan.budget, plan.inputs
    lay = mem.layout
    basis = (
        "exact: sum of the GGUF's tensors"
        if w.exact
        else f"estimate: {spec.params_total / 1e9:.2f}B parameters at {w.quant}'s bits per weight"
    )
    nodes = f"{inputs.nodes} nodes" if inputs.nodes > 1 else "1 node"
    name, quant = markup_safe(spec.name), markup_safe(w.quant)
    out.print(f"[bold]{name}[/] · {quant} weights · {nodes} with {_b(budget.ram_bytes)} RAM ({kind})")
    colour = "green" if plan.fits and "tight" not in plan.verdict else ("yellow" if plan.fits else "red")
    out.print(f"[bold {colour}]{plan.verdict}[/]: headroom {_b(plan.headroom_bytes)}")

    title = (
        "GPU memory of the whole model (the split per node is below)" if inputs.nodes > 1 else "GPU memory"
    )
    t = Table(title=title, title_justify="left")
    t.add_column("item")
    t.add_column("size", justify="right")
    t.add_column("how it is known")
    t.add_row("weights on the GPU", _b(mem.weights_bytes), basis)
    cells = f"{lay.kv_size:,} cells x {lay.n_stream} stream(s)"
    swa = f", SWA layers {lay.swa_size:,}" if lay.swa_size else ""
    t.add_row(
        f"KV cache K ({inputs.type_k})", _b(mem.kv_k_bytes), f"exact, as llama.cpp allocates: {cells}{swa}"
    )
    t.add_row(f"KV cache V ({inputs.type_v})", _b(mem.kv_v_bytes), "exact, as llama.cpp allocates")
    if mem.recurrent_bytes:
        t.add_row("recurrent state", _b(mem.recurrent_bytes), f"exact: F32 state x {lay.n_seq} sequence(s)")
    t.add_row("compute buffer", _b(mem.compute_buffer_bytes), f"estimate: worst-case batch of {lay.n_ubatch}")
    t.add_row(
        "runtime overhead", _b(mem.overhead_bytes), "estimate: HIP runtime, BLAS workspaces (--overhead)"
    )
    t.add_row("[bold]total[/]", f"[bold]{_b(mem.total_bytes)}[/]", "")
    usable_label = "usable per node" if inputs.nodes > 1 else "usable"
    t.add_row(usable_label, _b(budget.usable_bytes), f"carve-out + GTT ({budget.gtt_limit_source})")
    t.add_row("system RAM (host)", _b(mem.host_bytes), "token embeddings llama.cpp keeps on the CPU")
    out.print(t)

    c = Table(title="Context", title_justify="left")
    for col in (
        "requested",
        "allocated",
        "per slot",
        "trained",
        "largest that fits",
        "best KV type that fits",
    ):
        c.add_column(col, justify="right")
    requested = inputs.ctx or spec.ctx_train
    c.add_row(
        f"{requested:,}",
        f"{lay.n_ctx:,}",
        f"{lay.n_ctx_seq:,} x {lay.n_seq}",
        f"{spec.ctx_train:,}",
        f"{plan.max_context:,}" if plan.max_context else "none",
        plan.kv_type_that_fits or "none",
    )
    out.print(c)

    sp = plan.speed
    s = Table(title="Speed on one node", title_justify="left", caption=_speed_caption())
    s.add_column("")
    s.add_column("ceiling", justify="right")
    s.add_column("realistic", justify="right")
    s.add_row(
        f"decode, one slot at {sp.context_per_slot:,} tokens",
        _rate(sp.decode_tokens_per_s_ceiling),
        _rate(sp.decode_tokens_per_s_realistic),
    )
    s.add_row(
        "decode, empty context",
        _rate(sp.decode_tokens_per_s_ceiling_empty),
        _rate(sp.decode_tokens_per_s_realistic_empty),
    )
    if sp.slots > 1:
        s.add_row(
            f"decode, {sp.slots} slots together",
            _rate(sp.aggregate_tokens_per_s_ceiling),
            _rate(sp.aggregate_tokens_per_s_realistic),
        )
    s.add_row(
        "prefill, 512-token prompt",
        _rate(sp.prefill_tokens_per_s_ceiling),
        _rate(sp.prefill_tokens_per_s_realistic),
    )
    s.add_row(
        f"prefill of a full slot ({sp.context_per_slot:,})", "", f"{sp.full_prompt_seconds_realistic:,.0f} s"
    )
    out.print(s)

    if plan.cluster:
        _show_cluster(plan)
        _show_rpc_launch(plan)
    elif not plan.fits and plan.nodes_needed and plan.nodes_needed > 1:
        out.print(f"[yellow]needs {plan.nodes_needed} nodes[/]: rerun with --nodes {plan.nodes_needed}")

    for warning in (*notes, *plan.warnings):
        out.print(f"[yellow]![/] {markup_safe(warning)}")
    for note in spec.notes:
        out.print(f"[dim]note:[/] {markup_safe(note)}")

    out.print("\n[bold]llama-server / halo serve[/]")
    for key, value in plan.llama_env.items():
        out.print(f"export {key}={markup_safe(shlex.quote(value))}", highlight=False, soft_wrap=True)
    v = plan.vllm
    out.print(f"\n[bold]vLLM[/] ({markup_safe(v.quant_source)}; {_b(v.tp.per_node_bytes)} per node)")
    if plan.vllm_args:
        out.print(markup_safe(shlex.join(plan.vllm_args)), soft_wrap=True)
    else:
        out.print(f"[red]does not fit[/]: {markup_safe(v.problem)}", soft_wrap=True)
    out.print(f"\n[bold]TTM limit[/] for {_b(plan.ttm.target_bytes)} of GTT (pages = GiB x 262144)")
    out.print(f"/etc/default/grub: {plan.ttm.grub_line}", soft_wrap=True)
    out.print(f"or /etc/modprobe.d/ttm.conf: {plan.ttm.modprobe_line}", soft_wrap=True)


def show_check(check: dict[str, Any]) -> None:
    """Print the comparison with llama.cpp's own layout (``--verify``)."""
    out = console()
    report = check["report"]
    t = Table(title="llama.cpp check (same GGUF and settings, no weights loaded)", title_justify="left")
    t.add_column("")
    t.add_column("planner", justify="right")
    t.add_column("llama.cpp", justify="right")
    t.add_row("KV cache + recurrent state", _b(check["planned_kv_bytes"]), _b(check["llama_cpp_kv_bytes"]))
    t.add_row("weights (all tensors)", _b(check["planned_weights_bytes"]), _b(check["llama_cpp_model_bytes"]))
    t.add_row("context cells", "", f"{report['n_ctx']:,} ({report['n_ctx_seq']:,} per slot)")
    for name, size in report["compute_buffers"].items():
        t.add_row(f"compute buffer ({name} backend)", "", _b(size))
    out.print(t)
    verdict = "[green]agrees[/]" if check["agrees"] else "[red]differs by more than 1 %[/]"
    out.print(f"llama.cpp {verdict} (difference {check['difference_bytes']:+,} bytes)")


def _speed_caption() -> str:
    return (
        "ceiling: theoretical bandwidth / FLOPS; realistic: achievable bandwidth x kernel efficiency "
        "(estimates, see docs/plan.md)"
    )


def _show_cluster(plan: Plan) -> None:
    out = console()
    cl = plan.cluster
    assert cl is not None
    t = Table(
        title=f"llama.cpp RPC layer split over {cl.nodes} nodes (--tensor-split {cl.tensor_split})",
        title_justify="left",
    )
    for col in ("device", "node", "layers", "weights", "KV cache", "total", "fits"):
        t.add_column(col, justify="right")
    addresses = node_addresses(cl.nodes, plan.inputs.node_addresses)
    # llama.cpp's device order: the workers in --rpc order, then the main node's own GPU
    names = [f"{a} (rpc-worker)" for a in addresses[1:]] + [f"{addresses[0]} (main)"]
    for share, name in zip(cl.rpc, names, strict=True):
        layers = f"{share.first_layer}-{share.last_layer}" + (" + output" if share.holds_output else "")
        fits = share.total_bytes <= plan.budget.usable_bytes
        t.add_row(
            str(share.node),
            markup_safe(name),
            layers,
            _b(share.weights_bytes),
            _b(share.kv_bytes),
            _b(share.total_bytes),
            "yes" if fits else "[red]no[/]",
        )
    out.print(t)
    tp, v = cl.tp, plan.vllm
    status = ("fits" if cl.tp_fits else "does not fit") if tp.feasible else f"not possible: {tp.reason}"
    out.print(
        f"vLLM tensor parallel {tp.size}: {_b(tp.per_node_bytes)} per node ({v.quant.upper()} weights "
        f"{_b(tp.weights_bytes)}, KV cache {_b(tp.kv_bytes)}), {status}"
    )
    out.print(
        f"decode ceiling: RPC {_rate(cl.rpc_decode_tokens_per_s_ceiling)}, "
        f"tensor parallel {_rate(cl.tp_decode_tokens_per_s_ceiling)} (network latency included)"
    )


def _show_rpc_launch(plan: Plan) -> None:
    out = console()
    launch = plan.rpc_launch
    if launch is None:
        return
    if not launch.commands:
        out.print(f"[yellow]RPC split[/]: {markup_safe(launch.note)}", soft_wrap=True)
        return
    out.print("\n[bold]RPC split: run these[/] (workers first)")
    for c in launch.commands:
        where = "worker" if c.role == "worker" else "main node"
        out.print(f"# on {markup_safe(c.node)} ({where})", highlight=False)
        out.print(markup_safe(c.command), highlight=False, soft_wrap=True)
    out.print(f"[dim]{markup_safe(launch.note)}[/]", soft_wrap=True)
    for var in launch.unsupported:
        out.print(f"[yellow]![/] halo serve has no option for {var}: use llama-server for this plan")


def show_catalog(as_json: bool) -> None:
    """Print the built-in catalog."""
    from haloserve.planner import load_catalog

    rows = []
    for key, entry in load_catalog().items():
        spec = entry.spec()
        rows.append(
            {
                "key": key,
                "name": entry.name,
                "hf": entry.hf,
                "params_total": spec.params_total,
                "params_active": spec.params_active,
                "layers": spec.n_layer,
                "kv_layers": len(spec.kv_layers()),
                "kv_heads": max(spec.n_head_kv),
                "head_dim": spec.head_dim_k,
                "sliding_window_layers": sum(spec.swa_layers),
                "experts": f"{spec.n_expert_used}/{spec.n_expert}" if spec.is_moe else "",
                "trained_context": spec.ctx_train,
                "default_quant": entry.default_quant,
                "config_url": entry.config_url,
            }
        )
    if as_json:
        print_json(rows)
        return
    t = Table(
        title="halo plan catalog (layers: KV layers / all when they differ; KV: heads x dim)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    t.add_column("name", no_wrap=True, min_width=19)
    for col in ("params", "active", "layers", "KV", "SWA", "MoE", "ctx"):
        t.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    for r in rows:
        t.add_row(
            str(r["key"]),
            f"{int(r['params_total']) / 1e9:.1f}B",  # type: ignore[call-overload]
            f"{int(r['params_active']) / 1e9:.1f}B",  # type: ignore[call-overload]
            str(r["layers"]) if r["layers"] == r["kv_layers"] else f"{r['kv_layers']}/{r['layers']}",
            f"{r['kv_heads']}x{r['head_dim']}",
            str(r["sliding_window_layers"] or ""),
            str(r["experts"]),
            f"{int(r['trained_context']) // 1024}k",  # type: ignore[call-overload]
        )
    console().print(t)


def show_seed_table(as_json: bool) -> None:
    """Print the seed's 1M-context tables with the corrected figures beside the seed's."""
    from haloserve.planner.seedtable import budget_rows, model_rows

    models, budgets = model_rows(), budget_rows()
    if as_json:
        print_json({"models": [r.to_dict() for r in models], "budgets": [r.to_dict() for r in budgets]})
        return
    out = console()
    t = Table(
        title="Memory Budget for 1M Token Context (q4_0 KV, Q4_K_M weights; decimal GB)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
    )
    t.add_column("model", no_wrap=True)
    for col in ("layers", "KV\nheads", "KV\nseed", "KV", "W\nseed", "W", "sum\nseed", "sum", "GPU"):
        t.add_column(col, justify="right", min_width=max(len(x) for x in col.split("\n")))
    for r in models:
        t.add_row(
            r.model,
            str(r.layers),
            str(r.kv_heads),
            f"{r.seed_kv_gb:.1f}",
            f"[bold]{r.kv_gb:.1f}[/]",
            f"{r.seed_weights_gb:.1f}",
            f"{r.weights_gb:.1f}",
            f"~{r.seed_total_gb:.0f}",
            f"{r.total_gb:.1f}",
            f"{r.gpu_total_gb:.1f}",
        )
    out.print(t)
    out.print(
        "KV: KV cache, W: weights, sum: KV + W, GPU: sum plus the compute buffer and runtime overhead. "
        "q4_0 stores 32 values in 18 bytes (0.5625 B/value), not 0.5: the seed's KV column is 12.5 % low. "
        f"Every row is past Qwen3's trained context ({models[0].trained_context:,} tokens): "
        "1M tokens needs YaRN scaling well beyond the 4x the model card supports."
    )
    b = Table(
        title="Largest Qwen3 at 1M tokens (q4_0 KV), TTM raised to what Linux can spare",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
    )
    for col in ("RAM", "BIOS UMA", "usable (seed)", "usable\nGiB", "Linux\nsees GiB", "largest (seed)"):
        b.add_column(col)
    b.add_column("largest", no_wrap=True)
    for br in budgets:
        b.add_row(
            br.ram,
            br.carveout,
            br.seed_usable,
            f"{br.usable_gib:.1f}",
            f"{br.os_visible_gib:.1f}",
            br.seed_largest,
            br.largest,
        )
    out.print(b)
    out.print(f"(1 GB = {GB:,} bytes; usable keeps the default 8 GiB --os-reserve for Linux.)")

"""``halo plan``: what fits in unified memory, and how fast it can run."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from haloserve.cli.options import add_settings_arguments, settings_flags
from haloserve.config.plan import PlanSettings

if TYPE_CHECKING:
    from haloserve.planner import Plan, PlanInputs

HELP = "Plan memory and speed: which model, quantisation and context fit, on one node or a cluster."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``halo plan``."""
    parser.add_argument(
        "model",
        nargs="?",
        help="a GGUF file (any part of a split model), a config.json or its directory, or a catalog name",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--table", action="store_true", help="reprint the seed's 1M-context table, corrected")
    parser.add_argument("--list", action="store_true", help="list the built-in catalog")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when the model does not fit")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="GGUF only: compare with what llama.cpp allocates (no weights loaded); exit 1 if >1%% off",
    )
    add_settings_arguments(parser, PlanSettings)


def build_inputs(settings: PlanSettings, model_ref: str | None) -> PlanInputs:
    """The planner inputs for ``settings`` (kept here so the CLI is the only place reading settings)."""
    from haloserve.planner import Hardware, PlanInputs

    hw_defaults = Hardware()
    hardware = Hardware(
        bandwidth_peak=settings.bandwidth * 1e9,
        bandwidth_achievable=min(settings.bandwidth_achievable, settings.bandwidth) * 1e9,
        flops_peak=settings.tflops * 1e12,
        decode_efficiency_dense=settings.decode_efficiency or hw_defaults.decode_efficiency_dense,
        decode_efficiency_moe=settings.decode_efficiency or hw_defaults.decode_efficiency_moe,
        prefill_efficiency_dense=settings.prefill_efficiency or hw_defaults.prefill_efficiency_dense,
        prefill_efficiency_moe=settings.prefill_efficiency or hw_defaults.prefill_efficiency_moe,
    )
    type_k, type_v = settings.kv_types()
    return PlanInputs(
        ctx=settings.ctx,
        parallel=settings.parallel,
        type_k=type_k,
        type_v=type_v,
        unified_kv=settings.kv_unified,
        swa_full=settings.swa_full,
        flash_attn=settings.flash_attn,
        n_ubatch=settings.ubatch,
        n_batch=settings.batch,
        overhead_bytes=settings.overhead,
        nodes=settings.nodes,
        node_addresses=settings.node_addresses(),
        link_latency=settings.link_latency_us * 1e-6,
        hardware=hardware,
        model_ref=model_ref,
        vllm_ref=settings.vllm_model,
        vllm_quant=settings.vllm_quant,
    )


def run(args: argparse.Namespace) -> int:
    """Resolve the model, plan it, and print the plan (table or JSON)."""
    from haloserve.cli import plan_view
    from haloserve.cli.render import print_json
    from haloserve.config import load_settings
    from haloserve.errors import ConfigError
    from haloserve.planner import node_budget, plan_model, resolve_model

    settings = load_settings(PlanSettings, flags=settings_flags(args, PlanSettings))
    if args.list:
        plan_view.show_catalog(args.json)
        return 0
    if args.table:
        plan_view.show_seed_table(args.json)
        return 0
    if not args.model:
        raise ConfigError("no model given: pass a GGUF file, a config.json or a catalog name (see --list)")
    model = resolve_model(args.model, settings.quant)
    budget = node_budget(
        settings.ram,
        settings.carveout,
        gpu_limit_bytes=settings.gpu_limit,
        ttm_pages=settings.ttm_pages,
        os_reserve_bytes=settings.os_reserve,
    )
    plan = plan_model(model.spec, model.weights, budget, build_inputs(settings, model.ref))
    check = None
    if args.verify:
        if model.kind != "gguf":
            raise ConfigError("--verify needs a GGUF file (llama.cpp reads the model's own metadata)")
        check = verify_with_llama_cpp(plan, model.ref)
    if args.json:
        data = plan.to_dict()
        data["warnings"] = [*model.notes, *data["warnings"]]
        data["source_kind"] = model.kind
        if check is not None:
            data["llama_cpp"] = check
        print_json(data)
    else:
        plan_view.show_plan(plan, model.kind, model.notes)
        if check is not None:
            plan_view.show_check(check)
    if check is not None and not check["agrees"]:
        return 1
    return 1 if args.check and not plan.fits else 0


def verify_with_llama_cpp(plan: Plan, path: str) -> dict[str, Any]:
    """Compare the plan with what llama.cpp lays out for the same GGUF and settings (no weights loaded)."""
    from pathlib import Path

    from haloserve.planner.llama_probe import RESOLUTION, probe_llama_cpp

    inputs = plan.inputs
    report = probe_llama_cpp(
        Path(path),
        ctx=inputs.ctx or plan.spec.ctx_train,
        n_seq=inputs.parallel,
        type_k=inputs.type_k,
        type_v=inputs.type_v,
        unified=inputs.unified_kv,
        swa_full=inputs.swa_full,
        n_ubatch=inputs.n_ubatch,
        n_batch=inputs.n_batch,
        flash_attn=inputs.flash_attn,
    )
    planned = plan.memory.kv_cache_bytes + plan.memory.recurrent_bytes
    measured = report.kv_bytes + report.recurrent_bytes
    tolerance = max(0.01 * planned, 2 * RESOLUTION * max(1, len(report.caches)))
    return {
        "planned_kv_bytes": planned,
        "llama_cpp_kv_bytes": measured,
        "difference_bytes": measured - planned,
        "agrees": abs(measured - planned) <= tolerance and report.model_bytes == plan.weights.total_bytes,
        "planned_weights_bytes": plan.weights.total_bytes,
        "llama_cpp_model_bytes": report.model_bytes,
        "report": report.to_dict(),
    }

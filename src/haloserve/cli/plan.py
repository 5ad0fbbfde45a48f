"""``halo plan``: what fits in unified memory, and how fast it can run."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from haloserve.cli.options import add_settings_arguments, settings_flags
from haloserve.config.plan import PlanSettings

if TYPE_CHECKING:
    from haloserve.planner import PlanInputs

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
        link_latency=settings.link_latency_us * 1e-6,
        hardware=hardware,
        model_ref=model_ref,
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
    if args.json:
        data = plan.to_dict()
        data["warnings"] = [*model.notes, *data["warnings"]]
        data["source_kind"] = model.kind
        print_json(data)
    else:
        plan_view.show_plan(plan, model.kind, model.notes)
    return 1 if args.check and not plan.fits else 0

"""The bytes a model will take, from ``halo plan``'s arithmetic for its file and its settings.

One truth: the same :func:`haloserve.planner.memory_for` that ``halo plan`` prints (weights + KV cache
+ compute buffers), with the settings ``halo serve`` will build the context with. The runtime overhead
``halo plan`` adds (HIP runtime, workspaces) is the process's, not a model's: it is counted once, out of
the budget (see :func:`budget_after_overhead`), not once per model.
"""

from __future__ import annotations

from pathlib import Path

from haloserve.config.serve import ServeSettings
from haloserve.planner import PlanInputs, memory_for
from haloserve.planner.gguf_source import read_gguf
from haloserve.planner.memory import runtime_overhead_bytes


def plan_inputs(settings: ServeSettings) -> PlanInputs:
    """The planner's inputs for the context ``halo serve`` builds from ``settings``."""
    return PlanInputs(
        ctx=settings.ctx_size or None,
        parallel=settings.parallel,
        type_k=settings.cache_type_k,
        type_v=settings.cache_type_v,
        unified_kv=settings.kv_unified,
        swa_full=settings.swa_full,
        flash_attn=settings.flash_attn != "off",
        n_ubatch=settings.ubatch_size,
        n_batch=settings.batch_size,
        overhead_bytes=0,
    )


def planned_bytes(path: Path, settings: ServeSettings) -> int:
    """Weights + KV cache + compute buffers of the GGUF at ``path`` served with ``settings``."""
    spec, weights = read_gguf(path)
    return memory_for(spec, weights, plan_inputs(settings)).total_bytes


def budget_after_overhead(budget: int, gpu: bool) -> int:
    """What the models may share of ``budget``: the runtime overhead comes off once on a GPU build."""
    return budget - runtime_overhead_bytes() if gpu else budget

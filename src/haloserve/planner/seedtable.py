"""The seed's "Memory Budget for 1M Token Context" tables, recomputed (``halo plan --table``).

The seed (``001_...txt``) counted q4_0 as 0.5 byte per value; ggml stores 32 values in 18 bytes
(0.5625), so its KV column is 12.5 % low (errata 2). Every Qwen3 row is also past the models' trained
context (40,960 tokens): 1M tokens needs YaRN scaling far beyond the 4x the model card supports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from haloserve.planner.budget import node_budget
from haloserve.planner.catalog import lookup
from haloserve.planner.memory import kv_cache_bytes
from haloserve.planner.plan import PlanInputs, memory_for
from haloserve.planner.weights import estimate_weights
from haloserve.units import GB, GiB

ONE_M = 1_048_576


@dataclass(frozen=True)
class SeedRow:
    """One model row: the seed's figures beside the recomputed ones (decimal GB, as the seed)."""

    model: str
    layers: int
    kv_heads: int
    seed_kv_gb: float
    seed_weights_gb: float
    seed_total_gb: float
    kv_gb: float
    weights_gb: float
    total_gb: float
    gpu_total_gb: float
    trained_context: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class BudgetRow:
    """One RAM configuration: the seed's claim beside the recomputed usable memory and best fit."""

    ram: str
    carveout: str
    seed_usable: str
    seed_largest: str
    usable_gib: float
    os_visible_gib: float
    largest: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return dict(self.__dict__)


_SEED_ROWS = (
    ("qwen3-8b", 38.6, 5.0, 44.0),
    ("qwen3-14b", 42.9, 9.0, 52.0),
    ("qwen3-30b-a3b", 25.7, 18.6, 44.0),
    ("qwen3-32b", 68.7, 19.8, 89.0),
)
_SEED_BUDGETS = (
    (128, 0.5, "~120 GB (via TTM)", "Qwen3-32B (Q8_0)"),
    (128, 96.0, "96 GB dedicated + GTT", "Same, but OS starved to ~32 GB"),
    (64, 0.5, "~58 GB (via TTM)", "Qwen3-14B (IQ4_XS) or Qwen3-30B-A3B (Q5_K_M)"),
)
_CANDIDATES = ("qwen3-32b", "qwen3-30b-a3b", "qwen3-14b", "qwen3-8b")
_QUANTS = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS")


def model_rows() -> list[SeedRow]:
    """The first seed table with correct KV (exact llama.cpp bytes) and Q4_K_M weight estimates."""
    inputs = PlanInputs(ctx=ONE_M, type_k="q4_0", type_v="q4_0")
    rows = []
    for key, seed_kv, seed_w, seed_total in _SEED_ROWS:
        spec = lookup(key).spec()
        weights = estimate_weights(spec, "Q4_K_M")
        kv = kv_cache_bytes(spec, ONE_M, 1, "q4_0")
        mem = memory_for(spec, weights, inputs)
        rows.append(
            SeedRow(
                model=spec.name,
                layers=spec.n_layer,
                kv_heads=max(spec.n_head_kv),
                seed_kv_gb=seed_kv,
                seed_weights_gb=seed_w,
                seed_total_gb=seed_total,
                kv_gb=round(kv / GB, 1),
                weights_gb=round(weights.total_bytes / GB, 1),
                total_gb=round((kv + weights.total_bytes) / GB, 1),
                gpu_total_gb=round(mem.total_bytes / GB, 1),
                trained_context=spec.ctx_train,
            )
        )
    return rows


def budget_rows() -> list[BudgetRow]:
    """The second seed table: usable GPU memory per RAM configuration (TTM limit raised to what Linux
    can spare) and the largest Qwen3 that fits 1M tokens of q4_0 KV, with the best quantisation."""
    inputs = PlanInputs(ctx=ONE_M, type_k="q4_0", type_v="q4_0")
    rows = []
    for ram, carve, seed_usable, seed_largest in _SEED_BUDGETS:
        base = node_budget(int(ram * GiB), int(carve * GiB))
        budget = node_budget(int(ram * GiB), int(carve * GiB), gpu_limit_bytes=base.os_visible_bytes)
        largest = "none"
        for key in _CANDIDATES:
            spec = lookup(key).spec()
            fit = next(
                (
                    q
                    for q in _QUANTS
                    if memory_for(spec, estimate_weights(spec, q), inputs).total_bytes <= budget.usable_bytes
                ),
                None,
            )
            if fit:
                largest = f"{spec.name} ({fit})"
                break
        rows.append(
            BudgetRow(
                ram=f"{ram} GB",
                carveout="Auto (0.5 GB)" if carve < 1 else f"{carve:g} GB",
                seed_usable=seed_usable,
                seed_largest=seed_largest,
                usable_gib=round(budget.usable_bytes / GiB, 1),
                os_visible_gib=round(budget.os_visible_bytes / GiB, 1),
                largest=largest,
            )
        )
    return rows

"""Tables and JSON for ``halo deploy`` (the CLI prints them; nothing here prints)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from haloserve.deploy.check import FileCheck
from haloserve.deploy.fit import FitReport
from haloserve.units import fmt_bytes


def fit_table(fit: FitReport) -> Table:
    """GPU memory per node: usable, planned, and each model's share."""
    table = Table(title="GPU memory per node (planner)")
    for col in ("node", "usable", "planned", "headroom", "models"):
        table.add_column(col, justify="right" if col in ("usable", "planned", "headroom") else "left")
    for name, mem in fit.nodes.items():
        usable = mem.budget.usable_bytes
        models = ", ".join(f"{m} {fmt_bytes(b)}" for m, b in mem.used.items()) or "-"
        table.add_row(
            name, fmt_bytes(usable), fmt_bytes(mem.used_bytes), fmt_bytes(usable - mem.used_bytes), models
        )
    return table


def fit_to_dict(fit: FitReport) -> dict[str, Any]:
    """The fit as plain data for ``--json``."""
    return {
        "nodes": {
            name: {
                "usable_bytes": mem.budget.usable_bytes,
                "planned_bytes": mem.used_bytes,
                "ttm_pages_limit": mem.ttm.pages_limit,
                "models": dict(mem.used),
            }
            for name, mem in fit.nodes.items()
        },
        "models": [
            {"name": p.model.name, "verdict": p.verdict, "per_node_bytes": p.per_node} for p in fit.placements
        ],
        "warnings": fit.warnings,
    }


def check_table(results: list[FileCheck]) -> Table:
    """One row per checked file."""
    table = Table(title="halo deploy check")
    for col in ("file", "kind", "verdict"):
        table.add_column(col)
    for r in results:
        verdict = "ok" if r.ok else "; ".join(r.problems)
        if r.skipped:
            verdict += f" (skipped: {'; '.join(r.skipped)})"
        table.add_row(r.path, r.kind, verdict)
    return table

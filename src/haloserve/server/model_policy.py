"""Which models to unload so that another fits: a pure function over plain data (docs/models.md).

Rules: the memory of the loaded (and loading) models plus the new one stays within the budget, and their
number within ``--models-max``; idle models go first, least recently used first; a pinned model never
goes; a busy one (requests in flight) is never unloaded, but may finish and become idle, so the caller
waits for it when only busy models stand in the way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from haloserve.units import fmt_bytes


@dataclass(frozen=True)
class Resident:
    """A model that holds memory now (loaded, or loading with its bytes reserved)."""

    id: str
    bytes: int
    pinned: bool = False
    busy: bool = False
    last_used: float = 0.0


@dataclass(frozen=True)
class Eviction:
    """The answer: unload ``victims`` (in order) and load; or ``wait`` for busy models; or ``impossible``."""

    victims: tuple[str, ...] = ()
    wait: bool = False
    impossible: str = ""

    @property
    def ok(self) -> bool:
        """True when loading may go ahead once the victims are unloaded."""
        return not self.wait and not self.impossible


def _fits(used: int, count: int, need: int, budget: int, max_models: int) -> bool:
    return used + need <= budget and (max_models <= 0 or count + 1 <= max_models)


def plan_eviction(residents: Sequence[Resident], need: int, budget: int, max_models: int = 0) -> Eviction:
    """The idle models to unload, least recently used first, so that ``need`` more bytes fit."""
    used = sum(r.bytes for r in residents)
    count = len(residents)
    if _fits(used, count, need, budget, max_models):
        return Eviction()
    pinned = [r for r in residents if r.pinned]
    pinned_bytes = sum(r.bytes for r in pinned)
    if need + pinned_bytes > budget or (max_models > 0 and len(pinned) + 1 > max_models):
        what = (
            f"needs {fmt_bytes(need)} but the budget is {fmt_bytes(budget)}"
            + (f" and pinned models hold {fmt_bytes(pinned_bytes)}" if pinned else "")
            if need + pinned_bytes > budget
            else f"--models-max {max_models} models are pinned"
        )
        return Eviction(impossible=what)
    victims: list[str] = []
    for r in sorted((r for r in residents if not r.pinned and not r.busy), key=lambda r: r.last_used):
        victims.append(r.id)
        used -= r.bytes
        count -= 1
        if _fits(used, count, need, budget, max_models):
            return Eviction(victims=tuple(victims))
    # Only busy models stand in the way: they finish, become idle, and are evicted then.
    return Eviction(wait=True)

"""What doctor reads about a node's memory: installed RAM from what the OS sees, and what the GPU can
address. The recommended TTM limit is the planner's (:func:`haloserve.planner.budget.tuned_budget`), so
doctor, plan and deploy print one number; GTT is borrowed from the RAM the OS sees, never added to it.
"""

from __future__ import annotations

import math

from haloserve.units import GiB


def installed_ram(mem_total: int, carveout: int) -> int:
    """Installed RAM from what the OS sees plus the BIOS carve-out, rounded up to a module size.

    The kernel hides firmware reservations, so ``MemTotal + carve-out`` is a little under the real
    size; real machines come in 8 GiB steps from 16 GiB up (2 GiB steps below).
    """
    seen = max(0, mem_total) + max(0, carveout)
    step = 8 * GiB if seen > 14 * GiB else 2 * GiB
    return max(step, math.ceil(seen / step) * step)


def gpu_addressable(carveout: int, gtt: int, mem_total: int) -> int:
    """What the GPU can use: carve-out plus GTT, GTT taken from the OS's RAM (never counted twice)."""
    return max(0, carveout) + min(max(0, gtt), max(0, mem_total))

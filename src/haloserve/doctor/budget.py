"""What doctor reads about a node's memory: installed RAM from what the OS sees, and what the GPU can
address. The recommended TTM limit is the planner's (:func:`haloserve.planner.budget.tuned_budget`), so
doctor, plan and deploy print one number; GTT is borrowed from the RAM the OS sees, never added to it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from haloserve.units import GiB

if TYPE_CHECKING:
    from haloserve.doctor.host import Host


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


def serving_budget(host: Host) -> tuple[int, str]:
    """The bytes ``halo serve --models-dir`` may fill by default, and where the number comes from: what
    the integrated GPU can address (the figure of doctor's memory check), else the RAM the OS sees."""
    mem_total = host.mem_total or 0
    apu = host.apu
    if apu is not None and apu.vram_total is not None and apu.gtt_total is not None:
        usable = gpu_addressable(apu.vram_total, apu.gtt_total, mem_total)
        return usable, "GPU can address (carve-out + GTT, as halo doctor reports)"
    return mem_total, "RAM the OS sees (no integrated GPU)"


def live_serving_budget() -> tuple[int, str]:
    """:func:`serving_budget` of the running host."""
    from haloserve.doctor.facts import live_facts
    from haloserve.doctor.host import Host
    from haloserve.doctor.root import live_root

    return serving_budget(Host(live_root(), live_facts()))

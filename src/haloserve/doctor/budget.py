"""Strix Halo memory budget in one place: installed RAM, the OS reserve and the recommended TTM limit.

Kept small on purpose: when ``halo plan``'s node budget lands, :func:`recommend` becomes a call into it.
The rules follow seed 001 with errata 1 applied (a TTM page is 4 KiB, ``pages = GiB x 262144``):
128 GB installed -> 120 GiB for the GPU, 64 GB -> 58 GiB; GTT is borrowed from the RAM the OS sees,
so it is never added to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from haloserve.units import GiB, ttm_pages_for_gib


def installed_ram(mem_total: int, carveout: int) -> int:
    """Installed RAM from what the OS sees plus the BIOS carve-out, rounded up to a module size.

    The kernel hides firmware reservations, so ``MemTotal + carve-out`` is a little under the real
    size; real machines come in 8 GiB steps from 16 GiB up (2 GiB steps below).
    """
    seen = max(0, mem_total) + max(0, carveout)
    step = 8 * GiB if seen > 14 * GiB else 2 * GiB
    return max(step, math.ceil(seen / step) * step)


def os_reserve_gib(installed_gib: float) -> int:
    """GiB left to the OS: one sixteenth of RAM, at least 6 and at most 8 (128 -> 8, 64 -> 6)."""
    return int(min(8, max(6, installed_gib / 16)))


@dataclass(frozen=True)
class Budget:
    """The recommended GPU share of a node and what the host has now."""

    installed: int
    os_reserve: int
    target_gib: int
    pages: int

    @property
    def target_bytes(self) -> int:
        """The recommended TTM limit in bytes."""
        return self.target_gib * GiB


def recommend(installed: int) -> Budget:
    """The recommended ``ttm.pages_limit`` for ``installed`` bytes of RAM and a small carve-out."""
    gib = installed / GiB
    reserve = os_reserve_gib(gib)
    target = max(1, math.floor(gib) - reserve)
    return Budget(
        installed=installed, os_reserve=reserve * GiB, target_gib=target, pages=ttm_pages_for_gib(target)
    )


def gpu_addressable(carveout: int, gtt: int, mem_total: int) -> int:
    """What the GPU can use: carve-out plus GTT, GTT taken from the OS's RAM (never counted twice)."""
    return max(0, carveout) + min(max(0, gtt), max(0, mem_total))

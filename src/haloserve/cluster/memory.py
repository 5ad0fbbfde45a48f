"""How much GPU memory a node registers with the cluster: the planner's budget over doctor's facts.

On a Strix Halo node the GPU can use the carve-out plus GTT under ``ttm.pages_limit`` (never the
carve-out alone, which is what GPUStack reports): :func:`haloserve.planner.budget.node_budget` with the
node's own TTM limit, the same arithmetic ``halo doctor`` and ``halo plan`` use. A node without an
integrated AMD GPU serves from RAM, so it registers the RAM Linux sees minus the OS reserve.
"""

from __future__ import annotations

from dataclasses import dataclass

from haloserve.errors import ConfigError
from haloserve.planner.budget import DEFAULT_OS_RESERVE, node_budget
from haloserve.units import MiB, fmt_bytes


@dataclass(frozen=True)
class NodeMemory:
    """Usable GPU memory of this node and how it was found (shown by start and join)."""

    usable_bytes: int
    source: str

    @property
    def mib(self) -> int:
        """The Ray resource amount (whole MiB)."""
        return self.usable_bytes // MiB


def memory_from_facts(
    mem_total: int | None,
    carveout: int | None,
    ttm_pages: int | None,
    os_reserve: int = DEFAULT_OS_RESERVE,
) -> NodeMemory:
    """Usable memory from the host's facts (pure): an APU's carve-out and TTM limit, else RAM."""
    if not mem_total:
        raise ConfigError("cannot read MemTotal from /proc/meminfo: give --gpu-memory")
    if carveout is None:  # no integrated GPU: llama.cpp runs on the CPU from RAM
        if mem_total <= os_reserve:
            raise ConfigError(
                f"this node has no usable memory: RAM {fmt_bytes(mem_total)} is not more than the "
                f"{fmt_bytes(os_reserve)} OS reserve (give --gpu-memory to override)"
            )
        budget = node_budget(mem_total, 0, gpu_limit_bytes=mem_total, os_reserve_bytes=os_reserve)
        return NodeMemory(
            budget.usable_bytes,
            f"no integrated GPU: RAM {fmt_bytes(mem_total)} minus the {fmt_bytes(os_reserve)} OS reserve",
        )
    ram = mem_total + carveout  # node_budget wants installed RAM; Linux sees it minus the carve-out
    budget = node_budget(ram, carveout, ttm_pages=ttm_pages or None, os_reserve_bytes=os_reserve)
    return NodeMemory(
        budget.usable_bytes,
        f"carve-out {fmt_bytes(carveout)} + GTT {fmt_bytes(budget.gtt_usable_bytes)} "
        f"({budget.gtt_limit_source}, {fmt_bytes(os_reserve)} left to the OS)",
    )


def detect_memory(override_bytes: int | None = None) -> NodeMemory:
    """This node's usable GPU memory (``override_bytes`` from ``--gpu-memory`` wins)."""
    if override_bytes is not None:
        if override_bytes < MiB:
            raise ConfigError(
                f"--gpu-memory {fmt_bytes(override_bytes)}: a node needs at least 1 MiB of usable memory"
            )
        return NodeMemory(override_bytes, "--gpu-memory")
    from haloserve.doctor.facts import HostFacts
    from haloserve.doctor.host import Host
    from haloserve.doctor.parse import parse_int
    from haloserve.doctor.root import live_root

    host = Host(live_root(), HostFacts())
    apu = host.apu
    carveout = apu.vram_total if apu is not None and apu.gtt_total is not None else None
    pages = parse_int(host.root.text("sys/module/ttm/parameters/pages_limit"))
    return memory_from_facts(host.mem_total, carveout, pages)

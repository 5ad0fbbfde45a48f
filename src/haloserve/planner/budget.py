"""How much memory one Strix Halo node can give the GPU, and the TTM settings that unlock it.

Strix Halo has one pool of LPDDR5X. The BIOS "UMA frame buffer" (the carve-out) is reserved for the GPU
at boot and hidden from Linux; everything else is Linux's RAM, which the GPU reaches through GTT up to
the TTM limit (``ttm.pages_limit``, 4 KiB pages; the kernel default is half of the RAM Linux sees). GTT
pages are taken from Linux's RAM, so the GPU can use

    usable = carve-out + min(GTT limit, RAM Linux sees - OS reserve)

and never "carve-out + GTT limit" when the limit is larger than what Linux can spare (counting the same
memory twice is how the seeds ended up with a starved OS). ``pages = GiB x 262144`` (errata 1).

The OS reserve is counted from the RAM Linux sees (installed minus the carve-out), not from the installed
RAM: the carve-out is GPU memory, so it cannot be the OS's headroom. 128 GB with the 512 MB carve-out
gives 128 - 0.5 - 8 = 119.5 GiB (``ttm.pages_limit=31326208``), 64 GB gives 55.5 GiB (14548992).
:func:`tuned_budget` is the one place that decides this; ``halo doctor``, ``halo plan`` and
``halo deploy`` all call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from haloserve.errors import ConfigError
from haloserve.units import TTM_PAGE_BYTES, GiB, fmt_bytes, ttm_pages_to_bytes

DEFAULT_CARVEOUT = GiB // 2  # BIOS "Auto" / 512 MB (seed 001, errata 5)
DEFAULT_OS_RESERVE = 8 * GiB  # Linux plus llama-server's host-side buffers
MAX_RAM = 4096 * GiB  # anything larger is a typo, not a machine


@dataclass(frozen=True)
class NodeBudget:
    """Memory of one node and how much of it the GPU can use."""

    ram_bytes: int
    carveout_bytes: int
    os_visible_bytes: int
    gtt_limit_bytes: int
    gtt_limit_source: str
    os_reserve_bytes: int
    gtt_usable_bytes: int
    usable_bytes: int
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "ram_bytes": self.ram_bytes,
            "carveout_bytes": self.carveout_bytes,
            "os_visible_bytes": self.os_visible_bytes,
            "gtt_limit_bytes": self.gtt_limit_bytes,
            "gtt_limit_source": self.gtt_limit_source,
            "os_reserve_bytes": self.os_reserve_bytes,
            "gtt_usable_bytes": self.gtt_usable_bytes,
            "usable_bytes": self.usable_bytes,
            "notes": list(self.notes),
        }


def node_budget(
    ram_bytes: int,
    carveout_bytes: int = DEFAULT_CARVEOUT,
    gpu_limit_bytes: int | None = None,
    ttm_pages: int | None = None,
    os_reserve_bytes: int = DEFAULT_OS_RESERVE,
) -> NodeBudget:
    """The GPU budget of a node with ``ram_bytes`` installed (see the module docstring for the formula).

    ``gpu_limit_bytes`` or ``ttm_pages`` give the TTM/GTT limit (at most one of them); without either the
    kernel default applies. Raises :class:`ConfigError` on impossible values.
    """
    if ram_bytes <= 0:
        raise ConfigError("--ram must be positive")
    if ram_bytes > MAX_RAM:
        raise ConfigError(f"--ram {fmt_bytes(ram_bytes)} is not a plausible amount of memory")
    if not 0 <= carveout_bytes < ram_bytes:
        raise ConfigError("--carveout must be at least 0 and smaller than --ram")
    if os_reserve_bytes < 0:
        raise ConfigError("--os-reserve cannot be negative")
    if gpu_limit_bytes is not None and ttm_pages is not None:
        raise ConfigError("give either --gpu-limit or --ttm-pages, not both")
    os_visible = ram_bytes - carveout_bytes
    if os_reserve_bytes >= os_visible:
        raise ConfigError(f"--os-reserve must leave some of the {fmt_bytes(os_visible)} Linux sees")
    notes: list[str] = []
    if ttm_pages is not None:
        if ttm_pages <= 0:
            raise ConfigError("--ttm-pages must be positive")
        if ttm_pages_to_bytes(ttm_pages) > MAX_RAM:
            raise ConfigError(f"--ttm-pages {ttm_pages} is not a plausible TTM limit")
        gtt, source = ttm_pages_to_bytes(ttm_pages), f"ttm.pages_limit={ttm_pages}"
    elif gpu_limit_bytes is not None:
        if gpu_limit_bytes <= 0:
            raise ConfigError("--gpu-limit must be positive")
        if gpu_limit_bytes > MAX_RAM:
            raise ConfigError(f"--gpu-limit {fmt_bytes(gpu_limit_bytes)} is not a plausible TTM limit")
        gtt, source = gpu_limit_bytes, "--gpu-limit"
    else:
        gtt, source = os_visible // 2, "kernel default (half of the RAM Linux sees)"
        notes.append("the kernel's default TTM limit gives the GPU only half the RAM; raise ttm.pages_limit")
    spare = os_visible - os_reserve_bytes
    if gtt > spare:
        notes.append(
            f"the TTM limit ({fmt_bytes(gtt)}) is more than Linux can spare; counting {fmt_bytes(spare)}"
        )
    gtt_usable = min(gtt, spare)
    if carveout_bytes > 4 * GiB:
        notes.append(
            f"a {fmt_bytes(carveout_bytes)} BIOS carve-out is hidden from Linux; "
            "a small carve-out (Auto/512 MB) plus a larger TTM limit leaves the OS more room"
        )
    return NodeBudget(
        ram_bytes=ram_bytes,
        carveout_bytes=carveout_bytes,
        os_visible_bytes=os_visible,
        gtt_limit_bytes=gtt,
        gtt_limit_source=source,
        os_reserve_bytes=os_reserve_bytes,
        gtt_usable_bytes=gtt_usable,
        usable_bytes=carveout_bytes + gtt_usable,
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class TTMRecommendation:
    """Kernel parameters that let the GPU use ``target_bytes`` through GTT."""

    target_bytes: int
    pages_limit: int
    page_pool_size: int
    kernel_args: str
    grub_line: str
    modprobe_line: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "target_bytes": self.target_bytes,
            "pages_limit": self.pages_limit,
            "page_pool_size": self.page_pool_size,
            "kernel_args": self.kernel_args,
            "grub_line": self.grub_line,
            "modprobe_line": self.modprobe_line,
        }


def tuned_budget(
    ram_bytes: int, carveout_bytes: int = DEFAULT_CARVEOUT, os_reserve_bytes: int = DEFAULT_OS_RESERVE
) -> tuple[NodeBudget, TTMRecommendation]:
    """A node's GPU budget once the recommended TTM limit is set, and that limit's kernel settings.

    The one function behind the TTM line of ``halo doctor``, ``halo plan`` and ``halo deploy``.
    """
    ttm = recommend_ttm(node_budget(ram_bytes, carveout_bytes, os_reserve_bytes=os_reserve_bytes))
    pages = ttm.pages_limit
    budget = node_budget(ram_bytes, carveout_bytes, ttm_pages=pages, os_reserve_bytes=os_reserve_bytes)
    return budget, ttm


def recommend_ttm(budget: NodeBudget, target_bytes: int | None = None) -> TTMRecommendation:
    """TTM settings for ``target_bytes`` of GTT (default: all Linux can spare, down to a 1/2 GiB step).

    ``pages = bytes / 4096`` (``GiB x 262144``); the page pool is set to the same size, as the usual
    Strix Halo setup does, so the pages the GPU frees stay ready for reuse.
    """
    spare = budget.os_visible_bytes - budget.os_reserve_bytes
    target = spare if target_bytes is None else target_bytes
    if target <= 0:
        raise ConfigError("the TTM target must be positive")
    target = max(GiB // 2, target // (GiB // 2) * (GiB // 2))
    pages = target // TTM_PAGE_BYTES
    args = f"ttm.pages_limit={pages} ttm.page_pool_size={pages}"
    return TTMRecommendation(
        target_bytes=target,
        pages_limit=pages,
        page_pool_size=pages,
        kernel_args=args,
        grub_line=f'GRUB_CMDLINE_LINUX_DEFAULT="quiet splash {args}"',
        modprobe_line=f"options ttm pages_limit={pages} page_pool_size={pages}",
    )

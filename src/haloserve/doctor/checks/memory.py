"""Memory: RAM, the BIOS carve-out and GTT reported separately, and the TTM limit against installed RAM."""

from __future__ import annotations

from haloserve.doctor import fixes
from haloserve.doctor.budget import gpu_addressable, installed_ram
from haloserve.doctor.check import Check
from haloserve.doctor.checks._common import gib, no_apu
from haloserve.doctor.host import Host
from haloserve.doctor.parse import parse_int
from haloserve.doctor.result import Status, Verdict
from haloserve.errors import ConfigError
from haloserve.planner.budget import DEFAULT_CARVEOUT, tuned_budget
from haloserve.units import TTM_PAGE_BYTES, GiB, fmt_bytes

SECTION = "Memory"
SMALL_CARVEOUT = 4 * GiB  # up to this a carve-out costs little (AMD recommends 0.5 GB)
LARGE_CARVEOUT = 16 * GiB  # past this, check whether the OS is starved
STARVED_SHARE = 0.40  # OS keeps less than this share of installed RAM
STARVED_FLOOR = 16 * GiB  # or less than this much
OS_MINIMUM = 4 * GiB  # a TTM limit must leave at least this to the OS

BIOS_PATH = (
    "# reboot into the firmware setup:\n"
    "sudo systemctl reboot --firmware-setup\n"
    "# then: Advanced > AMD CBS > NBIO Common Options > GFX Configuration > UMA Frame Buffer Size = Auto "
    "(or 512M)\n"
    "# (vendors also call it 'iGPU Memory Size', 'UMA Buffer Size' or 'Dedicated Graphics Memory')"
)


def check_memory(host: Host) -> Verdict:
    """RAM the OS sees, the BIOS carve-out and the GTT limit, each reported once."""
    mem_total = host.mem_total
    if mem_total is None:
        return Verdict(Status.WARN, "cannot read MemTotal from /proc/meminfo", "a readable /proc/meminfo")
    skip = no_apu(host)
    apu = host.apu
    if skip or apu is None:
        extra = "".join(
            f"; {g.target.name if g.target else 'GPU'} VRAM {gib(g.vram_total)}"
            for g in host.gpus
            if g.vram_total
        )
        reason = skip.observed if skip else "no integrated AMD GPU"
        return Verdict(Status.SKIP, f"{reason}; RAM visible to the OS {gib(mem_total)}{extra}")
    expected = (
        "carve-out 0.5-4 GiB (Auto/512 MB recommended); GPU memory through GTT, sized by ttm.pages_limit"
    )
    if apu.vram_total is None or apu.gtt_total is None:
        return Verdict(
            Status.WARN,
            f"RAM visible to the OS {gib(mem_total)}; GPU memory counters unreadable: {apu.mem_problem}",
            expected,
            "Without mem_info_vram_total and mem_info_gtt_total doctor cannot tell how memory is split.",
        )
    carve, gtt = apu.vram_total, apu.gtt_total
    installed = installed_ram(mem_total, carve)
    usable = gpu_addressable(carve, gtt, mem_total)
    observed = (
        f"installed ~{installed // GiB} GiB = OS {gib(mem_total)} + carve-out {gib(carve)}; "
        f"GTT limit {gib(gtt)} (borrowed from the OS RAM, not extra); GPU can address ~{gib(usable)}"
    )
    why = (
        "The carve-out (BIOS UMA frame buffer) is removed from the OS for good, yet the GPU is no faster "
        "with it: "
        "on Strix Halo it reaches RAM through GTT just as well. A big carve-out starves the OS and page "
        "cache."
    )
    starved = mem_total < STARVED_SHARE * installed or mem_total < STARVED_FLOOR
    if carve > LARGE_CARVEOUT and starved:
        return Verdict(
            Status.FAIL,
            f"{observed}: the carve-out leaves the OS only {gib(mem_total)}",
            expected,
            why,
            BIOS_PATH + "\n# then set ttm.pages_limit as the ttm check recommends",
        )
    if carve > SMALL_CARVEOUT:
        return Verdict(
            Status.WARN, f"{observed}: {gib(carve)} is reserved for the GPU alone", expected, why, BIOS_PATH
        )
    return Verdict(Status.OK, observed, expected)


def _ttm_fix(host: Host, pages: int) -> str:
    args = [f"ttm.pages_limit={pages}", f"ttm.page_pool_size={pages}"]
    return (
        fixes.kernel_args(host.distro, args, "ttm", remove=["ttm.pages_limit", "ttm.page_pool_size"])
        + "\ncat /sys/module/ttm/parameters/pages_limit   # after the reboot: should print "
        + str(pages)
    )


def check_ttm(host: Host) -> Verdict:
    """``ttm.pages_limit`` / ``page_pool_size`` against installed RAM (pages are 4 KiB: GiB x 262144)."""
    skip = no_apu(host)
    if skip:
        return skip
    mem_total = host.mem_total
    apu = host.apu
    limit_text = host.root.text("sys/module/ttm/parameters/pages_limit")
    pool_text = host.root.text("sys/module/ttm/parameters/page_pool_size")
    limit, pool = parse_int(limit_text), parse_int(pool_text)
    if mem_total is None or apu is None:
        return Verdict(Status.WARN, "cannot read MemTotal from /proc/meminfo", "a readable /proc/meminfo")
    carve = apu.vram_total or 0
    installed = installed_ram(mem_total, carve)
    # a carve-out above SMALL_CARVEOUT is to be reduced first (memory check): plan for the recommended one
    planned_carve = carve if carve <= SMALL_CARVEOUT else DEFAULT_CARVEOUT
    try:
        budget, ttm = tuned_budget(installed, planned_carve)
    except ConfigError as exc:
        return Verdict(Status.WARN, f"installed ~{installed // GiB} GiB: {exc.message}", "a Strix Halo node")
    expected = (
        f"ttm.pages_limit={ttm.pages_limit} and ttm.page_pool_size={ttm.pages_limit} "
        f"({fmt_bytes(ttm.target_bytes)} of GTT on {installed // GiB} GiB with a {fmt_bytes(planned_carve)} "
        f"carve-out, {fmt_bytes(budget.os_reserve_bytes)} of the RAM Linux sees left to it)"
    )
    why = (
        "TTM caps how much RAM the GPU may map (GTT). The kernel default is half of RAM, so a 128 GB machine "
        "can give a model only ~62 GiB; a limit above the RAM the OS has lets a model push the OS into OOM."
    )
    notes: list[str] = []
    if planned_carve != carve:
        notes.append(
            "The recommended values assume the carve-out is first reduced to 512 MB (see the memory check)."
        )
    if host.cmdline.has("amdgpu.gttsize"):
        notes.append("amdgpu.gttsize is deprecated: GTT now follows ttm.pages_limit; remove amdgpu.gttsize.")
    notes.append(
        "Alternative to the kernel command line: `pipx install amd-debug-tools && amd-ttm --set "
        f"{ttm.target_bytes / GiB:g}` (writes /etc/modprobe.d/ttm.conf; needs the initramfs rebuilt when "
        "ttm is in it)."
    )
    if limit is None or limit <= 0:
        shown = "missing" if limit_text is None else f"not a number ({limit_text[:40]!r})"
        return Verdict(
            Status.WARN,
            f"/sys/module/ttm/parameters/pages_limit {shown}",
            expected,
            why,
            _ttm_fix(host, ttm.pages_limit),
            tuple(notes),
        )
    limit_bytes = limit * TTM_PAGE_BYTES
    pool_shown = "unreadable" if pool is None else f"{pool} pages ({gib(pool * TTM_PAGE_BYTES)})"
    observed = (
        f"pages_limit {limit} pages ({gib(limit_bytes)}), page_pool_size {pool_shown}; "
        f"OS RAM {gib(mem_total)}"
    )
    default = abs(limit - mem_total // TTM_PAGE_BYTES // 2) <= max(1, limit // 100)
    if limit_bytes >= mem_total:
        return Verdict(
            Status.FAIL,
            f"{observed}: the limit is more than the OS has",
            expected,
            why,
            _ttm_fix(host, ttm.pages_limit),
            tuple(notes),
        )
    if mem_total - limit_bytes < OS_MINIMUM:
        return Verdict(
            Status.WARN,
            f"{observed}: leaves only {gib(mem_total - limit_bytes)} to the OS",
            expected,
            why,
            _ttm_fix(host, ttm.pages_limit),
            tuple(notes),
        )
    if limit_bytes < 0.9 * ttm.target_bytes:
        what = "the kernel default (half of RAM)" if default else "below the recommendation"
        return Verdict(
            Status.WARN,
            f"{observed}: {what}",
            expected,
            why,
            _ttm_fix(host, ttm.pages_limit),
            tuple(notes),
        )
    if pool is not None and pool < limit:
        notes.insert(
            0,
            f"page_pool_size ({pool}) is below pages_limit; setting both to {limit} keeps freed GPU pages "
            "pooled.",
        )
    return Verdict(Status.OK, observed, expected, notes=tuple(notes))


CHECKS = (
    Check("memory", "Memory split", SECTION, check_memory),
    Check("ttm", "TTM / GTT limit", SECTION, check_ttm),
)

"""Kernel and driver: kernel version, the amdgpu driver, and the IOMMU."""

from __future__ import annotations

from haloserve.doctor import fixes
from haloserve.doctor.check import Check
from haloserve.doctor.checks._common import no_amd_gpu
from haloserve.doctor.host import Host
from haloserve.doctor.parse import KernelVersion, ubuntu_abi
from haloserve.doctor.result import Status, Verdict

SECTION = "Kernel and driver"
RECOMMENDED = (6, 16, 9)  # errata 8: the recommended minimum, a warning below it
AMD_FIXED = (6, 18, 4)  # AMD's ROCm docs: first upstream kernel with the Strix Halo KFD fixes
UBUNTU_OEM_FIXED_ABI = 1018  # AMD lists Ubuntu 24.04 OEM 6.14.0-1018 and later as supported


def _fmt(v: tuple[int, int, int]) -> str:
    return ".".join(map(str, v))


def _upgrade(distro: str) -> str:
    return {
        "fedora": "sudo dnf upgrade --refresh 'kernel*'\nsudo reboot",
        "arch": "sudo pacman -Syu linux\nsudo reboot",
        "debian": (
            "apt list 'linux-oem-24.04*' 'linux-generic-hwe-*' 2>/dev/null   # pick the newest kernel "
            "offered\n"
            "sudo apt install <that package>\nsudo reboot"
        ),
    }.get(distro, f"# install a kernel >= {_fmt(AMD_FIXED)} from your distribution, then reboot")


def judge_kernel(version: KernelVersion | None, raw: str | None, distro: str) -> Verdict:
    """The kernel verdict: below 6.16.9 warns (errata 8), Ubuntu OEM >= 6.14.0-1018 counts as fixed."""
    why = (
        "Strix Halo needs recent amdgpu/KFD code: older kernels report the wrong memory, fail to create "
        "compute queues or hang under load."
    )
    expected = (
        f">= {_fmt(RECOMMENDED)} (recommended minimum); AMD documents >= {_fmt(AMD_FIXED)} for ROCm 7.2+"
    )
    if version is None:
        shown = "unreadable" if raw is None else f"unparseable ({raw.strip()[:60]!r})"
        return Verdict(Status.WARN, f"kernel version {shown}", expected, why)
    abi = ubuntu_abi(version)
    if (
        version.triple[:2] == (6, 14)
        and "oem" in version.suffix
        and abi is not None
        and abi >= UBUNTU_OEM_FIXED_ABI
    ):
        return Verdict(
            Status.OK,
            f"{version} (Ubuntu OEM kernel carrying the Strix Halo KFD fixes)",
            expected,
            notes=(
                f"AMD lists Ubuntu 24.04 OEM 6.14.0-{UBUNTU_OEM_FIXED_ABI} and later as supported for "
                "Strix Halo.",
            ),
        )
    if version.triple < RECOMMENDED:
        return Verdict(
            Status.WARN,
            f"{version} is older than {_fmt(RECOMMENDED)}",
            expected,
            why + " Some users run 6.15.x successfully, so this is a warning, not a failure.",
            _upgrade(distro),
        )
    notes: tuple[str, ...] = ()
    if version.triple < AMD_FIXED:
        notes = (
            f"AMD's Strix Halo page names {_fmt(AMD_FIXED)} as the first upstream kernel with the KFD "
            "queue and "
            "memory fixes that ROCm 7.2+ expects; upgrade if ROCm workloads fail to start or hang.",
        )
    return Verdict(Status.OK, str(version), expected, notes=notes)


def check_kernel(host: Host) -> Verdict:
    """Kernel version from ``/proc/sys/kernel/osrelease``."""
    return judge_kernel(host.kernel, host.kernel_release.text, host.distro)


def check_amdgpu(host: Host) -> Verdict:
    """The amdgpu driver: loaded, or why not when an AMD GPU is on the bus."""
    why = "amdgpu drives the GPU and provides /dev/dri and KFD (/dev/kfd), which ROCm and Vulkan both need."
    if host.amdgpu_loaded:
        version = host.root.text("sys/module/amdgpu/version")
        shown = f"loaded (DKMS {version})" if version else "loaded (in-tree driver)"
        return Verdict(Status.OK, f"amdgpu {shown}", "amdgpu loaded")
    amd = host.amd_pci_gpus
    if not amd:
        return Verdict(Status.SKIP, "amdgpu not loaded, and no AMD display device on PCI", "amdgpu loaded")
    reasons = []
    if host.cmdline.has("nomodeset"):
        reasons.append("`nomodeset` is on the kernel command line")
    if host.cmdline.get("amdgpu.modeset") == "0":
        reasons.append("`amdgpu.modeset=0` is on the kernel command line")
    blacklisted = host.cmdline.values("modprobe.blacklist") + host.cmdline.values("module_blacklist")
    if "amdgpu" in blacklisted:
        reasons.append("amdgpu is blacklisted on the kernel command line")
    devices = ", ".join(f"{d.address} (1002:{d.device or 0:04x})" for d in amd)
    observed = f"AMD GPU on PCI ({devices}) but amdgpu is not loaded"
    if reasons:
        observed += ": " + "; ".join(reasons)
    fix_lines = []
    if reasons:
        fix_lines.append(
            "# remove nomodeset / amdgpu.modeset=0 / the amdgpu blacklist from GRUB_CMDLINE_LINUX_DEFAULT:\n"
            "sudoedit /etc/default/grub"
        )
    fix_lines += ["sudo modprobe amdgpu", "sudo dmesg | grep -iE 'amdgpu|kfd' | tail -n 30   # why it failed"]
    return Verdict(Status.FAIL, observed, "amdgpu loaded", why, "\n".join(fix_lines))


def check_iommu(host: Host) -> Verdict:
    """IOMMU translation for the GPU: off or passthrough is best for LLM inference."""
    skip = no_amd_gpu(host)
    if skip:
        return skip
    cmd = host.cmdline
    why = (
        "With the IOMMU translating the iGPU's DMA, every memory access pays for address translation; "
        "Strix Halo users report about 6 % more memory bandwidth (tokens/s) with it off or in passthrough."
    )
    expected = "iommu=pt (passthrough) or amd_iommu=off, or IOMMU disabled in the BIOS"
    fix = (
        "# either (keeps the IOMMU for VMs/VFIO and for untrusted Thunderbolt/USB4 devices):\n"
        + fixes.kernel_args(host.distro, ["iommu=pt"], "iommu")
        + "\n# or, for the last few percent (disables VFIO passthrough and DMA protection):\n"
        + fixes.kernel_args(host.distro, ["amd_iommu=off"], "iommu")
        + "\n# or in the BIOS: Advanced > AMD CBS > NBIO Common Options > IOMMU = Disabled"
    )
    if cmd.get("amd_iommu") == "off" or cmd.get("iommu") == "off":
        return Verdict(Status.OK, "IOMMU disabled on the kernel command line", expected)
    gpu = host.apu or (host.gpus[0] if host.gpus else None)
    domain = None
    if gpu is not None and gpu.render_minor is not None:
        domain = host.root.text(f"sys/class/drm/renderD{gpu.render_minor}/device/iommu_group/type")
    if domain == "identity":
        return Verdict(Status.OK, "IOMMU on, GPU in passthrough (identity domain)", expected)
    if domain is None and (cmd.get("iommu") == "pt" or cmd.get("amd_iommu") == "pt"):
        return Verdict(Status.OK, "IOMMU in passthrough mode (iommu=pt)", expected)
    units = host.root.listdir("sys/class/iommu")
    if domain is None and not units:
        return Verdict(Status.OK, "no IOMMU active (off in the BIOS, or absent)", expected)
    where = f"GPU DMA domain {domain!r}" if domain else f"IOMMU units: {', '.join(units)}"
    return Verdict(Status.WARN, f"IOMMU translating GPU DMA ({where})", expected, why, fix)


CHECKS = (
    Check("kernel", "Kernel version", SECTION, check_kernel),
    Check("amdgpu", "amdgpu driver", SECTION, check_amdgpu),
    Check("iommu", "IOMMU", SECTION, check_iommu),
)

"""Probes: what doctor reads from a root, turned once into plain data that every check shares.

Checks never touch paths themselves beyond what this module offers, so a fixture tree, a snapshot and
the live host all go through the same reads (and a snapshot captures exactly these).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

from haloserve.doctor import parse
from haloserve.doctor.facts import HostFacts
from haloserve.doctor.gfx import GfxTarget, decode
from haloserve.doctor.manifest import Node
from haloserve.doctor.root import Read, Root

KFD_NODES = "sys/class/kfd/kfd/topology/nodes"
AMD_VENDOR = 0x1002


@dataclass(frozen=True)
class DoctorOptions:
    """What the user told doctor beyond the root: where models live and whose groups to check."""

    models_dir: str | None = None
    user: str | None = None


@dataclass(frozen=True)
class GpuNode:
    """One GPU from the KFD topology, with its DRM memory counters when readable."""

    node: str
    target_version: int | None
    target: GfxTarget | None
    vendor_id: int | None = None
    device_id: int | None = None
    render_minor: int | None = None
    simd_count: int | None = None
    simd_per_cu: int | None = None
    problem: str | None = None
    vram_total: int | None = None
    gtt_total: int | None = None
    mem_problem: str | None = None

    @property
    def compute_units(self) -> int | None:
        """SIMDs divided by SIMDs per CU (40 on a Radeon 8060S)."""
        if not self.simd_count or not self.simd_per_cu:
            return None
        return self.simd_count // self.simd_per_cu

    @property
    def integrated(self) -> bool:
        """True for an APU's GPU (known integrated targets)."""
        return self.target is not None and self.target.integrated

    @property
    def render_node(self) -> str | None:
        """``dev/dri/renderD128`` for this GPU."""
        return None if self.render_minor is None else f"dev/dri/renderD{self.render_minor}"

    @property
    def label(self) -> str:
        """A one-line description for reports."""
        if self.target is not None:
            text = self.target.label
        elif self.target_version is not None:
            text = f"unknown target (gfx_target_version {self.target_version})"
        else:
            text = "unknown GPU"
        extra = [f"KFD node {self.node}"]
        if self.compute_units:
            extra.append(f"{self.compute_units} CUs")
        if self.render_minor is not None:
            extra.append(f"renderD{self.render_minor}")
        return f"{text} [{', '.join(extra)}]"


@dataclass(frozen=True)
class PciDevice:
    """A PCI function's vendor, device and class."""

    address: str
    vendor: int | None
    device: int | None
    pci_class: int | None

    @property
    def is_display(self) -> bool:
        """True for display controllers (class 0x03xxxx)."""
        return self.pci_class is not None and (self.pci_class >> 16) == 0x03


@dataclass(frozen=True)
class RdmaGid:
    """One non-empty GID table entry of an RDMA port."""

    index: int
    gid: str
    type: str | None
    ndev: str | None

    @property
    def ipv4(self) -> str | None:
        """The IPv4 address of an IPv4-mapped GID."""
        return parse.gid_ipv4(self.gid)

    @property
    def roce_v2(self) -> bool:
        """True for a RoCE v2 entry."""
        return (self.type or "").strip().lower() == "roce v2"


@dataclass(frozen=True)
class RdmaPort:
    """An RDMA device port: state, link layer, rate, GIDs and its network devices."""

    device: str
    port: str
    state: str | None
    phys_state: str | None
    link_layer: str | None
    rate: str | None
    gids: tuple[RdmaGid, ...]
    netdevs: tuple[str, ...]

    @property
    def name(self) -> str:
        """``mlx5_0 port 1``."""
        return f"{self.device} port {self.port}"

    @property
    def active(self) -> bool:
        """True when the port is ACTIVE."""
        return (self.state or "").upper() == "ACTIVE"

    @property
    def ethernet(self) -> bool:
        """True for RoCE (Ethernet link layer)."""
        return (self.link_layer or "").strip().lower() == "ethernet"

    def roce_v2_ipv4(self) -> list[RdmaGid]:
        """RoCE v2 GIDs that carry an IPv4 address (what NCCL needs across subnets)."""
        return [g for g in self.gids if g.roce_v2 and g.ipv4]


def _numeric_sorted(names: list[str]) -> list[str]:
    return sorted((n for n in names if n.isdigit()), key=int)


class Host:
    """Everything doctor knows about one root: files through cached probes, and the process facts."""

    def __init__(self, root: Root, facts: HostFacts, options: DoctorOptions | None = None) -> None:
        self.root = root
        self.facts = facts
        self.options = options or DoctorOptions()

    # -- kernel and boot --------------------------------------------------------------------------
    @cached_property
    def kernel_release(self) -> Read:
        """``/proc/sys/kernel/osrelease`` as read."""
        return self.root.read("proc/sys/kernel/osrelease")

    @cached_property
    def kernel(self) -> parse.KernelVersion | None:
        """The parsed kernel version."""
        return parse.parse_kernel_version(self.kernel_release.text)

    @cached_property
    def cmdline_text(self) -> str | None:
        """``/proc/cmdline``."""
        return self.root.text("proc/cmdline")

    @cached_property
    def cmdline(self) -> parse.Cmdline:
        """The parsed kernel command line."""
        return parse.parse_cmdline(self.cmdline_text)

    @cached_property
    def os_release(self) -> dict[str, str]:
        """``/etc/os-release`` (falling back to ``/usr/lib/os-release``)."""
        text = self.root.text("etc/os-release")
        if text is None:
            text = self.root.text("usr/lib/os-release")
        return parse.parse_os_release(text)

    @cached_property
    def distro(self) -> str:
        """``debian``, ``fedora``, ``arch`` or ``other``: the family that decides how fixes are written."""
        ids = {self.os_release.get("ID", "").lower(), *self.os_release.get("ID_LIKE", "").lower().split()}
        for family, members in (
            ("fedora", {"fedora", "rhel", "centos", "rocky", "almalinux"}),
            ("debian", {"debian", "ubuntu"}),
            ("arch", {"arch", "manjaro", "endeavouros", "cachyos"}),
        ):
            if ids & members:
                return family
        return "other"

    # -- memory ------------------------------------------------------------------------------------
    @cached_property
    def meminfo(self) -> dict[str, int]:
        """``/proc/meminfo`` in bytes."""
        return parse.parse_meminfo(self.root.text("proc/meminfo"))

    @property
    def mem_total(self) -> int | None:
        """RAM the OS sees (``MemTotal``)."""
        value = self.meminfo.get("MemTotal")
        return value if value else None

    # -- users and groups -------------------------------------------------------------------------
    @cached_property
    def etc_group_read(self) -> Read:
        """``/etc/group`` as read."""
        return self.root.read("etc/group")

    @cached_property
    def etc_group(self) -> dict[str, parse.Group]:
        """``/etc/group`` by name."""
        return parse.parse_group_file(self.etc_group_read.text)

    def group_name(self, gid: int) -> str | None:
        """The name of a group id, from ``/etc/group``."""
        for group in self.etc_group.values():
            if group.gid == gid:
                return group.name
        return None

    @property
    def user(self) -> str | None:
        """Whose groups to check: ``--user``, else the process's user."""
        return self.options.user or self.facts.user

    # -- GPUs ----------------------------------------------------------------------------------------
    @cached_property
    def amdgpu_loaded(self) -> bool:
        """True when ``/sys/module/amdgpu`` exists (module loaded or built in)."""
        return self.root.is_dir("sys/module/amdgpu")

    @cached_property
    def pci_devices(self) -> list[PciDevice]:
        """Display-class PCI functions (vendor, device, class)."""
        out: list[PciDevice] = []
        for path in self.root.glob("sys/bus/pci/devices/*"):
            cls = parse.parse_int(self.root.text(f"{path}/class"))
            if cls is None or (cls >> 16) != 0x03:
                continue
            out.append(
                PciDevice(
                    address=path.rsplit("/", 1)[-1],
                    vendor=parse.parse_int(self.root.text(f"{path}/vendor")),
                    device=parse.parse_int(self.root.text(f"{path}/device")),
                    pci_class=cls,
                )
            )
        return out

    @property
    def amd_pci_gpus(self) -> list[PciDevice]:
        """AMD display controllers on PCI, whether or not a driver is bound."""
        return [d for d in self.pci_devices if d.vendor == AMD_VENDOR]

    @cached_property
    def gpus(self) -> list[GpuNode]:
        """GPU nodes of the KFD topology, in node order (the order ROCm numbers devices)."""
        out: list[GpuNode] = []
        for name in _numeric_sorted(self.root.listdir(KFD_NODES)):
            base = f"{KFD_NODES}/{name}"
            gpu_id = parse.parse_int(self.root.text(f"{base}/gpu_id"))
            got = self.root.read(f"{base}/properties")
            props = parse.parse_properties(got.text)
            is_gpu = (
                (gpu_id or 0) > 0 or props.get("simd_count", 0) > 0 or props.get("gfx_target_version", 0) > 0
            )
            if not is_gpu:
                continue
            version = props.get("gfx_target_version")
            problem = None
            if got.text is None:
                problem = f"properties unreadable ({got.error})"
            elif version is None:
                problem = "gfx_target_version missing or not a number in properties"
            target = decode(version) if version else None
            if version and target is None:
                problem = f"gfx_target_version {version} is not a valid target"
            minor = props.get("drm_render_minor")
            node = GpuNode(
                node=name,
                target_version=version,
                target=target,
                vendor_id=props.get("vendor_id"),
                device_id=props.get("device_id"),
                render_minor=minor if minor else None,
                simd_count=props.get("simd_count"),
                simd_per_cu=props.get("simd_per_cu"),
                problem=problem,
            )
            out.append(self._with_memory(node))
        return out

    def _with_memory(self, node: GpuNode) -> GpuNode:
        if node.render_minor is None:
            return node
        base = f"sys/class/drm/renderD{node.render_minor}/device"
        vram = self.root.read(f"{base}/mem_info_vram_total")
        gtt = self.root.read(f"{base}/mem_info_gtt_total")
        vram_total = parse.parse_size_bytes(vram.text)
        gtt_total = parse.parse_size_bytes(gtt.text)
        problems = []
        for label, got, value in (
            ("mem_info_vram_total", vram, vram_total),
            ("mem_info_gtt_total", gtt, gtt_total),
        ):
            if got.text is None:
                problems.append(f"{base}/{label}: {got.error}")
            elif value is None:
                problems.append(f"{base}/{label}: not a byte count ({got.text.strip()[:40]!r})")
        return replace(
            node, vram_total=vram_total, gtt_total=gtt_total, mem_problem="; ".join(problems) or None
        )

    @property
    def amd_gpu_present(self) -> bool:
        """True when an AMD GPU shows up in KFD, on PCI, or the amdgpu driver is loaded."""
        return bool(self.gpus) or bool(self.amd_pci_gpus) or self.amdgpu_loaded

    @property
    def apu(self) -> GpuNode | None:
        """The integrated GPU (Strix Halo first), if any."""
        for gpu in self.gpus:
            if gpu.target is not None and gpu.target.strix_halo:
                return gpu
        for gpu in self.gpus:
            if gpu.integrated:
                return gpu
        return None

    @property
    def strix_halo(self) -> GpuNode | None:
        """The gfx1151 GPU, if present."""
        return next((g for g in self.gpus if g.target is not None and g.target.strix_halo), None)

    def stat(self, path: str) -> Node | None:
        """``stat`` through the root (for device nodes and binaries)."""
        return self.root.stat(path)

    # -- RDMA ------------------------------------------------------------------------------------------
    @cached_property
    def rdma_ports(self) -> list[RdmaPort]:
        """Every port of every device under ``/sys/class/infiniband``."""
        out: list[RdmaPort] = []
        for dev in self.root.listdir("sys/class/infiniband"):
            base = f"sys/class/infiniband/{dev}"
            device_nets = self.root.listdir(f"{base}/device/net")
            for port in _numeric_sorted(self.root.listdir(f"{base}/ports")):
                pbase = f"{base}/ports/{port}"
                gids: list[RdmaGid] = []
                for idx in _numeric_sorted(self.root.listdir(f"{pbase}/gids")):
                    text = self.root.text(f"{pbase}/gids/{idx}")
                    if parse.gid_is_empty(text):
                        continue
                    gids.append(
                        RdmaGid(
                            index=int(idx),
                            gid=(text or "").strip(),
                            type=self.root.text(f"{pbase}/gid_attrs/types/{idx}"),
                            ndev=self.root.text(f"{pbase}/gid_attrs/ndevs/{idx}"),
                        )
                    )
                netdevs = sorted({g.ndev for g in gids if g.ndev} | set(device_nets))
                out.append(
                    RdmaPort(
                        device=dev,
                        port=port,
                        state=parse.port_state(self.root.text(f"{pbase}/state")),
                        phys_state=parse.port_state(self.root.text(f"{pbase}/phys_state")),
                        link_layer=self.root.text(f"{pbase}/link_layer"),
                        rate=self.root.text(f"{pbase}/rate"),
                        gids=tuple(gids),
                        netdevs=tuple(netdevs),
                    )
                )
        return out

"""Pure parsers for the text doctor reads: kernel and ROCm versions, meminfo, KFD properties, the kernel
command line, ``/etc/group``, ``/etc/os-release`` and RDMA GIDs. None of them raises on garbage."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from haloserve.units import KiB


def parse_int(text: str | None) -> int | None:
    """A decimal or ``0x`` hexadecimal integer, or ``None`` for anything else."""
    if text is None:
        return None
    raw = text.strip()
    try:
        return int(raw, 16) if raw.lower().startswith("0x") else int(raw, 10)
    except ValueError:
        return None


def parse_size_bytes(text: str | None) -> int | None:
    """A non-negative byte count as sysfs prints it (``mem_info_vram_total``), else ``None``."""
    value = parse_int(text)
    return value if value is not None and value >= 0 else None


@dataclass(frozen=True)
class KernelVersion:
    """``6.17.0-14-generic`` as numbers plus the distribution suffix."""

    release: str
    major: int
    minor: int
    patch: int
    suffix: str

    @property
    def triple(self) -> tuple[int, int, int]:
        """``(major, minor, patch)`` for comparisons."""
        return (self.major, self.minor, self.patch)

    def __str__(self) -> str:
        return self.release


_KERNEL = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(.*)$")


def parse_kernel_version(text: str | None) -> KernelVersion | None:
    """Parse ``/proc/sys/kernel/osrelease``; ``None`` when it is not a kernel version."""
    if not text:
        return None
    release = text.strip().split()[0] if text.strip() else ""
    m = _KERNEL.match(release)
    if not m:
        return None
    return KernelVersion(release, int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), m.group(4))


def ubuntu_abi(version: KernelVersion) -> int | None:
    """The Ubuntu ABI number of ``6.14.0-1018-oem`` (1018), else ``None``."""
    m = re.match(r"^-(\d+)(?:-|$)", version.suffix)
    return int(m.group(1)) if m else None


_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """The first ``X.Y[.Z]`` in a version string (``7.0.2-56`` -> ``(7, 0, 2)``), else ``None``."""
    if not text:
        return None
    m = _VERSION.search(text)
    if not m:
        return None
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def parse_meminfo(text: str | None) -> dict[str, int]:
    """``/proc/meminfo`` as bytes by key (``MemTotal`` ...); malformed lines are skipped."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        fields = rest.split()
        if not fields or not fields[0].isdigit():
            continue
        value = int(fields[0])
        if len(fields) > 1 and fields[1].lower() == "kb":
            value *= KiB
        out[key.strip()] = value
    return out


def parse_properties(text: str | None) -> dict[str, int]:
    """KFD ``properties`` (``name value`` per line) as integers; malformed lines are skipped."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) != 2:
            continue
        value = parse_int(fields[1])
        if value is not None:
            out[fields[0]] = value
    return out


@dataclass(frozen=True)
class Cmdline:
    """The kernel command line as ``key=value`` parameters (last one wins, as for module params)."""

    params: tuple[tuple[str, str | None], ...]

    def get(self, key: str) -> str | None:
        """The value of the last ``key=value`` (``""`` for a bare flag, ``None`` when absent)."""
        found: str | None = None
        for k, v in self.params:
            if k == key:
                found = "" if v is None else v
        return found

    def has(self, key: str) -> bool:
        """True when ``key`` appears, with or without a value."""
        return any(k == key for k, _ in self.params)

    def values(self, key: str) -> list[str]:
        """Every value given for ``key`` (comma lists such as ``modprobe.blacklist`` split)."""
        out: list[str] = []
        for k, v in self.params:
            if k == key and v:
                out.extend(p for p in v.split(",") if p)
        return out


def _module_key(key: str) -> str:
    # The kernel treats '-' and '_' alike in parameter names.
    return key.replace("-", "_")


def parse_cmdline(text: str | None) -> Cmdline:
    """Parse ``/proc/cmdline``; everything after a lone ``--`` belongs to init and is ignored."""
    try:
        words = shlex.split(text or "")
    except ValueError:
        words = (text or "").split()
    params: list[tuple[str, str | None]] = []
    for word in words:
        if word == "--":
            break
        key, sep, value = word.partition("=")
        params.append((_module_key(key), value if sep else None))
    return Cmdline(tuple(params))


# Parameters doctor judges; a snapshot keeps only these (a command line can hold anything).
CMDLINE_KEYS: tuple[str, ...] = (
    "amd_iommu",
    "iommu",
    "intel_iommu",
    "nomodeset",
    "modprobe.blacklist",
    "module_blacklist",
)
CMDLINE_PREFIXES: tuple[str, ...] = ("ttm.", "amdgpu.", "amdttm.")


def is_doctor_param(key: str) -> bool:
    """True for the command-line parameters doctor looks at."""
    return key in CMDLINE_KEYS or key.startswith(CMDLINE_PREFIXES)


@dataclass(frozen=True)
class Group:
    """One ``/etc/group`` line."""

    name: str
    gid: int
    members: tuple[str, ...]


def parse_group_file(text: str | None) -> dict[str, Group]:
    """``/etc/group`` by group name; comments and malformed lines are skipped."""
    out: dict[str, Group] = {}
    for line in (text or "").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) < 3:
            continue
        gid = parse_int(fields[2])
        if gid is None or gid < 0:
            continue
        members = tuple(m.strip() for m in (fields[3] if len(fields) > 3 else "").split(",") if m.strip())
        out[fields[0].strip()] = Group(fields[0].strip(), gid, members)
    return out


def parse_os_release(text: str | None) -> dict[str, str]:
    """``/etc/os-release`` as a mapping (quotes removed)."""
    out: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if not sep or not key.strip() or key.strip().startswith("#"):
            continue
        try:
            parts = shlex.split(value)
        except ValueError:
            parts = [value.strip().strip("\"'")]
        out[key.strip()] = " ".join(parts)
    return out


def gid_ipv4(text: str | None) -> str | None:
    """The IPv4 address in an IPv4-mapped GID (``0000:...:ffff:0a00:0101`` -> ``10.0.1.1``), else ``None``."""
    if not text:
        return None
    parts = text.strip().lower().split(":")
    if len(parts) != 8 or any(len(p) != 4 or not re.fullmatch(r"[0-9a-f]{4}", p) for p in parts):
        return None
    if parts[:5] != ["0000"] * 5 or parts[5] != "ffff":
        return None
    value = int(parts[6] + parts[7], 16)
    return ".".join(str((value >> s) & 0xFF) for s in (24, 16, 8, 0))


def gid_is_empty(text: str | None) -> bool:
    """True for an unused GID table entry (all zeros, or unreadable)."""
    if not text:
        return True
    return set(text.strip().replace(":", "")) <= {"0"}


def port_state(text: str | None) -> str | None:
    """``4: ACTIVE`` -> ``ACTIVE``; ``5: LinkUp`` -> ``LinkUp``; ``None`` when unreadable."""
    if not text:
        return None
    _, _, name = text.strip().partition(":")
    name = (name or text).strip()
    return name if name and name.isascii() and name.isprintable() else None

"""RDMA for multi-node vLLM/Ray (RCCL/NCCL): RoCE v2 link, GID, MTU, ECN, ``ulimit -l``, NCCL settings."""

from __future__ import annotations

from haloserve.doctor.check import Check
from haloserve.doctor.facts import UNLIMITED
from haloserve.doctor.host import Host, RdmaPort
from haloserve.doctor.parse import parse_int
from haloserve.doctor.result import Status, Verdict, worst

SECTION = "RDMA"
JUMBO = 9000
NO_DEVICES = "no RDMA devices in /sys/class/infiniband"


def _ports(host: Host) -> list[RdmaPort]:
    return host.rdma_ports


def _roce(host: Host) -> list[RdmaPort]:
    """Active Ethernet (RoCE) ports."""
    return [p for p in host.rdma_ports if p.active and p.ethernet]


def check_rdma(host: Host) -> Verdict:
    """RDMA ports: state ACTIVE, physical link up, link layer Ethernet (RoCE)."""
    ports = _ports(host)
    expected = "at least one port ACTIVE / LinkUp with link layer Ethernet (RoCE v2)"
    if not ports:
        return Verdict(Status.SKIP, NO_DEVICES, expected)
    lines, notes = [], []
    for p in ports:
        rate = f", {p.rate}" if p.rate else ""
        lines.append(f"{p.name}: {p.state or '?'}, {p.phys_state or '?'}, {p.link_layer or '?'}{rate}")
        if p.active and not p.ethernet:
            notes.append(
                f"{p.name} is native InfiniBand: the RoCE checks (GID type, MTU 9000, ECN) do not apply to "
                "it."
            )
    active = [p for p in ports if p.active]
    observed = "; ".join(lines)
    why = (
        "NCCL/RCCL only use ports that are ACTIVE; a down port silently falls back to TCP sockets (or hangs)."
    )
    down = [p for p in ports if not p.active]
    netdevs = sorted({n for p in down for n in p.netdevs})
    fix = "\n".join(
        [f"sudo ip link set dev {n} up" for n in netdevs]
        + ["ibv_devinfo   # state and phys_state per port; check cables, switch ports and the NIC firmware"]
    )
    if not active:
        return Verdict(Status.FAIL, observed, expected, why, fix, tuple(notes))
    if down:
        notes.append("Ports that are not ACTIVE are ignored by NCCL; that is fine if they are unused.")
    return Verdict(Status.OK, observed, expected, notes=tuple(notes))


def check_gid(host: Host) -> Verdict:
    """A RoCE v2 GID with an IPv4-mapped address on every active RoCE port."""
    expected = "a GID of type 'RoCE v2' holding an IPv4 address (::ffff:a.b.c.d) on each active RoCE port"
    if not host.rdma_ports:
        return Verdict(Status.SKIP, NO_DEVICES, expected)
    roce = _roce(host)
    if not roce:
        return Verdict(Status.SKIP, "no active RoCE (Ethernet) port", expected)
    why = (
        "RoCE v2 runs RDMA over UDP/IP, so it crosses subnets and routers; NCCL needs the GID index of a "
        "RoCE v2 entry with the node's IPv4 address. No such GID means no IPv4 address on the RDMA netdev."
    )
    good, bad = [], []
    for p in roce:
        gids = p.roce_v2_ipv4()
        if gids:
            good.append(", ".join(f"{p.name} GID {g.index} = {g.ipv4} ({g.ndev or '?'})" for g in gids))
        else:
            v2 = sum(1 for g in p.gids if g.roce_v2)
            bad.append(
                f"{p.name}: no RoCE v2 IPv4 GID ({len(p.gids)} GIDs, {v2} RoCE v2, all IPv6/link-local)"
            )
    observed = "; ".join(good + bad)
    if bad:
        devs = sorted({n for p in roce if not p.roce_v2_ipv4() for n in p.netdevs}) or ["<netdev>"]
        fix = "\n".join(
            [
                f"sudo ip addr add 10.0.1.X/24 dev {n}   # the node's cluster address; persist it in "
                "netplan/nmcli"
                for n in devs
            ]
            + [
                "grep -H . /sys/class/infiniband/*/ports/*/gid_attrs/types/* 2>/dev/null   # RoCE v2 "
                "entries appear",
            ]
        )
        return Verdict(Status.FAIL, observed, expected, why, fix)
    return Verdict(Status.OK, observed, expected)


def check_mtu(host: Host) -> Verdict:
    """The netdev behind each active RoCE port has MTU 9000."""
    expected = f"MTU {JUMBO} on every RoCE netdev (and on every switch port and peer)"
    if not host.rdma_ports:
        return Verdict(Status.SKIP, NO_DEVICES, expected)
    roce = _roce(host)
    if not roce:
        return Verdict(Status.SKIP, "no active RoCE (Ethernet) port", expected)
    statuses, parts, fix_lines = [], [], []
    for dev in sorted({n for p in roce for n in p.netdevs}):
        raw = host.root.text(f"sys/class/net/{dev}/mtu")
        mtu = parse_int(raw)
        if mtu is None:
            statuses.append(Status.WARN)
            parts.append(f"{dev}: MTU unreadable")
        elif mtu < JUMBO:
            statuses.append(Status.WARN)
            parts.append(f"{dev}: MTU {mtu}")
            fix_lines.append(f"sudo ip link set dev {dev} mtu {JUMBO}")
        else:
            statuses.append(Status.OK)
            parts.append(f"{dev}: MTU {mtu}")
    if not parts:
        return Verdict(Status.WARN, "no network device found for the active RoCE ports", expected)
    status = worst(statuses)
    why = (
        "RoCE's path MTU follows the netdev: at 1500 it drops to 1024-byte RDMA packets and loses bandwidth; "
        "mismatched MTUs between peers or the switch drop packets and stall NCCL."
    )
    fix = ""
    if fix_lines:
        persist = (
            "# persist it: netplan `mtu: 9000` (sudo netplan apply) or "
            "nmcli connection modify <conn> 802-3-ethernet.mtu 9000"
        )
        fix = "\n".join([*fix_lines, persist])
    return Verdict(status, "; ".join(parts), expected, why if status is not Status.OK else "", fix)


def check_ecn(host: Host) -> Verdict:
    """ECN for RoCE (``/sys/class/net/<dev>/ecn/roce_np|roce_rp/enable/<prio>``) is enabled."""
    expected = "ECN enabled for RoCE (notification and reaction point) on the priority RoCE uses"
    if not host.rdma_ports:
        return Verdict(Status.SKIP, NO_DEVICES, expected)
    roce = _roce(host)
    if not roce:
        return Verdict(Status.SKIP, "no active RoCE (Ethernet) port", expected)
    parts, disabled, unknown = [], [], []
    for dev in sorted({n for p in roce for n in p.netdevs}):
        enabled: dict[str, list[str]] = {}
        for point in ("roce_np", "roce_rp"):
            prios = host.root.listdir(f"sys/class/net/{dev}/ecn/{point}/enable")
            enabled[point] = [
                pr
                for pr in prios
                if parse_int(host.root.text(f"sys/class/net/{dev}/ecn/{point}/enable/{pr}")) == 1
            ]
            if not prios:
                enabled.pop(point)
        if not enabled:
            unknown.append(dev)
            continue
        if all(enabled.get(pt) for pt in ("roce_np", "roce_rp")):
            shown = ", ".join(f"{pt} on priorities {','.join(v)}" for pt, v in enabled.items())
            parts.append(f"{dev}: {shown}")
        else:
            disabled.append(dev)
            parts.append(
                f"{dev}: ECN off ({', '.join(pt for pt in ('roce_np', 'roce_rp') if not enabled.get(pt))})"
            )
    if unknown:
        parts.append(f"{', '.join(unknown)}: no ECN settings in sysfs (driver without the ecn/ tree)")
    observed = "; ".join(parts)
    if disabled:
        paths = " ".join(
            f"/sys/class/net/{dev}/ecn/{pt}/enable/$p" for dev in disabled for pt in ("roce_np", "roce_rp")
        )
        fix = f"for p in 0 1 2 3 4 5 6 7; do echo 1 | sudo tee {paths}; done"
        why = (
            "Without ECN (DCQCN) congestion on a shared switch turns into drops and go-back-N retransmits; "
            "RoCE v2 throughput collapses under load."
        )
        return Verdict(Status.WARN, observed, expected, why, fix)
    if not parts or (unknown and len(unknown) == len(parts)):
        return Verdict(
            Status.SKIP,
            observed,
            expected,
            notes=(
                "Check congestion control with your NIC's tools (mlnx_qos, devlink, or the vendor's "
                "ethtool options).",
            ),
        )
    return Verdict(Status.OK, observed, expected)


def _limit(value: int | None) -> str:
    return "unknown" if value is None else "unlimited" if value == UNLIMITED else f"{value // 1024} KiB"


def check_memlock(host: Host) -> Verdict:
    """``ulimit -l`` is unlimited, so RDMA can pin (register) large buffers."""
    expected = "ulimit -l unlimited (soft and hard)"
    if not host.rdma_ports:
        return Verdict(Status.SKIP, NO_DEVICES, expected)
    soft, hard = host.facts.memlock_soft, host.facts.memlock_hard
    if soft is None:
        return Verdict(Status.SKIP, "ulimit -l not known for this root", expected)
    observed = f"ulimit -l soft {_limit(soft)}, hard {_limit(hard)}"
    if soft == UNLIMITED:
        return Verdict(Status.OK, observed, expected)
    why = (
        "RDMA registers (pins) memory; NCCL/RCCL and UCX fail with 'Cannot allocate memory' from ibv_reg_mr "
        "when the locked-memory limit is small. This is the limit of the shell doctor ran in; services and "
        "containers have their own."
    )
    fix = (
        "printf '%s\\n' '* soft memlock unlimited' '* hard memlock unlimited' "
        "| sudo tee /etc/security/limits.d/90-rdma.conf\n"
        "# then log out and back in; systemd services: LimitMEMLOCK=infinity; docker run: --ulimit memlock=-1"
    )
    return Verdict(Status.WARN, observed, expected, why, fix)


def _suggest(roce: list[RdmaPort]) -> dict[str, str]:
    usable = [p for p in roce if p.roce_v2_ipv4()]
    if not usable:
        return {}
    hcas = ",".join(f"{p.device}:{p.port}" for p in usable)
    first = usable[0].roce_v2_ipv4()[0]
    ifname = first.ndev or (usable[0].netdevs[0] if usable[0].netdevs else "")
    out = {"NCCL_IB_HCA": f"={hcas}", "NCCL_IB_GID_INDEX": str(first.index)}
    if ifname:
        out["NCCL_SOCKET_IFNAME"] = f"={ifname}"
        out["GLOO_SOCKET_IFNAME"] = ifname
    return out


def check_nccl(host: Host) -> Verdict:
    """The NCCL/RCCL variables vLLM and Ray need for these ports, and whether the current ones match."""
    expected = "NCCL_IB_HCA, NCCL_IB_GID_INDEX and NCCL_SOCKET_IFNAME pointing at the RoCE v2 port"
    if not host.rdma_ports:
        return Verdict(Status.SKIP, NO_DEVICES, expected)
    suggested = _suggest(_roce(host))
    if not suggested:
        return Verdict(
            Status.SKIP, "no active RoCE v2 IPv4 GID to build NCCL settings from (see rdma.gid)", expected
        )
    exports = "\n".join(f"export {k}={v}" for k, v in suggested.items())
    notes = (
        "Set them on every node before `ray start` (Ray workers inherit the environment) or pass them with "
        "`docker run -e`; RCCL reads the same NCCL_* variables.",
        "NCCL >= 2.21 picks a RoCE v2 GID by itself; pinning NCCL_IB_GID_INDEX also works with older RCCL "
        "builds.",
        "Suggested:\n" + exports,
    )
    if not host.facts.env_known:
        return Verdict(
            Status.OK, "environment not captured; suggested values in notes", expected, notes=notes
        )
    problems = []
    if host.facts.getenv("NCCL_IB_DISABLE") in ("1", "true", "TRUE"):
        problems.append("NCCL_IB_DISABLE=1 turns RDMA off (TCP sockets only)")
    current_gid = host.facts.getenv("NCCL_IB_GID_INDEX")
    valid = {str(g.index) for p in _roce(host) for g in p.roce_v2_ipv4()}
    if current_gid is not None and current_gid.strip() not in valid | {"-1"}:
        problems.append(
            f"NCCL_IB_GID_INDEX={current_gid} is not a RoCE v2 IPv4 GID (valid: {', '.join(sorted(valid))})"
        )
    ifname = host.facts.getenv("NCCL_SOCKET_IFNAME")
    if ifname:
        names = [n.lstrip("=^") for n in ifname.split(",") if n.strip()]
        net = host.root.listdir("sys/class/net")
        if not ifname.startswith("^") and net and not any(any(d.startswith(n) for d in net) for n in names):
            problems.append(f"NCCL_SOCKET_IFNAME={ifname} matches no network device here")
    current = [f"{k}={host.facts.getenv(k)}" for k in suggested if host.facts.getenv(k) is not None]
    observed = ("set: " + ", ".join(current)) if current else "none of the NCCL variables are set"
    if problems:
        return Verdict(Status.WARN, f"{observed}; " + "; ".join(problems), expected, "", exports, notes)
    return Verdict(Status.OK, observed, expected, notes=notes)


CHECKS = (
    Check("rdma", "RDMA ports", SECTION, check_rdma),
    Check("rdma.gid", "RoCE v2 GID", SECTION, check_gid),
    Check("rdma.mtu", "RoCE MTU", SECTION, check_mtu),
    Check("rdma.ecn", "ECN for RoCE", SECTION, check_ecn),
    Check("rdma.memlock", "Locked memory (ulimit -l)", SECTION, check_memlock),
    Check("rdma.nccl", "NCCL settings", SECTION, check_nccl),
)

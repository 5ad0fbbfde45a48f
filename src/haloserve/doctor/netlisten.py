"""Listening TCP sockets from ``/proc/net/tcp{,6}`` and RPC worker processes from ``/proc/<pid>/cmdline``.

Pure parsers for the ``rpc`` check. ``/proc/net/tcp`` writes each address as the kernel holds it: the
IPv4 address as one little-endian 32-bit word in hex, IPv6 as four such words, the port in big-endian
hex; state ``0A`` is ``LISTEN``. A worker is ``halo rpc-worker`` (``--host``/``--port``) or llama.cpp's
``rpc-server``/``ggml-rpc-server`` (``-H``/``-p``); both listen on 127.0.0.1:50052 unless told otherwise.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

RPC_PORT = 50052  # the default of ggml-rpc-server and halo rpc-worker
LISTEN = "0A"
RPC_BINARIES = ("rpc-server", "ggml-rpc-server")
# RFC 1918, link-local and unique local addresses: reachable only on a private network
PRIVATE_NETS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "fc00::/7", "fe80::/10")
)


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket: its local address and port."""

    address: str
    port: int
    inode: int = 0


@dataclass(frozen=True)
class Worker:
    """An RPC worker process found by its command line, and where it asked to listen."""

    pid: str
    kind: str  # "halo rpc-worker", "ggml-rpc-server" or "rpc-server"
    host: str
    port: int
    host_given: bool = True  # False: the default, unless the environment (HALO_RPC_WORKER_HOST) said else


def _hex_address(text: str) -> str:
    raw = bytes.fromhex(text)
    # each 32-bit word is in host (little-endian) order
    flipped = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(flipped))


def parse_proc_net_tcp(text: str | None) -> list[Listener]:
    """The ``LISTEN`` sockets of a ``/proc/net/tcp`` or ``tcp6`` text (garbled lines are skipped)."""
    out = []
    for line in (text or "").splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != LISTEN or ":" not in fields[1]:
            continue
        addr, _, port = fields[1].partition(":")
        try:
            inode = int(fields[9]) if len(fields) > 9 else 0
            out.append(Listener(_hex_address(addr), int(port, 16), inode))
        except ValueError:
            continue
    return out


def listen_lines_only(text: str) -> str:
    """``/proc/net/tcp`` cut to its header and ``LISTEN`` lines (what a snapshot keeps: no peers)."""
    lines = text.splitlines()
    keep = lines[:1] + [ln for ln in lines[1:] if len(ln.split()) > 3 and ln.split()[3] == LISTEN]
    return "\n".join(keep) + ("\n" if keep else "")


def _flag(argv: list[str], names: tuple[str, ...]) -> str | None:
    for i, arg in enumerate(argv):
        if arg in names and i + 1 < len(argv):
            return argv[i + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def parse_worker(pid: str, cmdline: str | None) -> Worker | None:
    """The RPC worker a NUL-separated ``cmdline`` starts (``None`` when it is some other process)."""
    argv = [a for a in (cmdline or "").split("\0") if a]
    names = [os.path.basename(a) for a in argv]
    host_flags: tuple[str, ...]
    port_flags: tuple[str, ...]
    if any(n in RPC_BINARIES for n in names[:1]):
        kind, host_flags, port_flags = names[0], ("-H", "--host"), ("-p", "--port")
    elif "rpc-worker" in argv and any(n in ("halo", "haloserve") for n in names[: argv.index("rpc-worker")]):
        kind, host_flags, port_flags = "halo rpc-worker", ("--host",), ("--port",)
    else:
        return None
    port_text = _flag(argv, port_flags)
    try:
        port = int(port_text) if port_text else RPC_PORT
    except ValueError:
        port = RPC_PORT
    host = _flag(argv, host_flags)
    return Worker(pid, kind, host or "127.0.0.1", port, host is not None)


def socket_inode(link: str | None) -> int | None:
    """The inode of a ``/proc/<pid>/fd/<n>`` link ``socket:[12345]`` (``None`` for anything else)."""
    if link and link.startswith("socket:[") and link.endswith("]") and link[8:-1].isdigit():
        return int(link[8:-1])
    return None


def classify(address: str) -> str:
    """``wildcard`` (every interface), ``loopback``, ``private`` or ``public``; ``unknown`` for a name."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "wildcard"
    if ip.is_loopback:
        return "loopback"
    if any(ip.version == net.version and ip in net for net in PRIVATE_NETS):
        return "private"
    return "public"

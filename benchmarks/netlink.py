"""A veth link into a network namespace with ``tc netem`` delay, for benchmarks that add latency (root only)."""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

SUBNET = "10.213.0"  # a /30 nobody routes here: the host end is .1, the namespace end .2


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


def _must(*args: str) -> None:
    done = _ip(*args)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}`: {done.stderr.strip()}")


def _names() -> tuple[str, str, str]:
    tag = os.getpid() % 100000
    return f"halobench{tag}", f"hbh{tag}", f"hbn{tag}"  # interface names: 15 characters at most


@contextlib.contextmanager
def latency_link(delay_ms: float) -> Iterator[tuple[str, str]]:
    """A namespace joined to this one by veth, ``delay_ms`` added each way; yields (namespace, its address)."""
    ns, host_if, ns_if = _names()
    _must("ip", "netns", "add", ns)
    try:
        _must("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        _must("ip", "addr", "add", f"{SUBNET}.1/30", "dev", host_if)
        _must("ip", "link", "set", host_if, "up")
        _must("ip", "-n", ns, "addr", "add", f"{SUBNET}.2/30", "dev", ns_if)
        _must("ip", "-n", ns, "link", "set", ns_if, "up")
        _must("ip", "-n", ns, "link", "set", "lo", "up")
        if delay_ms > 0:  # netem delays what leaves an interface: one qdisc on each end delays both ways
            _must("tc", "qdisc", "add", "dev", host_if, "root", "netem", "delay", f"{delay_ms}ms")
            _must("tc", "-n", ns, "qdisc", "add", "dev", ns_if, "root", "netem", "delay", f"{delay_ms}ms")
        yield ns, f"{SUBNET}.2"
    finally:
        _ip("ip", "netns", "del", ns)  # takes the veth pair (and its qdiscs) with it
        _ip("ip", "link", "del", host_if)


def netem_problem() -> str | None:
    """None when this machine can run :func:`latency_link` with a delay, else why it cannot (one line)."""
    if os.geteuid() != 0:
        return "not root (network namespaces and tc need root)"
    missing = [t for t in ("ip", "tc") if not shutil.which(t)]
    if missing:
        return f"{' and '.join(missing)} not installed (iproute2)"
    try:
        with latency_link(0.01):
            return None
    except RuntimeError as e:
        why = str(e)
        config = _kernel_config("CONFIG_NET_SCH_NETEM")
        if "netem" in why and config:
            why += f"; kernel config: {config}"
        return why


def _kernel_config(name: str) -> str | None:
    """The line of /proc/config.gz that sets (or does not set) ``name``, when the kernel exposes it."""
    with contextlib.suppress(OSError):
        for line in gzip.decompress(Path("/proc/config.gz").read_bytes()).decode().splitlines():
            if line.startswith(name + "=") or line == f"# {name} is not set":
                return line
    return None

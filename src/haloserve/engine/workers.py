"""The ``--rpc`` workers as ``halo serve`` watches them: which ones do not answer, and why.

Two depths of check. The handshake (TCP connect plus the RPC HELLO, :func:`haloserve.engine.rpc.probe`)
says a worker can take a client; it is used at start-up and while the engine is down. A worker serves
one client at a time, so while our engine is connected it never answers another handshake: then only a
TCP connect is tried, which still tells a worker that died (connection refused) from one that is busy.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor


def _connect(endpoint: str, timeout: float) -> str | None:
    from haloserve.engine import rpc

    ep = rpc.parse_endpoint(endpoint)
    try:
        with socket.create_connection((ep.host, ep.port), timeout=timeout):
            return None
    except OSError as exc:
        return f"RPC worker {ep}: {exc.strerror or type(exc).__name__}"


def _handshake(endpoint: str, timeout: float) -> str | None:
    from haloserve.engine import rpc

    result = rpc.probe(endpoint, timeout)
    return None if result.ok else result.reason


def unreachable(endpoints: Sequence[str], *, handshake: bool, timeout: float = 2.0) -> list[str]:
    """``RPC worker host:port: why`` for each worker that does not answer, checked in parallel (empty:
    all answer)."""
    if not endpoints:
        return []
    check = _handshake if handshake else _connect
    with ThreadPoolExecutor(len(endpoints), thread_name_prefix="halo-probe") as pool:
        return [why for why in pool.map(lambda ep: check(ep, timeout), endpoints) if why is not None]


def device_counts(endpoints: Sequence[str], timeout: float = 2.0) -> list[int]:
    """How many devices each (answering) worker exposes."""
    from haloserve.engine import rpc

    return [len(rpc.probe(ep, timeout).devices) for ep in endpoints]

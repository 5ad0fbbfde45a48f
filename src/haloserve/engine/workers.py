"""The ``--rpc`` workers as ``halo serve`` watches them: which ones do not answer, and why.

Two depths of check. The handshake (TCP connect plus the RPC HELLO, :func:`haloserve.engine.rpc.probe`)
says a worker can take a client; it is used at start-up and while the engine is down. A worker serves
one client at a time, so while our engine is connected it never answers another handshake: then only a
TCP connect is tried, which still tells a worker whose process died (connection refused) from one that
is busy; a connect that times out says nothing (a busy worker's one-connection backlog fills up), so a
worker host that vanished is found by the engine's next compute instead.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor


def _connect(endpoint: str, timeout: float) -> str | None:
    from haloserve.engine import rpc

    ep = rpc.parse_endpoint(endpoint)
    try:
        with socket.create_connection((ep.host, ep.port), timeout=min(timeout, 0.5)):
            return None
    except (ConnectionRefusedError, ConnectionResetError) as exc:  # its port is closed: the worker is gone
        return f"RPC worker {ep}: {exc.strerror or type(exc).__name__} (the worker process is gone)"
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return f"RPC worker {ep}: {exc.strerror}"
        # A timeout is no verdict: the worker listens with a backlog of one, so while it serves our engine
        # a second pending connection already fills it and the kernel drops further SYNs.
        return None


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

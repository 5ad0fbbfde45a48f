"""Connection limits shared by ``halo serve`` and ``halo gateway``: head size, timeouts, connection cap.

Both servers guard their HTTP/1.1 connections the same way (``server/limits.py`` for uvicorn,
``gateway/limits.py`` for aiohttp); what they share lives here: the limits as plain values, the
descriptor limit and the connection cap sized below it, the canned error responses written straight
to a socket, and the table of open connections that closes idle ones first when the cap is reached
(as nginx reuses its idle keep-alive connections when it runs out of connections).
"""

from __future__ import annotations

import http
import resource
from dataclasses import dataclass
from typing import Any, Protocol

from haloserve.errors import (
    ConfigError,
    HaloError,
    HeadersTooLargeError,
    RequestTimeoutError,
    UriTooLongError,
)
from haloserve.protocol.errors import error_json

# Descriptors a process keeps for itself (model file, eventfds, epoll, logs, SQLite, probes), plus
# room for connections being refused; the rest is shared by client connections.
RESERVED_FDS = 64
# The automatic cap stays moderate even when the descriptor limit is huge: each open connection
# costs memory (buffers, a protocol object), and no node serves this many requests at once.
AUTO_CAP_MAX = 4096
# A refused connection is answered 503, half-closed and drained this long so the client can read it.
REFUSE_LINGER_S = 1.0


@dataclass(frozen=True)
class ConnLimits:
    """Limits on one server's client connections (sizes in bytes, times in seconds)."""

    max_header_bytes: int = 65536
    max_header_line_bytes: int = 8192
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 5.0
    max_connections: int = 4096

    def head_timeout(self) -> RequestTimeoutError:
        """The 408 for a request head that did not arrive in time."""
        return RequestTimeoutError(f"request headers not received within {self.header_timeout:g}s")

    def body_timeout_error(self) -> RequestTimeoutError:
        """The 408 for a request body that did not arrive in time."""
        return RequestTimeoutError(f"request body not received within {self.body_timeout:g}s")

    def head_too_large(self) -> HeadersTooLargeError:
        """The 431 for a request head over ``max_header_bytes``."""
        return HeadersTooLargeError(f"request headers are over the {self.max_header_bytes}-byte limit")

    def line_too_long(self) -> HeadersTooLargeError:
        """The 431 for a header line over ``max_header_line_bytes``."""
        return HeadersTooLargeError(
            f"a request header line is over the {self.max_header_line_bytes}-byte limit"
        )

    def uri_too_long(self) -> UriTooLongError:
        """The 414 for a request line over ``max_header_line_bytes``."""
        return UriTooLongError(f"the request line is over the {self.max_header_line_bytes}-byte limit")

    @classmethod
    def from_settings(cls, settings: Any, *, fds_per_connection: int = 1) -> ConnLimits:
        """Limits from a settings object with the same field names; an automatic cap (0) is sized here."""
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_header_line_bytes=settings.max_header_line_bytes,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            keepalive_timeout=settings.keepalive_timeout,
            max_connections=connection_cap(settings.max_connections, fds_per_connection),
        )


def raise_nofile_limit() -> int:
    """Raise this process's soft descriptor limit to its hard limit (as nginx and others do); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return int(soft if soft != resource.RLIM_INFINITY else target)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # a hard limit above the kernel's nr_open: keep what we have
        return int(soft)
    return int(target)


def nofile_limit() -> int:
    """The soft descriptor limit of this process."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return int(soft if soft != resource.RLIM_INFINITY else 1 << 20)


def available_connections(nofile: int, fds_per_connection: int = 1) -> int:
    """Client connections that fit in ``nofile`` descriptors after the process's own reserve."""
    reserve = RESERVED_FDS + nofile // 16
    return max(0, (nofile - reserve) // max(1, fds_per_connection))


def connection_cap(requested: int, fds_per_connection: int = 1, nofile: int | None = None) -> int:
    """The connection cap: ``requested``, or (0) sized below the descriptor limit; too high is refused."""
    limit = nofile_limit() if nofile is None else nofile
    room = available_connections(limit, fds_per_connection)
    if requested == 0:
        if room < 1:
            raise ConfigError(
                f"the descriptor limit ({limit}) leaves no room for connections; raise it (ulimit -n)"
            )
        return min(AUTO_CAP_MAX, room)
    if requested > room:
        raise ConfigError(
            f"--max-connections {requested}: the descriptor limit ({limit}, ulimit -n) allows at most"
            f" {room}; raise the limit or lower the cap"
        )
    return requested


def canned_response(exc: HaloError) -> bytes:
    """A complete ``Connection: close`` response carrying ``exc`` in OpenAI's error shape."""
    body = error_json(exc)
    try:
        phrase = http.HTTPStatus(exc.status).phrase
    except ValueError:  # pragma: no cover - every HaloError status is a standard one
        phrase = ""
    lines = [
        f"HTTP/1.1 {exc.status} {phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in exc.headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Evictable(Protocol):
    """A connection the table can close to make room."""

    def evict(self) -> None:
        """Close this idle connection now."""


class ConnTable:
    """The open connections of one server: how many, and which are idle (oldest first).

    Idle means between requests: connected or kept alive, with no byte of a request received. When
    the cap is reached, a new connection closes the oldest idle one; only when none is idle is the
    new one refused. Refusals in flight are counted too, so a flood cannot use up the descriptors.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open: set[Any] = set()
        self.idle: dict[Any, None] = {}  # insertion-ordered: the oldest idle connection first
        self.refusing = 0
        self.evicted = 0
        self.refused = 0

    def admit(self, conn: Any) -> bool:
        """Count ``conn`` in if there is room (closing idle connections to make it); False: refuse it."""
        while len(self.open) >= self.cap and self.idle:
            victim = next(iter(self.idle))
            self.discard(victim)
            self.evicted += 1
            victim.evict()
        if len(self.open) >= self.cap:
            self.refused += 1
            return False
        self.open.add(conn)
        self.idle[conn] = None
        return True

    def may_linger(self) -> bool:
        """Whether a refused connection may stay open to read its 503 (else it is reset at once)."""
        return self.refusing < max(8, RESERVED_FDS // 2)

    def set_idle(self, conn: Any, idle: bool) -> None:
        """Mark ``conn`` idle (a candidate for closing) or busy; idle ones go to the end of the line."""
        if conn not in self.open:
            return
        self.idle.pop(conn, None)
        if idle:
            self.idle[conn] = None

    def discard(self, conn: Any) -> None:
        """Forget ``conn`` (closed); idempotent."""
        self.open.discard(conn)
        self.idle.pop(conn, None)

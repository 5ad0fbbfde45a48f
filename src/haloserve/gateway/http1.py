"""A lean HTTP/1.1 client for the proxy's hot path: pooled keep-alive connections, one write a request.

Why not aiohttp's client here (the gateway still uses it for probes and model discovery): a request
through ``ClientSession`` costs the gateway about 0.25 ms of event-loop time, and every streamed
chunk wakes a task to be read and goes through two writer layers. Through this client a request is
one ``transport.write`` of pre-joined bytes, responses are parsed by httptools (llhttp, as uvicorn
parses requests), and a streamed body can be handed to a callback straight from ``data_received``,
so a relayed token costs one parse and one write and waits for no task. Measured on the gateway
benchmark: see ``BENCHMARKS.md``.

Failures are told apart the way the proxy needs them: :class:`ConnectFailed` (nothing listens: the
node is down), :class:`Dropped` (the connection closed before a complete response head: the backend
did not answer, safe to retry), :class:`BrokenBody` (it closed or sent garbage mid-body),
:class:`TooLarge` (a response head or buffered body past its bound: the connection is dropped rather
than held without limit) and :class:`UpstreamTimeout` (the whole exchange took longer than its deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

_CRLF = b"\r\n"


class ConnectFailed(Exception):
    """No connection could be opened (refused, unreachable, connect timeout)."""


class Dropped(Exception):
    """The connection closed or reset before a complete response head arrived."""


class BrokenBody(Exception):
    """The connection closed, reset or sent unparsable bytes in the middle of a body."""


class TooLarge(BrokenBody):
    """The backend sent a response head or a buffered body larger than its bound."""


class UpstreamTimeout(Exception):
    """The exchange did not finish within its deadline."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a backend listens: scheme, host, port and the ``Host`` header value."""

    scheme: str
    host: str
    port: int
    host_header: str

    @classmethod
    def parse(cls, url: str) -> Origin:
        """``http://node1:8080`` (a path after the authority is ignored)."""
        parts = urlsplit(url)
        scheme = parts.scheme or "http"
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported scheme in {url!r}")
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if scheme == "https" else 80)
        return cls(scheme, host, port, parts.netloc or host)


def request_head(method: str, path: str, origin: Origin, headers: dict[str, str], length: int) -> bytes:
    """The request line and headers (``Content-Length`` included); refuses CR/LF in any value."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {origin.host_header}", f"Content-Length: {length}"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} has a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Response:
    """One upstream response: status and headers at once, the body as it arrives.

    The body is buffered until :meth:`relay` hands it to a callback instead; the callback then runs
    inside the connection's ``data_received`` for every later piece. :meth:`wait` returns when
    the body ended, failed, or the relay was paused for flow control.
    """

    __slots__ = (
        "_buffer",
        "_conn",
        "_ended",
        "_error",
        "_limit",
        "_sink",
        "_size",
        "_waiter",
        "headers",
        "paused",
        "status",
    )

    def __init__(
        self, conn: _Connection, status: int, headers: dict[str, str], limit: int | None = None
    ) -> None:
        self._conn: _Connection | None = conn
        self.status = status
        self.headers = headers
        self._buffer: list[bytes] = []
        self._sink: Callable[[bytes], None] | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._limit = limit  # most bytes held in _buffer (a relayed body is not held here)
        self._size = 0
        self.paused = False

    @property
    def content_type(self) -> str:
        """The ``Content-Type`` header ('' when absent)."""
        return self.headers.get("content-type", "")

    @property
    def ended(self) -> bool:
        """The whole body arrived."""
        return self._ended

    # Fed by the connection
    def _data(self, chunk: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink(chunk)
            return
        self._size += len(chunk)
        if self._limit is not None and self._size > self._limit and self._conn is not None:
            self._conn._fail(TooLarge(f"the backend's response body is over {self._limit} bytes"))
            return
        self._buffer.append(chunk)
        self._wake()

    def _end(self, error: BaseException | None = None) -> None:
        if self._ended or self._error is not None:
            return
        if error is None:
            self._ended = True
        else:
            self._error = error
        self._conn = None
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _take(self) -> bytes:
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._size = 0
        return data

    # Used by the proxy
    async def _next_event(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def read_some(self) -> bytes:
        """What arrived so far (waiting for something); b'' once the body ended."""
        while not self._buffer:
            if self._error is not None:
                raise self._error
            if self._ended:
                return b""
            await self._next_event()
        return self._take()

    async def read(self) -> bytes:
        """The whole body."""
        while not self._ended:
            if self._error is not None:
                raise self._error
            await self._next_event()
        return self._take()

    def relay(self, sink: Callable[[bytes], None]) -> None:
        """From now on every body piece goes to ``sink`` as it arrives (what is buffered goes first)."""
        if self._buffer:
            sink(self._take())
        self._sink = sink

    async def wait(self) -> None:
        """Until the body ended (returns), failed (raises) or the relay was paused (returns)."""
        while not self._ended and not self.paused:
            if self._error is not None:
                raise self._error
            await self._next_event()

    def pause(self) -> None:
        """Stop reading the upstream socket (the client cannot keep up); :meth:`wait` returns."""
        if not self.paused and self._conn is not None:
            self.paused = True
            self._conn.pause_reading()
            self._wake()

    def resume(self) -> None:
        """Read again after :meth:`pause`."""
        if self.paused:
            self.paused = False
            if self._conn is not None:
                self._conn.resume_reading()

    def fail(self, exc: BaseException) -> None:
        """End the exchange with ``exc`` (the relay found the body unacceptable): drop the connection."""
        conn = self._conn
        if conn is not None:
            conn._fail(exc)
        else:
            self._end(exc)

    def close(self) -> None:
        """Abandon the response: a body not fully read closes its connection (never reused)."""
        conn, self._conn = self._conn, None
        if conn is not None and not self._ended:
            conn.abort()
        self._sink = None


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one exchange at a time."""

    def __init__(self, pool: ClientPool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self.closed = False
        # the exchange in progress
        self._head: asyncio.Future[Response] | None = None
        self._response: Response | None = None
        self._headers: dict[str, str] = {}
        self._eof_body = False  # no length and not chunked: the body ends when the connection does
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._unparsed = 0  # bytes received since the last body byte (head, chunk framing, trailer)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; no Nagle delay on small writes."""
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        """Parse; httptools calls back the ``on_*`` methods below."""
        self._unparsed += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BrokenBody("the backend switched protocols"))
            return
        except httptools.HttpParserError as exc:
            self._fail(BrokenBody(f"malformed response from the backend: {exc}"))
            return
        head = self._head
        if head is not None and self._unparsed > self.pool.max_head:
            # httptools holds a header (or trailer) until it ends: bound the bytes that are not body
            # (one read more at most), else an endless header grows the gateway without limit.
            what = "head" if not head.done() else "framing or trailer"
            self._fail(TooLarge(f"the backend's response {what} is over {self.pool.max_head} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket closed: end (or fail) the exchange in progress and leave the pool."""
        self.closed = True
        self.transport = None
        resp = self._response
        if resp is not None and self._eof_body and exc is None:
            self._finish_exchange()
            resp._end()
            return
        what = "reset" if exc is not None else "closed"
        if self._head is not None and not self._head.done():
            self._fail(Dropped(f"connection {what} before the response"))
        elif resp is not None:
            self._fail(BrokenBody(f"connection {what} mid-body"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect a header (names lower-cased; a repeated header keeps its last value)."""
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        """The head is complete: hand the response to the waiting request."""
        if self._head is None:  # a response nobody asked for: the connection is out of step
            self._fail(BrokenBody("unsolicited response from the backend"))
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim response (we never ask for one): wait for the real one
            self._headers = {}
            return
        self._unparsed = 0
        h = self._headers
        self._eof_body = "content-length" not in h and "chunked" not in h.get("transfer-encoding", "")
        resp = Response(self, status, h, self.pool.max_body)
        self._response = resp
        head = self._head
        if head is not None and not head.done():
            head.set_result(resp)

    def on_body(self, body: bytes) -> None:
        """A piece of the body."""
        self._unparsed = 0
        if self._response is not None:
            self._response._data(body)

    def on_message_complete(self) -> None:
        """The body is complete: the connection goes back to the pool if it may be reused."""
        resp = self._response
        if resp is None:  # an interim (1xx) message, or nothing in progress
            return
        keep = self.parser.should_keep_alive() and not self.closed
        self._finish_exchange()
        resp._end()
        if keep:
            self.resume_reading()  # the body may have ended while its relay was paused
            self.pool._release(self)
        else:
            self.close()

    # used by the pool
    def reusable(self, now: float, keepalive: float) -> bool:
        """Still open, and idle for less than ``keepalive`` seconds."""
        return not self.closed and self.transport is not None and now - self.idle_since < keepalive

    def send(self, data: bytes, deadline: float) -> asyncio.Future[Response]:
        """Write one request; the future resolves with the response head."""
        if self.transport is None:
            raise Dropped("connection closed before the request was written")
        loop = asyncio.get_running_loop()
        self._head = loop.create_future()
        self._response = None
        self._headers = {}
        self._unparsed = 0
        self._timer = loop.call_at(deadline, self._timed_out)
        self.transport.write(data)
        return self._head

    def pause_reading(self) -> None:
        """Flow control: stop reading the socket."""
        if self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Flow control: read again."""
        if self.transport is not None and self._paused:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        """Drop the connection at once (an abandoned exchange must never be reused)."""
        self.closed = True
        self._finish_exchange()
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close politely (the exchange, if any, is over)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(UpstreamTimeout("the backend did not finish in time"))

    def _finish_exchange(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._head = None
        self._response = None

    def _fail(self, exc: BaseException) -> None:
        head, resp = self._head, self._response
        self.abort()
        if head is not None and not head.done():
            head.set_exception(exc)
        if resp is not None:
            resp._end(exc)


def untrusted_certificate(detail: str) -> str:
    """How a backend's refused TLS certificate is reported (by the proxy and the health probes)."""
    return f"TLS certificate not trusted: {detail} (see --backend-ca)"


class ClientPool:
    """Keep-alive connections per backend origin, most recently used first."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        keepalive: float = 4.0,
        max_idle: int = 256,
        ssl_context: ssl.SSLContext | None = None,
        max_head: int = 64 << 10,
        max_body: int | None = 256 << 20,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.max_head = max_head  # bytes of a response head before it is refused as too large
        self.max_body = max_body  # bytes of a buffered (not relayed) body
        self.keepalive = keepalive
        self.max_idle = max_idle
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._origins: dict[str, Origin] = {}
        self._ssl = ssl_context  # for https:// origins (the system's trust store when None)
        self.opened = 0

    def origin(self, url: str) -> Origin:
        """The parsed origin of a backend URL (cached)."""
        o = self._origins.get(url)
        if o is None:
            o = self._origins[url] = Origin.parse(url)
        return o

    async def request(
        self,
        url: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
        *,
        fresh: bool = False,
    ) -> Response:
        """POST ``body`` to ``url`` + ``path``; returns once the response head arrived.

        ``fresh`` skips pooled connections (a retry after a pooled one was dropped). The deadline
        ``timeout`` covers the whole exchange, body included, as aiohttp's total timeout does.
        """
        origin = self.origin(url)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = None if fresh else self._take(origin)
        if conn is None:
            conn = await self._connect(origin, min(self.connect_timeout, timeout))
        head = request_head("POST", path, origin, headers, len(body))
        try:
            return await conn.send(head + body, deadline)
        except asyncio.CancelledError:
            conn.abort()  # the client left: the backend must see the request end at once
            raise

    def _take(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.reusable(now, self.keepalive):
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        ctx = None
        if origin.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ctx = self._ssl
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self, origin),
                    origin.host,
                    origin.port,
                    ssl=ctx,
                    server_hostname=origin.host if ctx else None,
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise ConnectFailed(f"connect timeout after {timeout:g}s") from None
        except ssl.SSLCertVerificationError as exc:
            raise ConnectFailed(untrusted_certificate(exc.verify_message)) from None
        except OSError as exc:
            raise ConnectFailed(exc.strerror or type(exc).__name__) from None
        self.opened += 1
        return conn

    def _release(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.origin, deque())
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def prune(self) -> None:
        """Close idle connections older than the keep-alive time (call now and then)."""
        now = time.monotonic()
        for idle in self._idle.values():
            keep: deque[_Connection] = deque()
            for c in idle:
                if c.reusable(now, self.keepalive):
                    keep.append(c)
                else:
                    c.close()
            idle.clear()
            idle.extend(keep)

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for c in idle:
                c.close()
            idle.clear()

    def idle_count(self, url: str | None = None) -> int:
        """Idle pooled connections (to one backend, or in all)."""
        if url is not None:
            return len(self._idle.get(self.origin(url), ()))
        return sum(len(d) for d in self._idle.values())


def describe(exc: BaseException) -> str:
    """A short text for logs and error messages."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


__all__ = [
    "BrokenBody",
    "ClientPool",
    "ConnectFailed",
    "Dropped",
    "Origin",
    "Response",
    "TooLarge",
    "UpstreamTimeout",
    "describe",
    "request_head",
]

"""aiohttp's server protocol with connection limits: head size, head/body/idle timeouts, a cap.

aiohttp bounds each header line and the number of headers, but not a head's total size, and it has
no head or body timeout: its keep-alive timer (an hour by default) was all that ever closed a
connection. :class:`GuardedRequestHandler` counts the bytes of each request head as they arrive
(431), times the head from the connection's start or its first byte after a keep-alive pause and the
body from the end of the head (408, then close), and keeps the open connections under a cap, closing
idle ones first (:class:`ConnTable`). Limits are read per connection, so a config reload applies.

It touches a few private attributes of aiohttp's ``RequestHandler`` (``_messages``,
``_request_count``, ``_force_close``); ``tests/adversarial/test_connections.py`` exercises each path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from haloserve.errors import HaloError, InvalidRequestError, ServiceUnavailableError
from haloserve.gateway.request import error_response
from haloserve.protocol.connlimits import REFUSE_LINGER_S, ConnLimits, ConnTable, canned_response

log = logging.getLogger("haloserve.gateway")
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _json_error(exc: HaloError) -> web.Response:
    resp = error_response(exc)
    resp.force_close()
    resp.headers["Connection"] = "close"  # said even on the HTTP/1.0 answer aiohttp gives unparsable heads
    return resp


class GuardedRequestHandler(RequestHandler):
    """One client connection of the gateway, under the limits its :class:`GuardedServer` hands out."""

    def __init__(self, manager: GuardedServer, *, limits: ConnLimits, **kwargs: Any) -> None:
        super().__init__(
            manager,
            keepalive_timeout=limits.keepalive_timeout,
            max_line_size=limits.max_header_bytes,  # a longer request line gets 414 after parsing
            max_field_size=limits.max_header_line_bytes,
            lingering_time=min(10.0, limits.body_timeout),
            **kwargs,
        )
        self.limits = limits
        self.table = manager.table
        self.busy = 0  # handlers running on this connection
        self._body: StreamReader | None = None  # the body still arriving, if any
        self._body_failed: StreamReader | None = None
        self._head_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._lingering = False
        self._raw: asyncio.Transport | None = None

    # Connection lifecycle
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admit the connection under the cap (closing an idle one if needed) or answer 503."""
        tr: asyncio.Transport = transport  # type: ignore[assignment]
        self._raw = tr
        if not self.table.admit(self):
            self._refused = True
            tr.write(
                canned_response(
                    ServiceUnavailableError("the gateway is at its connection limit; retry shortly")
                )
            )
            if self.table.may_linger():
                self.table.refusing += 1
                self._linger()
            else:
                tr.close()
            return
        super().connection_made(transport)
        self.keep_alive(True)  # drops aiohttp's start-of-connection timer: ours below covers it
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Forget the connection; a refused one was never started."""
        self._cancel_timer()
        if self._refused:
            if self._lingering:
                self.table.refusing -= 1
            return
        self.table.discard(self)
        super().connection_lost(exc)

    def evict(self) -> None:
        """Close this idle connection to make room for a new one."""
        self._cancel_timer()
        self.force_close()

    def data_received(self, data: bytes) -> None:
        """Feed the parser, counting head bytes and timing heads and bodies."""
        if self._refused or self._lingering or self._body_failed is not None:
            return  # dropped: the connection closes after its answer
        in_head = self._body is None or self._body.is_eof()
        if in_head and not self.busy and self._head_bytes == 0:
            self.table.set_idle(self, False)
            self.keep_alive(True)  # stops aiohttp's idle timer: the head timer runs from this byte
            if self._timer is None:
                self._arm(self.limits.header_timeout, self._head_timed_out)
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:  # a head completed in this chunk
            self._head_bytes = 0
            self._cancel_timer()
            payload = self._messages[-1][1] if self._messages else None
            if isinstance(payload, StreamReader) and not payload.is_eof():
                self._body = payload
                payload.on_eof(self._cancel_timer)
                self._arm(self.limits.body_timeout, self._body_timed_out)
        elif in_head and not self._force_close:
            # Checked per chunk, before the parser's copy of a header grows further.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._fail(self.limits.head_too_large())

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Unparsable requests: an OpenAI-shaped error, logged without the bytes (they may hold keys)."""
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        err: HaloError
        if isinstance(exc, LineTooLong):
            err = self.limits.line_too_long()
        else:
            err = InvalidRequestError(f"malformed HTTP request ({type(exc).__name__})")
        log.info("rejected a request from %s: %s", request.remote, err.message)
        return _json_error(err)

    # Timers
    def _head_timed_out(self) -> None:
        self._timer = None
        if self._force_close or self._raw is None or self._raw.is_closing():
            return
        if self.busy or self._messages:  # a pipelined head behind a running request: check later
            self._arm(self.limits.header_timeout, self._head_timed_out)
        elif self._head_bytes:
            self._fail(self.limits.head_timeout())
        else:  # connected and silent: nothing to answer
            self.force_close()

    def _body_timed_out(self) -> None:
        self._timer = None
        body = self._body
        if body is None or body.is_eof() or self._force_close:
            return
        # The handler reading the body gets this error (and answers 408, see guard()); the client
        # sends nothing more that we read, so the body can be closed off here.
        self._body_failed = body
        body.set_exception(self.limits.body_timeout_error())
        body.feed_eof()
        if not self.busy:  # nobody is reading it: close now
            self.force_close()

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # Helpers
    def request_done(self, request: web.BaseRequest, resp: web.StreamResponse | None) -> None:
        """A handler returned: close after a timed-out body; else the connection may become idle."""
        self.busy -= 1
        if self._body_failed is not None and resp is not None:
            resp.force_close()
        if not self.busy and not self._messages and (self._body is None or self._body.is_eof()):
            self.table.set_idle(self, True)

    def _fail(self, exc: HaloError) -> None:
        """Answer ``exc`` straight on the socket and close (no request is running)."""
        self._cancel_timer()
        if self._raw is not None:
            self._raw.write(canned_response(exc))
        self._linger()

    def _linger(self) -> None:
        """Half-close and drop what the client still sends for a moment, so it can read our answer."""
        self._lingering = True
        tr = self._raw
        if tr is None:
            return
        tr.resume_reading()
        if tr.can_write_eof():
            tr.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSE_LINGER_S, tr.close)


def head_error(request: web.BaseRequest, limits: ConnLimits) -> HaloError | None:
    """414/431 for a parsed head over the line or total limits, else None."""
    line = limits.max_header_line_bytes
    if len(request.raw_path) > line:
        return limits.uri_too_long()
    total = len(request.raw_path)
    for name, value in request.raw_headers:
        size = len(name) + len(value) + 2
        if size > line:
            return limits.line_too_long()
        total += size + 2
    return limits.head_too_large() if total > limits.max_header_bytes else None


class GuardedServer(web.Server):
    """aiohttp's low-level server whose connections follow :class:`ConnLimits` read from ``limits()``."""

    def __init__(self, handler: Handler, limits: Callable[[], ConnLimits], **kwargs: Any) -> None:
        super().__init__(self._guard, **kwargs)
        self._inner = handler
        self.limits = limits
        self.table = ConnTable(limits().max_connections)

    def __call__(self) -> RequestHandler:
        """A handler for a new connection, under the limits in force now."""
        limits = self.limits()
        self.table.cap = limits.max_connections
        return GuardedRequestHandler(self, limits=limits, loop=self._loop, **self._kwargs)

    async def _guard(self, request: web.BaseRequest) -> web.StreamResponse:
        proto = request.protocol
        if not isinstance(proto, GuardedRequestHandler):  # pragma: no cover - always ours
            return await self._inner(request)
        err = head_error(request, proto.limits)
        if err is not None:
            log.info("rejected a request from %s: %s", request.remote, err.message)
            proto.busy += 1
            proto.request_done(request, None)
            return _json_error(err)
        proto.busy += 1
        resp: web.StreamResponse | None = None
        try:
            resp = await self._inner(request)
            return resp
        finally:
            proto.request_done(request, resp)


class LimitsSource:
    """``ConnLimits`` for the settings in force, recomputed only when the settings object changes."""

    def __init__(self, settings: Callable[[], Any], fds_per_connection: int = 2) -> None:
        self._settings = settings
        self._fds = fds_per_connection
        self._seen: Any = None
        self._limits: ConnLimits | None = None

    def __call__(self) -> ConnLimits:
        """The limits of the current settings (a cap the descriptors cannot hold keeps the old ones)."""
        current = self._settings()
        if current is not self._seen or self._limits is None:
            try:
                self._limits = ConnLimits.from_settings(current, fds_per_connection=self._fds)
            except HaloError as exc:
                if self._limits is None:
                    raise
                log.error("connection limits unchanged: %s", exc.message)
            self._seen = current
        return self._limits

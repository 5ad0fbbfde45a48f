"""uvicorn's httptools protocol with connection limits: head size, head/body/idle timeouts, a cap.

uvicorn bounds none of these: httptools grows a header value for as long as bytes arrive (4 x 300 MB
of header took ``halo serve`` from 426 MB to 1.58 GB), a connection that never sends a byte is never
timed out, and its keep-alive timer stops at the first byte of a request. This subclass counts the
bytes of each request head before they pile up (431), times the head from the connection's start or
its first byte after a keep-alive pause and the body from the end of the head (408, then close), and
keeps the open connections under a cap, closing idle ones first (:class:`ConnTable`).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Literal

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from haloserve.errors import HaloError, ServiceUnavailableError
from haloserve.protocol.connlimits import REFUSE_LINGER_S, ConnLimits, ConnTable, canned_response

Stage = Literal["idle", "head", "body"]


class _Rejected(Exception):
    """Raised inside a parser callback to stop parsing; the error to answer is on the protocol."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """One client connection of ``halo serve``; :func:`guarded_protocol` binds the limits and the table."""

    limits: ClassVar[ConnLimits]
    table: ClassVar[ConnTable]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.keepalive_timeout  # type: ignore[assignment]
        self._stage: Stage = "idle"  # where the parser is: between requests, in a head or in a body
        self._head_bytes = 0  # bytes received while in the current head
        self._head_size = 0  # bytes of the parsed request line and headers
        self._reject: HaloError | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._lingering = False

    # Connection lifecycle
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Admit the connection under the cap (closing an idle one if needed) or answer 503."""
        if not self.table.admit(self):
            self._refuse(transport)
            return
        super().connection_made(transport)
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection; a refused one was never known to uvicorn."""
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
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        """Feed the parser, counting head bytes and starting the head timer at a request's first byte."""
        if self._refused or self._lingering:
            return  # drained and dropped until the lingering close ends
        if self._stage == "idle" and not self._responding():
            self.table.set_idle(self, False)
            if self._timer is None:
                self._arm(self.limits.header_timeout, self._head_timed_out)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._reject is not None:
                self._fail(self._reject)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        if self._stage == "head":
            # Checked per chunk, before httptools's copy of a header grows further.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._fail(self.limits.head_too_large())

    # Parser callbacks
    def on_message_begin(self) -> None:
        """A request starts: its head is counted from here."""
        super().on_message_begin()
        self._stage = "head"
        self._head_bytes = self._head_size = 0

    def on_url(self, url: bytes) -> None:
        """Request target piece: 414 past the line limit."""
        super().on_url(url)
        if len(self.url) > self.limits.max_header_line_bytes:
            self._reject = self.limits.uri_too_long()
            raise _Rejected

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header: 431 past the line limit or when the head passes its total limit."""
        size = len(name) + len(value) + 4
        self._head_size += size
        if size - 2 > self.limits.max_header_line_bytes:
            self._reject = self.limits.line_too_long()
            raise _Rejected
        if self._head_size + len(self.url) > self.limits.max_header_bytes:
            self._reject = self.limits.head_too_large()
            raise _Rejected
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is in: stop its timer, start the body's."""
        self._cancel_timer()
        self._stage = "body"
        self._head_bytes = 0
        super().on_headers_complete()
        self._arm(self.limits.body_timeout, self._body_timed_out)

    def on_message_complete(self) -> None:
        """The body is in: stop its timer."""
        super().on_message_complete()
        self._stage = "idle"
        self._cancel_timer()
        self._mark_idle()

    def on_response_complete(self) -> None:
        """A response went out: the connection may be idle now."""
        super().on_response_complete()
        self._mark_idle()

    # Timers
    def _head_timed_out(self) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self._responding():  # a pipelined head behind a running response: check again later
            self._arm(self.limits.header_timeout, self._head_timed_out)
        elif self._stage == "head":
            self._fail(self.limits.head_timeout())
        else:  # connected and silent: nothing to answer
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._timer = None
        if self._stage != "body" or self.transport is None or self.transport.is_closing():
            return
        if self.flow.read_paused and not (self.cycle and self.cycle.response_complete):
            # The app has not taken what arrived yet: the wait is ours, not the client's.
            self._arm(self.limits.body_timeout, self._body_timed_out)
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # the answer went out already; the rest of the body is not wanted
            return
        self._fail(self.limits.body_timeout_error())

    def _arm(self, delay: float, callback: Any) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # Helpers
    def _responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _mark_idle(self) -> None:
        if self._stage == "idle" and not self._responding() and not self.pipeline:
            self.table.set_idle(self, True)

    def _fail(self, exc: HaloError) -> None:
        """Answer ``exc`` and close; the app (if a request is running) sees a disconnect."""
        self._cancel_timer()
        self._unset_keepalive_if_required()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.response_started = cycle.response_complete = cycle.disconnected = True
            cycle.message_event.set()
        self.transport.write(canned_response(exc))
        self._linger(self.transport)

    def _refuse(self, transport: asyncio.Transport) -> None:
        self._refused = True
        self.transport = transport
        transport.write(
            canned_response(ServiceUnavailableError("the server is at its connection limit; retry shortly"))
        )
        if self.table.may_linger():
            self.table.refusing += 1
            self._linger(transport)
        else:
            transport.close()

    def _linger(self, transport: asyncio.Transport) -> None:
        """Half-close and drop what the client still sends for a moment, so it can read our answer.

        Closing with unread bytes pending makes the kernel send a reset, and a client still writing
        its request would then never see the response (Apache and nginx linger for the same reason).
        """
        self._lingering = True
        if self.flow is not None:
            self.flow.resume_reading()
        else:
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = self.loop.call_later(REFUSE_LINGER_S, transport.close)


def guarded_protocol(limits: ConnLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with ``limits`` and its own connection table."""
    attrs = {"limits": limits, "table": ConnTable(limits.max_connections)}
    return type("HaloHttpToolsProtocol", (GuardedHttpToolsProtocol,), attrs)

"""Relaying a backend's SSE stream to the client, with flow control and one error event on failure.

The client's response starts only once the first upstream bytes arrived, so a backend that fails
before that can still be replaced by another (:class:`BeforeFirstByte`). After the first event,
every upstream piece is forwarded from inside the upstream connection's ``data_received`` (one
parse, one write, no task switch); the task only waits for the end, and for the client's socket to
drain when it reads slower than the backend writes.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from haloserve.errors import UpstreamError
from haloserve.gateway.backends import Backend
from haloserve.gateway.blame import OnFailure, too_large
from haloserve.gateway.http1 import BrokenBody, Response, UpstreamTimeout, describe
from haloserve.gateway.metrics import GatewayMetrics
from haloserve.gateway.request import Outcome
from haloserve.gateway.stream import UsageScanner
from haloserve.protocol import sse
from haloserve.protocol.errors import error_event
from haloserve.protocol.sse import EventTooLarge

_HEADERS = {"Content-Type": sse.CONTENT_TYPE, **sse.HEADERS}
# Flow control of a relayed stream: past HIGH bytes waiting in the client's socket buffer the
# upstream socket is no longer read (the backend then blocks on its own writes) until it is below LOW.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
_DRAIN_POLL = 0.002


class BeforeFirstByte(Exception):
    """A stream failed before anything reached the client: safe to retry elsewhere."""


async def relay_stream(
    request: web.BaseRequest,
    upstream: Response,
    b: Backend,
    out: Outcome,
    start: float,
    scanner: UsageScanner,
    metrics: GatewayMetrics,
    on_failure: OnFailure,
) -> web.StreamResponse:
    """Relay ``upstream``'s events to the client through ``scanner`` (usage counted, maybe stripped).

    Raises :class:`BeforeFirstByte` when the backend failed before its first event; a failure after
    it ends the client's stream with one error event (``out.error`` set).
    """
    first = b""
    try:
        while not first:
            chunk = await upstream.read_some()
            if not chunk:
                break
            first = scanner.feed(chunk)
    except EventTooLarge as exc:
        raise too_large(b, exc) from None
    except (BrokenBody, UpstreamTimeout) as exc:
        raise BeforeFirstByte(f"{b.url} failed before its first byte: {describe(exc)}") from exc
    if not first:
        first = scanner.flush()
        if not first:
            raise BeforeFirstByte(f"{b.url} ended its stream before sending anything")
    resp = web.StreamResponse(status=200, headers=_HEADERS)
    await resp.prepare(request)
    out.status = 200
    out.ttfb = time.perf_counter() - start
    metrics.ttft.labels(b.url).observe(out.ttfb)
    await resp.write(first)  # also sends the response head
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("the client left while the head was being written")
    chunked = resp.headers.get("Transfer-Encoding", "").lower() == "chunked"

    def forward(chunk: bytes) -> None:
        try:
            data = scanner.feed(chunk)
        except EventTooLarge as exc:
            upstream.fail(exc)  # ends the wait below; the connection is dropped, not drained
            return
        if not data or transport.is_closing():
            return
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)
        if transport.get_write_buffer_size() > _HIGH_WATER:
            upstream.pause()

    upstream.relay(forward)
    try:
        while True:
            await upstream.wait()
            if not upstream.paused:
                break
            while transport.get_write_buffer_size() > _LOW_WATER and not transport.is_closing():
                await asyncio.sleep(_DRAIN_POLL)
            upstream.resume()
        tail = scanner.flush()
        if tail:
            await resp.write(tail)
        b.succeeded()
    except EventTooLarge as exc:
        out.error = True
        await resp.write(error_event(too_large(b, exc)))
    except (BrokenBody, UpstreamTimeout) as exc:
        on_failure(b, fatal=False)
        out.error = True
        err = UpstreamError(f"backend {b.url} failed mid-stream: {describe(exc)}")
        await resp.write(error_event(err))
    out.prompt, out.completion = scanner.prompt, scanner.completion
    await resp.write_eof()
    return resp

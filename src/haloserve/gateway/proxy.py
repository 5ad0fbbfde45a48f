"""The hot path: one API request from arrival to its last byte, with failover and accounting.

Kept lean on purpose: the body is parsed once with ``json.loads`` and only ``model``, ``stream``,
``stream_options``, ``user`` and (for the prefix policy) the prompt text are read; the body goes
upstream as the original bytes unless the gateway must ask for the usage chunk. Failures before
the first byte reached the client (connection refused or reset, a backend killed mid-request, 502,
503, 504 or 429 answers) are retried on other backends; a failure after it ends the stream with one
SSE error event in OpenAI's shape. Any other 5xx is asked of one other backend only, and only the
backend's own failures count towards its ejection (see :mod:`haloserve.gateway.blame`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import web

from haloserve.errors import (
    HaloError,
    InvalidRequestError,
    PayloadTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from haloserve.gateway.accounting import Reservation, check_model, reserve_estimate
from haloserve.gateway.backends import Backend
from haloserve.gateway.blame import BACKEND_FAULT, Suspect, record
from haloserve.gateway.http1 import (
    BrokenBody,
    ConnectFailed,
    Dropped,
    Response,
    TooLarge,
    UpstreamTimeout,
    describe,
)
from haloserve.gateway.policy import RouteInfo
from haloserve.gateway.store import KeyRecord
from haloserve.gateway.stream import UsageScanner, body_usage, wants_usage
from haloserve.protocol import sse
from haloserve.protocol.sse import EventTooLarge

if TYPE_CHECKING:
    from haloserve.gateway.app import Gateway

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Flow control of a relayed stream: past HIGH bytes waiting in the client's socket buffer the
# upstream socket is no longer read (the backend then blocks on its own writes) until it is below LOW.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
_DRAIN_POLL = 0.002
_TOO_DEEP = "the JSON body is nested too deeply"
_GENERATES = frozenset({"/v1/chat/completions", "/v1/completions"})  # the rest (embeddings): prompt only


def error_response(exc: HaloError) -> web.Response:
    """An OpenAI-shaped error body with the error's status and headers."""
    return web.Response(
        body=json.dumps(exc.to_dict()).encode(),
        status=exc.status,
        content_type="application/json",
        headers=exc.headers or None,
    )


def sse_error_event(exc: HaloError) -> bytes:
    """The one event that ends a stream which failed after it started."""
    return sse.encode(exc.to_dict())


def prompt_text(obj: dict[str, Any]) -> str:
    """The prompt as one string (roles and text parts of messages, or the prompt), for prefix routing."""
    messages = obj.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        for m in messages:
            if not isinstance(m, dict):
                continue
            parts.append(str(m.get("role", "")))
            content = m.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [str(p.get("text", "")) for p in content if isinstance(p, dict)]
        return "\x1e".join(parts)
    prompt = obj.get("prompt", obj.get("input"))
    return prompt if isinstance(prompt, str) else json.dumps(prompt) if prompt is not None else ""


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The request body, 413 beyond ``limit`` bytes (checked before reading when the length is known)."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLargeError(f"request body of {length} bytes is over the {limit}-byte limit")
    if length is not None:
        return await request.content.readexactly(length) if length else b""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


class _BeforeFirstByte(Exception):
    """A stream failed before anything reached the client: safe to retry elsewhere."""


class Outcome:
    """What one request did, for logs, metrics and usage."""

    __slots__ = (
        "attempts",
        "backend",
        "completion",
        "error",
        "held",
        "key",
        "model",
        "prompt",
        "status",
        "ttfb",
    )

    def __init__(self) -> None:
        self.model: str | None = None
        self.key: KeyRecord | None = None
        self.backend: Backend | None = None
        self.status = 0
        self.prompt = 0
        self.completion = 0
        self.attempts = 0
        self.ttfb = 0.0
        self.error = False
        self.held: Reservation | None = None  # tokens held against the key's quota

    def charged(self) -> int:
        """Tokens to charge against the key's quota when the request ends.

        The usage the backend reported; without a report, everything held when a backend may have
        generated (it answered, or was still working when the client left), else nothing.
        """
        used = self.prompt + self.completion
        if used or self.held is None:
            return used
        if self.backend is not None and (self.status < 400 or self.status == 499):
            return self.held.tokens
        return 0


async def proxy(gw: Gateway, request: web.BaseRequest, out: Outcome, start: float) -> web.StreamResponse:
    """Forward one OpenAI API POST; fills ``out``. Raises HaloError for the caller to render."""
    key = gw.keys.lookup(request.headers.get("Authorization"), required=gw.settings.require_keys)
    body = await read_body(request, gw.settings.max_body_bytes)
    try:
        obj = json.loads(body)
    except ValueError:
        raise InvalidRequestError("malformed JSON body") from None
    except RecursionError:  # json's C parser stops near the interpreter's recursion limit (~1000)
        raise InvalidRequestError(_TOO_DEEP) from None
    if not isinstance(obj, dict):
        raise InvalidRequestError("the body must be a JSON object")
    model = obj.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("'model' is required", param="model")
    out.model, out.key = model, key
    check_model(key, model)
    prompt: str | None = None
    if key is not None:
        tokens = 1
        if key.tpm:
            prompt = prompt_text(obj)
            generates = request.path in _GENERATES
            tokens = reserve_estimate(obj, prompt, gw.settings.reserve_tokens if generates else None)
        out.held = gw.quotas.admit(key, tokens)
    stream = obj.get("stream") is True
    strip = False
    if stream and not wants_usage(obj):
        opts = obj.get("stream_options")
        obj["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
        try:
            body = json.dumps(obj, separators=(",", ":")).encode()
        except RecursionError:
            raise InvalidRequestError(_TOO_DEEP) from None
        strip = True
    info = RouteInfo(model=model)
    if gw.pool.balancer.needs_prompt:
        info.prompt = prompt_text(obj) if prompt is None else prompt
    session = request.headers.get(gw.session_header) or obj.get("user")
    info.session = session if isinstance(session, str) and session else None
    return await _attempts(gw, request, out, start, body, model, info, stream, strip)


async def _attempts(
    gw: Gateway,
    request: web.BaseRequest,
    out: Outcome,
    start: float,
    body: bytes,
    model: str,
    info: RouteInfo,
    stream: bool,
    strip: bool,
) -> web.StreamResponse:
    pool = gw.pool
    exclude: set[str] = set()
    stale: set[str] = set()
    max_attempts = 1 + gw.settings.retries
    last: HaloError | None = None
    suspect: Suspect | None = None
    headers = {"Content-Type": "application/json"}
    rid = request.headers.get("X-Request-Id")
    if rid and "\r" not in rid and "\n" not in rid:
        headers["X-Request-Id"] = rid
    timeout = gw.settings.request_timeout
    while out.attempts < max_attempts:
        try:
            b, waited = await pool.acquire(model, info, exclude)
        except HaloError:
            if suspect is not None:
                return _answer(suspect, out)
            if last is not None:
                raise last from None
            raise
        if out.attempts and gw.settings.retries:
            gw.metrics.retries.inc()
        if waited:
            gw.metrics.queue_wait.observe(waited)
        out.attempts += 1
        out.backend = b
        upstream: Response | None = None
        try:
            h = headers
            if b.api_key:
                h = {**headers, "Authorization": "Bearer " + b.api_key}
            try:
                upstream = await gw.upstream.request(
                    b.url, request.path, body, h, timeout, fresh=b.url in stale
                )
            except ConnectFailed as exc:  # refused or unreachable: the node is down
                last = _failed(gw, b, exclude, f"cannot reach {b.url}: {exc}", fatal=True)
                continue
            except Dropped as exc:
                # Often a pooled keep-alive connection the backend had just closed: try the same
                # backend once more on a fresh connection before looking elsewhere.
                if b.url in stale:
                    last = _failed(gw, b, exclude, f"{b.url} dropped the request: {exc}")
                else:
                    stale.add(b.url)
                    max_attempts += 1  # this retry does not use up the --retries budget
                    last = UpstreamError(f"{b.url} dropped the request: {exc}")
                continue
            except BrokenBody as exc:
                last = _failed(gw, b, exclude, f"{b.url} sent a malformed response: {exc}")
                continue
            except UpstreamTimeout:
                upstream_timeout(gw, b)
            status = upstream.status
            ctype = upstream.content_type or "application/json"
            if (status == 429 or status in BACKEND_FAULT) and out.attempts < max_attempts:
                with contextlib.suppress(BrokenBody, UpstreamTimeout):
                    await upstream.read()
                if status == 429:  # busy, not broken: another backend may have room
                    exclude.add(b.url)
                    last = UpstreamError(f"{b.url} answered {status}")
                else:
                    last = _failed(gw, b, exclude, f"{b.url} answered {status}")
                continue
            if status >= 500 and suspect is None and out.attempts < max_attempts:
                try:
                    data = await upstream.read()
                except TooLarge as exc:
                    raise _too_large(b, exc) from None
                except (BrokenBody, UpstreamTimeout) as exc:
                    last = _failed(gw, b, exclude, f"{b.url} failed mid-response: {describe(exc)}")
                    continue
                suspect = Suspect(b, status, data, ctype)
                exclude.add(b.url)
                continue
            is_sse = ctype.startswith("text/event-stream")
            if not (stream and is_sse and upstream.status == 200):
                try:
                    data = await upstream.read()
                except TooLarge as exc:
                    raise _too_large(b, exc) from None
                except BrokenBody as exc:
                    last = _failed(gw, b, exclude, f"{b.url} failed mid-response: {exc}")
                    continue
                except UpstreamTimeout:
                    upstream_timeout(gw, b)
                out.status = status
                record(gw, b, status, suspect)
                if status == 200:
                    out.prompt, out.completion = body_usage(data)
                return web.Response(body=data, status=status, headers={"Content-Type": ctype})
            try:
                resp = await _stream(gw, request, upstream, b, out, start, strip)
            except _BeforeFirstByte as exc:
                last = _failed(gw, b, exclude, str(exc))
                continue
            record(gw, b, 200, suspect, counted=True)
            return resp
        finally:
            if upstream is not None:
                upstream.close()
            pool.release(b)
    if suspect is not None:
        return _answer(suspect, out)
    assert last is not None
    raise last


def _answer(suspect: Suspect, out: Outcome) -> web.Response:
    out.status, out.backend = suspect.status, suspect.backend
    return suspect.response()


def upstream_timeout(gw: Gateway, b: Backend) -> NoReturn:
    """A backend took longer than --request-timeout: count a failure, answer 504 (never retried)."""
    gw.on_failure(b, fatal=False)
    raise UpstreamTimeoutError(f"backend {b.url} did not answer within {gw.settings.request_timeout:g}s")


def _too_large(b: Backend, exc: Exception) -> UpstreamError:
    """A response past a buffer bound: a clean 502, neither retried nor counted against the backend.

    Its size may come from the request (an echoed long prompt, a large batch), so counting it would
    let one client eject healthy backends; the bound itself keeps the gateway safe.
    """
    return UpstreamError(f"backend {b.url} sent too much: {exc}")


def _failed(gw: Gateway, b: Backend, exclude: set[str], message: str, *, fatal: bool = False) -> HaloError:
    gw.on_failure(b, fatal=fatal)
    exclude.add(b.url)
    return UpstreamError(message)


async def _stream(
    gw: Gateway,
    request: web.BaseRequest,
    upstream: Response,
    b: Backend,
    out: Outcome,
    start: float,
    strip: bool,
) -> web.StreamResponse:
    """Relay an SSE stream. The client's response starts only once the first upstream bytes arrived.

    After the first event, every upstream piece is forwarded from inside the upstream connection's
    ``data_received`` (one parse, one write, no task switch); this task only waits for the end, and
    for the client's socket to drain when it reads slower than the backend writes.
    """
    scanner = UsageScanner(strip, gw.settings.max_backend_event_bytes)
    first = b""
    try:
        while not first:
            chunk = await upstream.read_some()
            if not chunk:
                break
            first = scanner.feed(chunk)
    except EventTooLarge as exc:
        raise _too_large(b, exc) from None
    except (BrokenBody, UpstreamTimeout) as exc:
        raise _BeforeFirstByte(f"{b.url} failed before its first byte: {describe(exc)}") from exc
    if not first:
        first = scanner.flush()
        if not first:
            raise _BeforeFirstByte(f"{b.url} ended its stream before sending anything")
    resp = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    await resp.prepare(request)
    out.status = 200
    out.ttfb = time.perf_counter() - start
    gw.metrics.ttft.labels(b.url).observe(out.ttfb)
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
        await resp.write(sse_error_event(_too_large(b, exc)))
    except (BrokenBody, UpstreamTimeout) as exc:
        gw.on_failure(b, fatal=False)
        out.error = True
        err = UpstreamError(f"backend {b.url} failed mid-stream: {describe(exc)}")
        await resp.write(sse_error_event(err))
    out.prompt, out.completion = scanner.prompt, scanner.completion
    await resp.write_eof()
    return resp

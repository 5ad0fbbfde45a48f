"""The hot path: one API request from arrival to its last byte, with failover and accounting.

Kept lean on purpose: the body goes upstream as the original bytes unless the gateway must ask for
the usage chunk. Failures before the first byte reached the client (connection refused or reset, a
backend killed mid-request, 502, 503, 504 or 429 answers) are retried on other backends; a failure
after it ends the stream with one SSE error event in OpenAI's shape. Any other 5xx is asked of one
other backend only, and only the backend's own failures count towards its ejection (see
:mod:`haloserve.gateway.blame`).

:class:`Proxy` gets everything it works with from whoever builds it (the gateway): the backend pool,
the upstream client, metrics, the failure callback, the settings and the accounting. It never
reaches back into the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import NoReturn

from aiohttp import web

from haloserve.config.gateway import GatewaySettings
from haloserve.errors import HaloError, ServiceUnavailableError, UpstreamError, UpstreamTimeoutError
from haloserve.gateway.accounting import Accounting, check_model, reserve_estimate
from haloserve.gateway.backends import Backend
from haloserve.gateway.blame import BACKEND_FAULT, OnFailure, Suspect, record, too_large
from haloserve.gateway.http1 import (
    BrokenBody,
    ClientPool,
    ConnectFailed,
    Dropped,
    Response,
    TooLarge,
    UpstreamTimeout,
    describe,
)
from haloserve.gateway.metrics import GatewayMetrics
from haloserve.gateway.policy import RouteInfo
from haloserve.gateway.pool import Pool
from haloserve.gateway.relay import BeforeFirstByte, relay_stream
from haloserve.gateway.request import Outcome, dump_body, error_response, parse_body, prompt_text, read_body
from haloserve.gateway.serverlog import AccessLog
from haloserve.gateway.stream import UsageScanner, body_usage, wants_usage
from haloserve.protocol import sse

log = logging.getLogger("haloserve.gateway")
_GENERATES = frozenset({"/v1/chat/completions", "/v1/completions"})  # the rest (embeddings): prompt only


class Proxy:
    """Forwards OpenAI API POSTs to backends; ``await proxy.handle(request)`` answers one."""

    def __init__(
        self,
        *,
        settings: Callable[[], GatewaySettings],
        pool: Pool,
        upstream: ClientPool,
        metrics: GatewayMetrics,
        on_failure: OnFailure,
        accounting: Accounting,
        access_log: AccessLog,
    ) -> None:
        self._settings = settings  # read per request: a reload swaps the settings
        self.pool = pool
        self.upstream = upstream
        self.metrics = metrics
        self.on_failure = on_failure
        self.accounting = accounting
        self.access_log = access_log
        self.draining = False  # set at shutdown: new requests get a 503
        self.active = 0  # requests in progress
        self._models_cache: tuple[float, frozenset[str]] = (0.0, frozenset())

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one API request; every failure becomes an OpenAI error body."""
        start = time.perf_counter()
        out = Outcome()
        self.active += 1
        try:
            if self.draining:
                raise ServiceUnavailableError("the gateway is shutting down", retry_after=1.0)
            return await self._forward(request, out, start)
        except HaloError as exc:
            out.status, out.error = exc.status, True
            resp = error_response(exc)
            if self.draining:
                resp.headers["Connection"] = "close"
            return resp
        except asyncio.CancelledError:
            out.status = 499  # nginx's code for a client that closed the connection
            raise
        except ConnectionResetError:  # the client closed the connection while we wrote to it
            out.status = 499
            return web.Response(status=499)
        except Exception:
            log.exception("unexpected error on %s", request.path)
            out.status, out.error = 500, True
            return error_response(HaloError("internal gateway error"))
        finally:
            self.active -= 1
            self._finish(request, out, start)

    def known_models(self) -> frozenset[str]:
        """Every model some backend serves (cached for a second)."""
        now = time.monotonic()
        if now - self._models_cache[0] > 1.0:
            self._models_cache = (now, frozenset(self.pool.models()))
        return self._models_cache[1]

    async def _forward(self, request: web.BaseRequest, out: Outcome, start: float) -> web.StreamResponse:
        """Check, admit and route one request; fills ``out``. Raises HaloError for :meth:`handle`."""
        s = self._settings()
        acct = self.accounting
        key = acct.keys.lookup(request.headers.get("Authorization"), required=s.require_keys)
        body = await read_body(request, s.max_body_bytes)
        obj, model = parse_body(body)
        out.model, out.key = model, key
        check_model(key, model)
        prompt: str | None = None
        if key is not None:
            tokens = 1
            if key.tpm:
                prompt = prompt_text(obj)
                generates = request.path in _GENERATES
                tokens = reserve_estimate(obj, prompt, s.reserve_tokens if generates else None)
            out.held = acct.quotas.admit(key, tokens)
        stream = obj.get("stream") is True
        strip = False
        if stream and not wants_usage(obj):
            opts = obj.get("stream_options")
            obj["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
            body = dump_body(obj)
            strip = True
        info = RouteInfo(model=model)
        if self.pool.balancer.needs_prompt:
            info.prompt = prompt_text(obj) if prompt is None else prompt
        session = request.headers.get(s.session_header) or obj.get("user")
        info.session = session if isinstance(session, str) and session else None
        headers = {"Content-Type": "application/json"}
        rid = request.headers.get("X-Request-Id")
        if rid and "\r" not in rid and "\n" not in rid:
            headers["X-Request-Id"] = rid
        run = Attempts(request, out, start, s, body, headers, stream=stream, strip=strip)
        return await self._attempts(run, info)

    async def _attempts(self, run: Attempts, info: RouteInfo) -> web.StreamResponse:
        """Try backends one after the other until one answers for the client or none is left."""
        out, s = run.out, run.settings
        while out.attempts < run.max_attempts:
            try:
                b, waited = await self.pool.acquire(info.model, info, run.exclude)
            except HaloError:
                if run.suspect is not None:
                    return _answer(run.suspect, out)
                if run.last is not None:
                    raise run.last from None
                raise
            if out.attempts and s.retries:
                self.metrics.retries.inc()
            if waited:
                self.metrics.queue_wait.observe(waited)
            out.attempts += 1
            out.backend = b
            try:
                resp = await self._try_once(run, b)
            finally:
                self.pool.release(b)
            if resp is not None:
                return resp
        if run.suspect is not None:
            return _answer(run.suspect, out)
        assert run.last is not None
        raise run.last

    async def _try_once(self, run: Attempts, b: Backend) -> web.StreamResponse | None:
        """One attempt on ``b``: the response for the client, or None to try another backend
        (``run.last`` or ``run.suspect`` then says why). Raises what must not be retried."""
        out, s = run.out, run.settings
        h = run.headers
        if b.api_key:
            h = {**h, "Authorization": "Bearer " + b.api_key}
        upstream: Response | None = None
        try:
            try:
                upstream = await self.upstream.request(
                    b.url, run.request.path, run.body, h, s.request_timeout, fresh=b.url in run.stale
                )
            except ConnectFailed as exc:  # refused or unreachable: the node is down
                self._failed(run, b, f"cannot reach {b.url}: {exc}", fatal=True)
                return None
            except Dropped as exc:
                # Often a pooled keep-alive connection the backend had just closed: try the same
                # backend once more on a fresh connection before looking elsewhere.
                if b.url in run.stale:
                    self._failed(run, b, f"{b.url} dropped the request: {exc}")
                    return None
                run.stale.add(b.url)
                run.max_attempts += 1  # this retry does not use up the --retries budget
                run.last = UpstreamError(f"{b.url} dropped the request: {exc}")
                return None
            except BrokenBody as exc:
                self._failed(run, b, f"{b.url} sent a malformed response: {exc}")
                return None
            except UpstreamTimeout:
                self._timed_out(b, s)
            status = upstream.status
            ctype = upstream.content_type or "application/json"
            more = out.attempts < run.max_attempts  # another backend may still be asked
            if (status == 429 or status in BACKEND_FAULT) and more:
                with contextlib.suppress(BrokenBody, UpstreamTimeout):
                    await upstream.read()
                if status == 429:  # busy, not broken: another backend may have room
                    run.exclude.add(b.url)
                    run.last = UpstreamError(f"{b.url} answered {status}")
                    return None
                self._failed(run, b, f"{b.url} answered {status}")
                return None
            if status >= 500 and run.suspect is None and more:
                try:
                    data = await upstream.read()
                except TooLarge as exc:
                    raise too_large(b, exc) from None
                except (BrokenBody, UpstreamTimeout) as exc:
                    self._failed(run, b, f"{b.url} failed mid-response: {describe(exc)}")
                    return None
                run.suspect = Suspect(b, status, data, ctype)
                run.exclude.add(b.url)
                return None
            if not (run.stream and ctype.startswith(sse.CONTENT_TYPE) and status == 200):
                try:
                    data = await upstream.read()
                except TooLarge as exc:
                    raise too_large(b, exc) from None
                except BrokenBody as exc:
                    self._failed(run, b, f"{b.url} failed mid-response: {exc}")
                    return None
                except UpstreamTimeout:
                    self._timed_out(b, s)
                out.status = status
                record(self.on_failure, b, status, run.suspect)
                if status == 200:
                    out.prompt, out.completion = body_usage(data)
                return web.Response(body=data, status=status, headers={"Content-Type": ctype})
            scanner = UsageScanner(run.strip, s.max_backend_event_bytes)
            try:
                resp = await relay_stream(
                    run.request, upstream, b, out, run.start, scanner, self.metrics, self.on_failure
                )
            except BeforeFirstByte as exc:
                self._failed(run, b, str(exc))
                return None
            record(self.on_failure, b, 200, run.suspect, counted=True)
            return resp
        finally:
            if upstream is not None:
                upstream.close()

    def _failed(self, run: Attempts, b: Backend, message: str, *, fatal: bool = False) -> None:
        """``b`` failed this attempt by its own fault: count it, try elsewhere, remember why."""
        self.on_failure(b, fatal=fatal)
        run.exclude.add(b.url)
        run.last = UpstreamError(message)

    def _timed_out(self, b: Backend, s: GatewaySettings) -> NoReturn:
        """A backend took longer than --request-timeout: count a failure, answer 504 (never retried)."""
        self.on_failure(b, fatal=False)
        raise UpstreamTimeoutError(f"backend {b.url} did not answer within {s.request_timeout:g}s")

    def _finish(self, request: web.BaseRequest, out: Outcome, start: float) -> None:
        """Metrics, usage, the quota's settlement and the access log line of a finished request."""
        elapsed = time.perf_counter() - start
        model, key = out.model, out.key
        b = out.backend
        url = b.url if b is not None else "-"
        self.metrics.requests.labels(url, str(out.status)).inc()
        if b is not None:
            self.metrics.latency.labels(url).observe(elapsed)
        acct = self.accounting
        if model is not None and (b is not None or model in self.known_models()):
            acct.usage.add(key, model, out.prompt, out.completion, error=out.error)
        if key is not None:
            acct.quotas.settle(key, out.held, out.charged())
        if self._settings().access_log:
            self.access_log.add(
                {
                    "ts": round(time.time(), 3),
                    "method": request.method,
                    "path": request.path,
                    "status": out.status,
                    "model": model[:128] if model else model,  # the client chose it: bounded
                    "backend": url,
                    "key": key.id if key is not None else None,
                    "attempts": out.attempts,
                    "ms": round(elapsed * 1000, 2),
                    "ttfb_ms": round(out.ttfb * 1000, 2) if out.ttfb else None,
                    "prompt_tokens": out.prompt,
                    "completion_tokens": out.completion,
                }
            )


def _answer(suspect: Suspect, out: Outcome) -> web.Response:
    out.status, out.backend = suspect.status, suspect.backend
    return suspect.response()


class Attempts:
    """One request's way through the backends: what goes upstream, and what the tries so far left."""

    __slots__ = (
        "body",
        "exclude",
        "headers",
        "last",
        "max_attempts",
        "out",
        "request",
        "settings",
        "stale",
        "start",
        "stream",
        "strip",
        "suspect",
    )

    def __init__(
        self,
        request: web.BaseRequest,
        out: Outcome,
        start: float,
        settings: GatewaySettings,
        body: bytes,
        headers: dict[str, str],
        *,
        stream: bool,
        strip: bool,
    ) -> None:
        self.request = request
        self.out = out
        self.start = start
        self.settings = settings  # as they were when the request arrived, for all its attempts
        self.body = body
        self.headers = headers
        self.stream = stream  # the client asked for a stream
        self.strip = strip  # the gateway asked for the usage chunk: the client must not see it
        self.max_attempts = 1 + settings.retries
        self.exclude: set[str] = set()  # backends not to ask again
        self.stale: set[str] = set()  # backends to ask again on a fresh connection
        self.last: HaloError | None = None  # why the last attempt failed
        self.suspect: Suspect | None = None  # a 5xx kept until another backend says whose fault it is

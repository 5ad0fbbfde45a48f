"""A fast fake OpenAI upstream: a real HTTP server with scripted timing and failures, and no model.

This is a **test double**, used by the tests and benchmarks of ``halo bench`` and ``halo gateway``.
It speaks the OpenAI wire format (``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``,
streaming or not, ``stream_options.include_usage``) with made-up words for output and a stated toy
tokenizer (see :mod:`haloserve.testing.upstream_config`). What it gives that a real server cannot:

- known timing: the first token is written ``ttft_ms`` after the request arrived and token ``k`` at
  ``ttft_ms + k * itl_ms``, on absolute deadlines so errors never accumulate; with
  ``record_timings`` it keeps the ``time.perf_counter()`` of every token write (CLOCK_MONOTONIC, the
  same clock in every process on Linux) so a load generator's own error can be measured exactly;
- failure injection: HTTP errors, connections dropped before headers, streams cut mid-way, malformed
  SSE events, streams whose events never end (no blank line), response heads that never end, slow
  headers, a required API key, errors caused by request content (``error_on``);
- line ends: LF as OpenAI sends them, CRLF as sse-starlette does, or bare CR (``line_end``);
- counters at ``GET /fake/stats`` (requests, connections accepted, tokens, injections),
  behaviour changed at run time with ``POST /fake/config``,
  ``POST /fake/reset`` and ``GET /fake/timings``.

Use it in-process (``async with FakeUpstream(config) as up: up.url``), in a thread
(:func:`serve_in_thread`), in a child process (:func:`spawn`), or from a shell:
``python -m haloserve.testing.upstream --port 9000 --ttft-ms 50 --itl-ms 10``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from haloserve.errors import (
    AuthenticationError,
    HaloError,
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
)
from haloserve.testing.upstream_config import (
    OUTPUT_WORDS,
    UpstreamConfig,
    UpstreamStats,
    draw_injection,
    output_tokens,
    prompt_tokens,
    token_text,
)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
_JSON = "application/json"
_WORDS_JSON = [json.dumps(token_text(i)).encode() for i in range(len(OUTPUT_WORDS))]
_BROKEN_EVENT = b'data: {"choices": [{"delta": {"content": "unterminated\n\n'
_LINE_ENDS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}
_FLOOD_PIECE = 64 * 1024


class _Dropped(web.Response):
    """Returned after the connection was aborted on purpose: nothing is sent, no status counted."""


def _json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(obj, separators=(",", ":")).encode(),
        status=status,
        content_type=_JSON,
        headers=headers,
    )


def _error(exc: HaloError) -> web.Response:
    return _json_response(exc.to_dict(), exc.status, exc.headers or None)


class _Chunks:
    """Pre-encoded pieces of one stream's SSE chunks (string joins, no json.dumps per token)."""

    def __init__(self, chat: bool, model: str, include_usage: bool, words: list[str] | None = None) -> None:
        self.chat = chat
        self.words = [json.dumps(w).encode() for w in words] if words else _WORDS_JSON
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        obj = "chat.completion.chunk" if chat else "text_completion"
        usage = ',"usage":null' if include_usage else ""
        self.head = (
            f'data: {{"id":"{rid}","object":"{obj}","created":{int(time.time())},'
            f'"model":{json.dumps(model)},"system_fingerprint":null,"choices":[{{"index":0,'
        ).encode()
        self.tail = (',"logprobs":null,"finish_reason":null}]' + usage + "}\n\n").encode()
        self.usage_head = self.head.replace(b'"choices":[{"index":0,', b'"choices":[],"usage":')

    def role(self) -> bytes:
        """The first chat chunk: the assistant role with empty content, as OpenAI sends it."""
        return self.head + b'"delta":{"role":"assistant","content":"","refusal":null}' + self.tail

    def token(self, index: int) -> bytes:
        """The chunk carrying generated token ``index``."""
        text = self.words[index % len(self.words)]
        if self.chat:
            return self.head + b'"delta":{"content":' + text + b"}" + self.tail
        return self.head + b'"text":' + text + self.tail

    def finish(self, reason: str) -> bytes:
        """The chunk that carries only the finish reason."""
        body = b'"delta":{}' if self.chat else b'"text":""'
        return (
            self.head
            + body
            + self.tail.replace(b'"finish_reason":null', f'"finish_reason":"{reason}"'.encode())
        )

    def usage(self, n_in: int, n_out: int) -> bytes:
        """The final ``include_usage`` chunk: empty choices and the token counts."""
        u = f'{{"prompt_tokens":{n_in},"completion_tokens":{n_out},"total_tokens":{n_in + n_out}}}}}\n\n'
        return self.usage_head + u.encode()


class FakeUpstream:
    """The fake OpenAI server on one event loop: ``async with FakeUpstream(cfg) as up: ...``."""

    def __init__(
        self,
        config: UpstreamConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config or UpstreamConfig()
        self.tls = tls  # serve https:// with this server context
        self.host = host
        self.port = port
        self.stats = UpstreamStats()
        self.timings: list[dict[str, Any]] = []
        self._rng = random.Random(self.config.seed)
        self._served: weakref.WeakSet[Any] = weakref.WeakSet()  # connections that answered a request
        self._server: web.Server | None = None
        self._tcp: asyncio.AbstractServer | None = None
        self._routes: dict[tuple[str, str], Handler] = {
            ("GET", "/v1/models"): self._models,
            ("GET", "/health"): self._health,
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
            ("GET", "/fake/stats"): self._get_stats,
            ("GET", "/fake/config"): self._get_config,
            ("POST", "/fake/config"): self._set_config,
            ("POST", "/fake/reset"): self._reset,
            ("GET", "/fake/timings"): self._get_timings,
        }

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:41234``."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    async def start(self) -> FakeUpstream:
        """Listen on ``host:port`` (port 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._server = web.Server(self.handle, handler_cancellation=True, access_log=None)
        server = self._server

        def connection() -> asyncio.Protocol:
            self.stats.connections += 1
            return server()

        self._tcp = await loop.create_server(
            connection, self.host, self.port, backlog=4096, reuse_address=True, ssl=self.tls
        )
        self.port = int(self._tcp.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._tcp is not None:
            self._tcp.close()
        if self._server is not None:
            self._server.pre_shutdown()  # idle keep-alive connections close now, not after the timeout
            await self._server.shutdown(1.0)
        if self._tcp is not None:
            await self._tcp.wait_closed()
        self._tcp = self._server = None

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def configure(self, **changes: Any) -> UpstreamConfig:
        """Change behaviour in place (validated); re-seeds failure draws when ``seed`` is given."""
        merged = {**self.config.model_dump(), **changes}
        self.config = UpstreamConfig.model_validate(merged)
        if "seed" in changes:
            self._rng = random.Random(self.config.seed)
        return self.config

    def reset(self) -> None:
        """Zero the counters and forget recorded timings."""
        in_flight = self.stats.in_flight
        self.stats = UpstreamStats(in_flight=in_flight)
        self.timings = []

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Dispatch one request; API paths are counted, ``/fake/*`` control paths are not."""
        route = self._routes.get((request.method, request.path))
        counted = not request.path.startswith("/fake/")
        stats = self.stats
        if counted:
            stats.requests += 1
            stats.by_path[request.path] = stats.by_path.get(request.path, 0) + 1
        if route is None:
            return _error(NotFoundError(f"no route {request.method} {request.path}"))
        if not counted:
            return await route(request)
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            resp = await route(request)
        except (asyncio.CancelledError, ConnectionResetError):
            stats.cancelled += 1
            raise
        finally:
            stats.in_flight -= 1
        if isinstance(resp, _Dropped):
            return resp
        key = str(resp.status)
        stats.by_status[key] = stats.by_status.get(key, 0) + 1
        return resp

    async def _models(self, request: web.BaseRequest) -> web.StreamResponse:
        if (denied := self._check_key(request)) is not None:
            return denied
        created = int(time.time())
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "fake"} for m in self.config.models
        ]
        for card in data:
            state = self.config.model_status.get(str(card["id"]))
            if state is not None:  # the shape of llama-server's router mode and halo serve --models-dir
                status: dict[str, Any] = {"value": state}
                if state == "failed":
                    status.update(failed=True, error="fake: failed to load")
                card["status"] = status
        return _json_response({"object": "list", "data": data})

    async def _health(self, request: web.BaseRequest) -> web.StreamResponse:
        status = self.config.health_status
        return _json_response({"status": "ok" if status == 200 else "unavailable"}, status)

    async def _chat(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _completions(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    def _check_key(self, request: web.BaseRequest) -> web.Response | None:
        import hmac

        key = self.config.api_key
        if not key:
            return None
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if hmac.compare_digest(given.encode(), key.encode()):
            return None
        return _error(AuthenticationError("invalid or missing API key"))

    async def _generate(self, request: web.BaseRequest, chat: bool) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        start = loop.time()
        received = time.perf_counter()
        cfg = self.config
        if (denied := self._check_key(request)) is not None:
            return denied
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(InvalidRequestError("request body is not valid JSON"))
        if not isinstance(body, dict):
            return _error(InvalidRequestError("request body must be a JSON object"))
        if chat and not isinstance(body.get("messages"), list):
            return _error(InvalidRequestError("'messages' is required", param="messages"))
        if not chat and body.get("prompt") is None:
            return _error(InvalidRequestError("'prompt' is required", param="prompt"))
        model = body.get("model") or cfg.models[0]
        if model not in cfg.models:
            return _error(ModelNotFoundError(f"the model {model!r} does not exist", param="model"))
        if cfg.model_status.get(model) == "unloaded":  # loaded on demand (at once: the fake has no weights)
            cfg.model_status = {**cfg.model_status, model: "loaded"}
        if cfg.error_on is not None and cfg.error_on.encode() in raw:
            self.stats.injected["poisoned"] += 1
            poisoned = HaloError(f"fake upstream: the request contains {cfg.error_on!r}")
            poisoned.status = cfg.error_status
            return _error(poisoned)
        transport = request.transport
        if cfg.drop_reused and transport is not None:
            if transport in self._served:
                self.stats.injected["reused"] += 1
                transport.abort()
                return _Dropped()
            self._served.add(transport)
        inj = draw_injection(cfg, self._rng)
        if inj.drop:
            self.stats.injected["drop"] += 1
            assert request.transport is not None
            request.transport.abort()
            return _Dropped()
        if inj.endless_header:
            self.stats.injected["endless_header"] += 1
            await self._endless_head(request)
            return _Dropped()
        if cfg.header_delay_ms:
            await asyncio.sleep(cfg.header_delay_ms / 1000)
        if inj.error:
            self.stats.injected["error"] += 1
            err = HaloError(f"fake upstream: injected error {cfg.error_status}")
            err.status = cfg.error_status
            return _error(err)
        n_out, finish = output_tokens(body, cfg, chat)
        n_in = prompt_tokens(body)
        record: dict[str, Any] | None = None
        if cfg.record_timings and len(self.timings) < cfg.max_timings:
            rid = request.headers.get("X-Request-Id") or uuid.uuid4().hex
            record = {"id": rid, "received": received, "tokens": []}
            self.timings.append(record)
        if not body.get("stream"):
            await _sleep_until(loop, start + (cfg.ttft_ms + (n_out - 1) * cfg.itl_ms) / 1000)
            return _json_response(_full_response(chat, model, n_in, n_out, finish, cfg.words))
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        return await self._stream(
            request, chat, model, n_in, n_out, finish, include_usage, inj, start, record
        )

    async def _stream(
        self,
        request: web.BaseRequest,
        chat: bool,
        model: str,
        n_in: int,
        n_out: int,
        finish: str,
        include_usage: bool,
        inj: Any,
        start: float,
        record: dict[str, Any] | None,
    ) -> web.StreamResponse:
        cfg, stats = self.config, self.stats
        loop = asyncio.get_running_loop()
        stats.streams += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        chunks = _Chunks(chat, model, include_usage, cfg.words)
        eol = _LINE_ENDS[cfg.line_end]
        fault_at = min(cfg.cut_after_tokens, n_out - 1)
        ttft, itl = cfg.ttft_ms / 1000, cfg.itl_ms / 1000
        for i in range(n_out):
            late = await _sleep_until(loop, start + ttft + i * itl)
            if late > stats.lateness_ms_max / 1000:
                stats.lateness_ms_max = late * 1000
            if inj.cut and i == fault_at:
                stats.injected["cut"] += 1
                assert request.transport is not None
                request.transport.close()
                return resp
            if inj.unframed and i == fault_at:
                stats.injected["unframed"] += 1
                await self._unframed(resp, chunks.token(i), eol)
                return resp
            parts = [chunks.role()] if (i == 0 and chat) else []
            if inj.broken and i == fault_at:
                stats.injected["broken"] += 1
                parts.append(_BROKEN_EVENT)
            parts.append(chunks.token(i))
            if i == n_out - 1:
                parts.append(chunks.finish(finish))
                if include_usage:
                    parts.append(chunks.usage(n_in, n_out))
                parts.append(b"data: [DONE]\n\n")
            if record is not None:
                record["tokens"].append(time.perf_counter())
            data = b"".join(parts)
            await resp.write(data if eol == b"\n" else data.replace(b"\n", eol))
            stats.tokens_sent += 1
        await resp.write_eof()
        stats.completed += 1
        return resp

    async def _unframed(self, resp: web.StreamResponse, event: bytes, eol: bytes) -> None:
        """Data lines with no blank line between them, until the client leaves or flood_bytes went."""
        line = event.rstrip(b"\n") + eol
        piece = line * max(1, _FLOOD_PIECE // len(line))
        sent = 0
        with contextlib.suppress(ConnectionResetError):
            while sent < self.config.flood_bytes:
                await resp.write(piece)  # waits while the client's socket buffer is full
                sent += len(piece)

    async def _endless_head(self, request: web.BaseRequest) -> None:
        """A status line and one header whose value never ends, written raw (then the connection drops)."""
        transport = request.transport
        assert transport is not None
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Endless: ")
        piece = b"a" * _FLOOD_PIECE
        sent = 0
        while sent < self.config.flood_bytes and not transport.is_closing():
            transport.write(piece)
            sent += len(piece)
            while transport.get_write_buffer_size() > 4 * _FLOOD_PIECE and not transport.is_closing():
                await asyncio.sleep(0.002)
        transport.abort()

    async def _get_stats(self, request: web.BaseRequest) -> web.StreamResponse:
        return _json_response(self.stats.as_dict())

    async def _get_config(self, request: web.BaseRequest) -> web.StreamResponse:
        return _json_response(self.config.model_dump())

    async def _set_config(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            changes = json.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("config must be a JSON object")
            return _json_response(self.configure(**changes).model_dump())
        except (ValueError, ValidationError) as exc:
            return _error(InvalidRequestError(f"bad fake config: {exc}"))

    async def _reset(self, request: web.BaseRequest) -> web.StreamResponse:
        self.reset()
        return _json_response({"reset": True})

    async def _get_timings(self, request: web.BaseRequest) -> web.StreamResponse:
        return _json_response({"clock": "perf_counter", "requests": self.timings})


async def _sleep_until(loop: asyncio.AbstractEventLoop, deadline: float) -> float:
    """Sleep until ``deadline`` on the loop clock; returns how late we woke (seconds, >= 0)."""
    delay = deadline - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)
    return max(0.0, loop.time() - deadline)


def _full_response(
    chat: bool, model: str, n_in: int, n_out: int, finish: str, words: list[str] | None = None
) -> dict[str, Any]:
    text = "".join(words[i % len(words)] if words else token_text(i) for i in range(n_out))
    usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
    base = {"created": int(time.time()), "model": model, "system_fingerprint": None, "usage": usage}
    if chat:
        message = {"role": "assistant", "content": text, "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "choices": [choice],
            **base,
        }
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {"id": "cmpl-" + uuid.uuid4().hex[:24], "object": "text_completion", "choices": [choice], **base}


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is installed, else the default asyncio loop."""
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()


@contextmanager
def serve_in_thread(
    config: UpstreamConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: ssl.SSLContext | None = None,
) -> Iterator[FakeUpstream]:
    """Run a :class:`FakeUpstream` on its own loop in a daemon thread, for synchronous callers."""
    upstream = FakeUpstream(config, host, port, tls)
    loop = new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(upstream.start())
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(upstream.close())
        loop.close()

    thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
    thread.start()
    ready.wait()
    if failure:
        raise failure[0]
    try:
        yield upstream
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


if __name__ == "__main__":
    from haloserve.testing.upstream_cli import main

    raise SystemExit(main())

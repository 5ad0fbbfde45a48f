"""One streamed request: send it, timestamp every read, then parse the SSE into a request record.

The hot loop only reads and timestamps (``time.perf_counter()`` right after each read returns), so a
busy client adds as little as possible to what it measures; parsing happens when the stream ends.
A *token chunk* is an event whose first choice carries generated text (``delta.content``,
``delta.reasoning_content``/``reasoning``, tool-call arguments, or ``text``). vLLM's client also
counts chunks that carry only the role or only a finish reason; on servers that send those (OpenAI
does) that adds near-zero ITL samples, so we skip them. TTFT, E2EL and ITL otherwise follow vLLM.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler

from haloserve.bench.schema import ErrorKind, RequestRecord
from haloserve.protocol.sse import Decoder

_MAX_ERROR_BODY = 4096
# Events parsed between two hand-backs to the event loop (~40 µs of work; see parse_steps).
PARSE_SLICE = 8
# Per-stream read buffer: a whole streamed reply is buffered before the task reads it (64 MiB is
# ~250k streamed tokens of chat JSON; aiohttp pauses the socket at twice this).
STREAM_BUFFER = 64 * 2**20


@dataclass(slots=True)
class Call:
    """A request ready to send: where, what, and what we estimate its prompt to be."""

    url: str
    body: bytes
    headers: dict[str, str]
    request_id: str
    prompt_tokens_estimate: int


@dataclass(slots=True)
class Outcome:
    """What came back: raw reads with their timestamps, or a failure before or during the body."""

    called: float
    start: float = 0.0
    reused: bool = False
    resent: bool = False
    status: int | None = None
    reads: list[tuple[float, bytes]] = field(default_factory=list)
    error_kind: ErrorKind | None = None
    error: str | None = None
    body: bytes = b""


@dataclass(slots=True)
class Parsed:
    """The stream, decoded: token chunk times, text, usage and how it ended."""

    token_times: list[float] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    done: bool = False
    finished: bool = False
    broken: str | None = None


async def _on_chunk_sent(session: Any, ctx: Any, params: Any) -> None:
    out = ctx.trace_request_ctx
    if isinstance(out, Outcome) and not out.start:
        out.start = time.perf_counter()


async def _on_reuse(session: Any, ctx: Any, params: Any) -> None:
    out = ctx.trace_request_ctx
    if isinstance(out, Outcome):
        out.reused = True


def trace_config() -> aiohttp.TraceConfig:
    """The tracing hook that stamps the moment a request's body is written to the socket.

    The clock of TTFT and E2EL starts there, not when aiohttp starts preparing the request (vLLM's
    client starts it before ``session.post``): under a burst of simultaneous starts, aiohttp's own
    per-request work would otherwise count as server latency. The gap is kept as client overhead.
    """
    tc = aiohttp.TraceConfig()
    tc.on_request_chunk_sent.append(_on_chunk_sent)
    tc.on_connection_reuseconn.append(_on_reuse)
    return tc


class TimedResponseHandler(ResponseHandler):
    """aiohttp's client protocol, stamping each socket read with the body bytes it completed.

    uvloop hands a socket's bytes to ``data_received`` as soon as the loop polls them, before any
    task runs; a stamp here is the earliest moment the process can know a token arrived. The reading
    task may wake later (hundreds of other streams can be ready at once): its delay is not measured.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stamps: list[tuple[float, Any, int]] = []

    def data_received(self, data: bytes) -> None:
        """Stamp, then let aiohttp parse."""
        ts = time.perf_counter()
        super().data_received(data)
        payload = self._payload
        if payload is not None:
            self.stamps.append((ts, payload, payload.total_bytes))


def timed_connector(**kwargs: Any) -> aiohttp.TCPConnector:
    """A TCPConnector whose connections use :class:`TimedResponseHandler` (plain ones if impossible)."""
    connector = aiohttp.TCPConnector(**kwargs)
    factory = getattr(connector, "_factory", None)
    if isinstance(factory, functools.partial) and factory.func is ResponseHandler:
        timed = functools.partial(TimedResponseHandler, *factory.args, **factory.keywords)
        connector._factory = timed  # type: ignore[assignment]
    return connector


def _restamp(reads: list[tuple[float, bytes]], stamps: list[tuple[float, int]]) -> list[tuple[float, bytes]]:
    """Re-cut the body read by the task at the byte offsets the protocol stamped on arrival."""
    body = b"".join(data for _, data in reads)
    out: list[tuple[float, bytes]] = []
    pos = 0
    for ts, end in stamps:
        if end > pos:
            out.append((ts, body[pos:end]))
            pos = end
    if pos < len(body):  # bytes not stamped (arrived with the headers): the task's read time
        out.append((reads[-1][0], body[pos:]))
    return out


async def send(
    http: aiohttp.ClientSession,
    call: Call,
    timeout: float,
    fresh: aiohttp.ClientSession | None = None,
) -> Outcome:
    """POST ``call`` and collect every read of the streamed body with its arrival time.

    ``http`` must carry :func:`trace_config`; without it the clock starts at the call. A request that
    failed on a *reused* keep-alive connection before any byte of an answer came back is sent once
    more through ``fresh`` (a session that opens a connection per request), and marked ``resent``:
    the server had closed that connection as the request went out (llama-server closes connections
    after streamed responses while announcing keep-alive, and aiohttp cannot see a close in flight).
    Any failure on a new connection, or after the server answered, is counted as the server's.
    """
    out = Outcome(called=time.perf_counter())
    await _send_once(http, call, timeout, out)
    stale = out.reused and out.status is None and not out.reads
    if stale and fresh is not None and out.error_kind in ("connect", "early_close"):
        out.error_kind = out.error = None
        out.start = 0.0
        out.reused = False
        out.resent = True
        await _send_once(fresh, call, timeout, out)
    if not out.start:
        out.start = out.called
    return out


async def _send_once(http: aiohttp.ClientSession, call: Call, timeout: float, out: Outcome) -> None:
    reads = out.reads
    clock = time.perf_counter
    try:
        async with http.post(
            call.url,
            data=call.body,
            headers=call.headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
            trace_request_ctx=out,
        ) as resp:
            out.status = resp.status
            if resp.status != 200:
                out.body = await resp.content.read(_MAX_ERROR_BODY)
                out.error_kind = "http"
                return
            content = resp.content
            proto = resp.connection.protocol if resp.connection is not None else None
            try:
                if isinstance(proto, TimedResponseHandler):
                    # The protocol stamps every arrival; waking this task for each chunk too would only
                    # add event-loop work that delays the stamps of the other streams. Wait for the end.
                    try:
                        await content.wait_eof()
                    finally:
                        data = b"".join(content._buffer)  # what arrived, even if the stream broke
                        if data:
                            reads.append((clock(), data))
                else:
                    while True:
                        data = await content.readany()
                        if not data:
                            break
                        reads.append((clock(), data))
            finally:
                if isinstance(proto, TimedResponseHandler):
                    stamps = [(ts, n) for ts, p, n in proto.stamps if p is content]
                    proto.stamps.clear()
                    if stamps and reads:
                        out.reads = _restamp(reads, stamps)
    except asyncio.TimeoutError:
        out.error_kind, out.error = "timeout", f"no complete answer within {timeout:g} s"
    except aiohttp.ClientConnectorError as exc:
        out.error_kind, out.error = "connect", f"cannot connect: {exc.os_error.strerror or exc}"
    except aiohttp.ServerDisconnectedError:
        what = "before answering" if out.status is None else "mid-stream"
        out.error_kind, out.error = "early_close", f"server closed the connection {what}"
    except aiohttp.ClientPayloadError:
        out.error_kind, out.error = "early_close", "server closed the stream before it was complete"
    except aiohttp.ClientOSError as exc:
        kind: ErrorKind = "connect" if out.status is None and not reads else "early_close"
        out.error_kind, out.error = kind, f"connection error: {exc.strerror or exc}"
    except aiohttp.ClientError as exc:
        out.error_kind, out.error = "other", f"{type(exc).__name__}: {exc}"


def _text_of(choice: dict[str, Any]) -> str | None:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        for key in ("content", "reasoning_content", "reasoning"):
            value = delta.get(key)
            if isinstance(value, str) and value:
                return value
        calls = delta.get("tool_calls")
        if isinstance(calls, list) and calls:
            fn = calls[0].get("function") if isinstance(calls[0], dict) else None
            args = fn.get("arguments") if isinstance(fn, dict) else None
            return args if isinstance(args, str) and args else None
        return None
    text = choice.get("text")
    return text if isinstance(text, str) and text else None


def parse_stream(reads: list[tuple[float, bytes]]) -> Parsed:
    """Decode timestamped reads of an OpenAI SSE stream (chat or completions)."""
    out = Parsed()
    for _ in parse_steps(reads, out):
        pass
    return out


def parse_steps(reads: list[tuple[float, bytes]], out: Parsed, every: int = PARSE_SLICE) -> Iterator[None]:
    """Decode ``reads`` into ``out``, pausing (one ``yield``) after every ``every`` events.

    The load generator parses finished streams while others are still streaming: one whole stream
    at once (about 5 µs an event) would block the event loop long enough to delay the arrival
    stamps of the other streams, so its parser hands the loop back between slices.
    """
    decoder = Decoder()
    budget = every
    for ts, data in reads:
        for event in decoder.feed(data):
            _event(out, ts, event.data)
            budget -= 1
            if budget <= 0:
                yield
                budget = every
    for event in decoder.close():
        _event(out, reads[-1][0] if reads else 0.0, event.data)


def _event(out: Parsed, ts: float, data: str) -> None:
    if data == "[DONE]":
        out.done = True
        return
    try:
        obj = json.loads(data)
    except ValueError:
        out.broken = out.broken or f"malformed SSE event: {data[:80]!r}"
        return
    if not isinstance(obj, dict):
        out.broken = out.broken or "SSE event is not a JSON object"
        return
    if isinstance(obj.get("error"), dict):
        out.broken = out.broken or f"error event: {str(obj['error'].get('message', ''))[:200]}"
        return
    usage = obj.get("usage")
    if isinstance(usage, dict):
        if isinstance(usage.get("completion_tokens"), int):
            out.completion_tokens = usage["completion_tokens"]
        if isinstance(usage.get("prompt_tokens"), int):
            out.prompt_tokens = usage["prompt_tokens"]
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        text = _text_of(choice)
        if text is not None:
            out.token_times.append(ts)
            out.text.append(text)
        if choice.get("finish_reason"):
            out.finished = True


def http_error_message(status: int, body: bytes) -> str:
    """``HTTP 401: <the server's message>`` from an OpenAI-shaped (or any) error body."""
    message = ""
    try:
        obj = json.loads(body)
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or "")
        elif isinstance(err, str):
            message = err
        elif isinstance(obj, dict) and isinstance(obj.get("detail"), str):
            message = obj["detail"]
    except ValueError:
        message = body.decode("utf-8", "replace").strip()
    message = " ".join(message.split())[:200]
    return f"HTTP {status}: {message}" if message else f"HTTP {status}"


def to_record(
    call: Call, outcome: Outcome, index: int, t0: float, session: int, turn: int
) -> tuple[RequestRecord, str]:
    """The request record (times relative to the level start ``t0``) and the generated text."""
    steps = record_steps(call, outcome, index, t0, session, turn)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def record_steps(
    call: Call, outcome: Outcome, index: int, t0: float, session: int, turn: int
) -> Generator[None, None, tuple[RequestRecord, str]]:
    """:func:`to_record` in slices: each ``yield`` is a point where the caller may let others run."""
    rec = RequestRecord(
        index=index,
        id=call.request_id,
        session=session,
        turn=turn,
        start_s=outcome.start - t0,
        client_overhead_s=outcome.start - outcome.called,
        ok=False,
        status=outcome.status,
        prompt_tokens=call.prompt_tokens_estimate,
        resent=outcome.resent,
    )
    if outcome.error_kind == "http":
        rec.error_kind, rec.error = "http", http_error_message(outcome.status or 0, outcome.body)
        return rec, ""
    parsed = Parsed()
    yield from parse_steps(outcome.reads, parsed)
    text = "".join(parsed.text)
    if outcome.error_kind is not None:
        rec.error_kind, rec.error = outcome.error_kind, outcome.error
    elif parsed.broken:
        rec.error_kind, rec.error = "broken_stream", parsed.broken
    elif not parsed.token_times:
        rec.error_kind = "broken_stream"
        rec.error = "the stream carried no token (does the server stream?)"
    elif not (parsed.done or parsed.finished):
        rec.error_kind, rec.error = "early_close", "stream ended without a finish reason or [DONE]"
    else:
        times = parsed.token_times
        rec.ok = True
        rec.ttft_s = times[0] - outcome.start
        rec.e2el_s = times[-1] - outcome.start
        rec.itl_s = [b - a for a, b in itertools.pairwise(times)]
        if parsed.completion_tokens:
            rec.output_tokens, rec.output_tokens_source = parsed.completion_tokens, "usage"
        else:
            rec.output_tokens, rec.output_tokens_source = len(times), "chunks"
        if parsed.prompt_tokens is not None:
            rec.prompt_tokens, rec.prompt_tokens_source = parsed.prompt_tokens, "usage"
    return rec, text

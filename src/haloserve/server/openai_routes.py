"""``POST /v1/chat/completions`` and ``POST /v1/completions``: thin handlers over the engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from haloserve.engine.base import GenerationRequest, Output
from haloserve.engine.bridge import RequestStream, StreamCancelled
from haloserve.errors import EngineError, HaloError, InvalidRequestError
from haloserve.protocol import sse
from haloserve.protocol.openai import ChatCompletionRequest, CompletionRequest
from haloserve.server import shutdown
from haloserve.server.app import ServerState, check_api_key
from haloserve.server.convert import (
    chat_messages,
    chat_prompt,
    check_size,
    check_unsupported,
    completion_prompt,
    generation_request,
)
from haloserve.server.errors import sse_error
from haloserve.server.responses import ResponseShape
from haloserve.tools import serving
from haloserve.tools.request import plan_chat

log = logging.getLogger("haloserve.server")
router = APIRouter()

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _prepare(request: Request, body: Any) -> ServerState:
    state: ServerState = request.app.state.halo
    check_api_key(state, request)
    state.require_ready()
    state.check_model(body.model)
    check_unsupported(body)
    check_size(body, state.engine.info.n_ctx_slot)  # before any rendering or tokenising
    return state


def output_error(out: Output) -> HaloError:
    """The error of a failed output: the client's (400) when its content caused it, else ours (500)."""
    if out.error_param is not None:
        return InvalidRequestError(out.error or "invalid request", param=out.error_param)
    return EngineError(out.error or "engine error")


@router.post("/v1/chat/completions", summary="Chat completion (OpenAI)")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """Chat completion, streamed as SSE when ``stream`` is true."""
    state = _prepare(request, body)
    assert state.template is not None
    rid = request.scope["state"]["request_id"]
    settings = state.settings
    plan = plan_chat(
        body,
        chat_messages(body),
        state.template.source,
        tool_parser=settings.tool_parser,
        reasoning_format=settings.reasoning_format,
    )
    # Rendering and tokenising take milliseconds per hundred kilobytes: off the event loop, so that
    # one large request does not stall every other stream.
    prompt, text = await asyncio.to_thread(
        chat_prompt, body, state.engine, state.template, plan.messages, plan.tools
    )
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    greq = generation_request(rid, body, prompt, max_tokens, state.engine, settings)
    n_logprobs = serving.chat_logprobs_count(body)
    await serving.attach(
        greq,
        state.engine,
        grammar=plan.grammar,
        param=plan.grammar_param,
        logprobs=n_logprobs,
        preserved=plan.preserved,
    )
    reply = None
    if plan.tool_format is not None or plan.reasoning or n_logprobs is not None:
        opened = plan.reasoning == "think" and text.rstrip().endswith("<think>")
        reply = serving.Reply(plan, chat=True, logprobs=n_logprobs is not None, opened_think=opened)
    shape = ResponseShape(id=f"chatcmpl-{rid}", model=state.model_id, chat=True)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await _respond(request, state, greq, shape, "chat", bool(body.stream), include_usage, "", reply)


@router.post("/v1/completions", summary="Text completion (OpenAI)")
async def completions(body: CompletionRequest, request: Request) -> Response:
    """Text completion, streamed as SSE when ``stream`` is true."""
    state = _prepare(request, body)
    rid = request.scope["state"]["request_id"]
    prompt, prompt_text = await asyncio.to_thread(completion_prompt, body, state.engine)
    greq = generation_request(rid, body, prompt, body.max_tokens, state.engine, state.settings)
    n_logprobs = serving.completion_logprobs_count(body)
    await serving.attach(greq, state.engine, grammar=None, param="", logprobs=n_logprobs, preserved=[])
    reply = serving.Reply(None, chat=False, logprobs=True) if n_logprobs is not None else None
    shape = ResponseShape(id=f"cmpl-{rid}", model=state.model_id, chat=False)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    echo = prompt_text if body.echo else ""
    return await _respond(
        request, state, greq, shape, "completions", bool(body.stream), include_usage, echo, reply
    )


class _Timing:
    """Arrival, first-token and per-token times of one request, fed to the metrics."""

    __slots__ = ("done", "first", "last", "last_tokens", "start", "state")

    def __init__(self, state: ServerState, start: float) -> None:
        self.state = state
        self.start = start
        self.first = 0.0
        self.last = start
        self.last_tokens = 0
        self.done = False

    def saw(self, out: Output) -> None:
        now = time.monotonic()
        m = self.state.metrics
        if not self.first:
            self.first = now
            m.ttft.observe(now - self.start)
        elif out.completion_tokens > self.last_tokens:
            m.itl.observe((now - self.last) / (out.completion_tokens - self.last_tokens))
        self.last, self.last_tokens = now, out.completion_tokens

    def finished(self, endpoint: str, final: Output, status: int) -> None:
        self.done = True
        m = self.state.metrics
        m.request_done(endpoint, status)
        if status == 200:
            m.prompt_tokens.inc(final.prompt_tokens)
            m.generation_tokens.inc(final.completion_tokens)
            m.e2e.observe(time.monotonic() - self.start)


async def _watch_disconnect(request: Request, stream: RequestStream) -> None:
    """Cancel ``stream`` when the client goes away before the response starts."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            stream.cancel()
            return


async def _respond(
    request: Request,
    state: ServerState,
    greq: GenerationRequest,
    shape: ResponseShape,
    endpoint: str,
    streaming: bool,
    include_usage: bool,
    echo: str,
    reply: serving.Reply | None = None,
) -> Response:
    timing = _Timing(state, greq.arrival_time)
    stream = state.engine.generate(greq)  # raises 429 / 503 before anything is sent
    state.streams.add(stream)  # a shutdown ends it: 503 while queued, an error event at the deadline
    if state.draining:  # shutdown began while the prompt was prepared
        shutdown.on_new_stream(state, stream)
    watcher = asyncio.create_task(_watch_disconnect(request, stream))
    try:
        first = await anext(stream)
        timing.saw(first)
        if first.finish_reason == "error":
            exc = output_error(first)
            timing.finished(endpoint, first, exc.status)
            raise exc
        if not streaming:
            parts, out = [echo, first.text], first
            if reply is not None:
                reply.collect(first)
            while out.finish_reason is None:
                out = await anext(stream)
                timing.saw(out)
                parts.append(out.text)
                if reply is not None:
                    reply.collect(out)
            if out.finish_reason == "error":
                exc = output_error(out)
                timing.finished(endpoint, out, exc.status)
                raise exc
            timing.finished(endpoint, out, 200)
            _log_done(greq, out, timing)
            text = "".join(parts)
            body = shape.full(text, out)
            if reply is not None:
                body = reply.finish(body, text, out, len(echo))
            return JSONResponse(body)
    except StreamCancelled:
        pass  # the client left: answered with 499 below
    except HaloError as exc:  # a failed output, or a shutdown ending the request (503)
        stream.cancel()
        if not timing.done:
            timing.done = True
            state.metrics.request_done(endpoint, exc.status)
        raise
    except BaseException:
        stream.cancel()
        if not timing.done:
            state.metrics.request_done(endpoint, 499)  # the client went away (or the server is stopping)
        raise
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if stream.cancelled:  # the client left while we waited for the first token (or for all of them)
        if not timing.done:
            state.metrics.request_done(endpoint, 499)
        return Response(status_code=499)
    return StreamingResponse(
        _sse(stream, first, shape, endpoint, include_usage, echo, timing, greq, reply),
        media_type="text/event-stream",
        headers=_SSE_HEADERS,
    )


async def _sse(
    stream: RequestStream,
    first: Output,
    shape: ResponseShape,
    endpoint: str,
    include_usage: bool,
    echo: str,
    timing: _Timing,
    greq: GenerationRequest,
    reply: serving.Reply | None = None,
) -> AsyncIterator[bytes]:
    writer = shape.chunk_writer(include_usage)
    out = first
    try:
        if shape.chat:
            yield writer.role()
        elif echo:
            yield writer.text(echo)
        while True:
            if out.finish_reason == "error":
                exc = output_error(out)
                timing.finished(endpoint, out, exc.status)
                yield sse_error(exc)
                return
            if reply is not None:
                for event in reply.chunks(writer, out):
                    yield event
                if out.finish_reason is not None:
                    break
            elif out.finish_reason is not None:
                yield writer.text(out.text, out.finish_reason)
                break
            elif out.text:
                yield writer.text(out.text)
            out = await anext(stream)
            timing.saw(out)
        if include_usage:
            yield writer.usage(out)
        yield sse.DONE
        timing.finished(endpoint, out, 200)
        _log_done(greq, out, timing)
    except HaloError as exc:  # a shutdown's deadline (503), or a failure while building a chunk
        if not timing.done:
            timing.done = True
            timing.state.metrics.request_done(endpoint, exc.status)
        yield sse_error(exc)
    except StreamCancelled:
        pass  # the client left
    finally:
        stream.cancel()
        if not timing.done:
            timing.state.metrics.request_done(endpoint, 499)


def _log_done(greq: GenerationRequest, final: Output, timing: _Timing) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info(
            "%s done: prompt=%d (cached %d) completion=%d finish=%s ttft=%.0fms total=%.0fms",
            greq.request_id,
            final.prompt_tokens,
            final.cached_tokens,
            final.completion_tokens,
            final.finish_reason,
            (timing.first - timing.start) * 1000,
            (time.monotonic() - timing.start) * 1000,
        )

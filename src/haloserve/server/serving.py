"""What every generating endpoint shares (as vLLM's ``serving_engine.py``): the checks before any work,
the engine request run to a JSON body or an SSE stream, its metrics counted once, and engine failures
raised as errors in one place.

A subclass (:class:`~haloserve.server.completion.CompletionServing`,
:class:`~haloserve.server.chat.serving.ChatServing`) builds a :class:`Generation` once: the complete
engine request, never patched afterwards, plus how to shape the reply. Errors reach the client in one
of two forms: before the response starts, the HTTP error body (``server/errors.py``); after a stream
started, one SSE error event, then the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from haloserve.engine.base import GenerationRequest, Output
from haloserve.engine.bridge import RequestStream, StreamCancelled
from haloserve.errors import EngineError, HaloError, InvalidRequestError
from haloserve.protocol import sse
from haloserve.protocol.openai import ChatCompletionRequest, CompletionRequest
from haloserve.server import shutdown
from haloserve.server.convert import check_size, check_unsupported
from haloserve.server.errors import sse_error
from haloserve.server.metrics import RequestRecord
from haloserve.server.responses import ChunkWriter, ResponseShape
from haloserve.server.state import ServerState, check_api_key

log = logging.getLogger("haloserve.server")

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Reply(Protocol):
    """Shapes a reply beyond plain text: tool calls, reasoning, logprobs."""

    def chunks(self, writer: ChunkWriter, out: Output) -> list[bytes]:
        """SSE events for one output (the finishing one included)."""
        ...

    def collect(self, out: Output) -> None:
        """Non-streaming: remember what an output carries besides its text."""
        ...

    def finish(self, body: dict[str, Any], text: str, final: Output, echo_len: int) -> dict[str, Any]:
        """The whole response body, from the plain one."""
        ...


@dataclass(slots=True)
class Generation:
    """One request, ready to run: the engine request and how its reply is shaped."""

    request: GenerationRequest
    shape: ResponseShape
    streaming: bool
    include_usage: bool
    echo: str = ""
    reply: Reply | None = None


def output_error(out: Output) -> HaloError:
    """The error of a failed output: the client's (400) when its content caused it, else ours (500)."""
    if out.error_param is not None:
        return InvalidRequestError(out.error or "invalid request", param=out.error_param)
    return EngineError(out.error or "engine error")


async def next_output(stream: RequestStream, record: RequestRecord) -> Output:
    """The stream's next output, timed; an engine failure is raised here, the one place it is mapped."""
    out = await anext(stream)
    record.saw(out)
    if out.finish_reason == "error":
        raise output_error(out)
    return out


class OpenAIServing:
    """One generating endpoint; subclasses say how a request body becomes a :class:`Generation`."""

    endpoint: ClassVar[str]  # the ``endpoint`` label of the request metrics

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def check(self, request: Request, body: ChatCompletionRequest | CompletionRequest) -> None:
        """Everything refused before any work: key, readiness, model, unsupported fields, size."""
        state = self.state
        check_api_key(state, request)
        state.require_ready()
        state.check_model(body.model)
        check_unsupported(body)
        check_size(body, state.engine.info.n_ctx_slot)  # before any rendering or tokenising

    def require(self, feature: str, param: str) -> None:
        """400 naming ``param`` unless the engine can do ``feature``."""
        if feature not in self.state.engine.info.features:
            raise InvalidRequestError(f"{param} is not supported by this engine", param=param)

    async def respond(self, request: Request, gen: Generation) -> Response:
        """Run ``gen`` on the engine: the JSON body, or an SSE stream once the first output is there."""
        state = self.state
        greq = gen.request
        stream = state.engine.generate(greq)  # raises 429 / 503 before anything is sent
        state.streams.add(stream)  # a shutdown ends it: 503 while queued, an error event at the deadline
        if state.draining:  # shutdown began while the prompt was prepared
            shutdown.on_new_stream(state, stream)
        record = state.metrics.record(self.endpoint, greq.arrival_time, state.model_label)
        with record:
            watcher = asyncio.create_task(_watch_disconnect(request, stream))
            try:
                first = await next_output(stream, record)
                if not gen.streaming:
                    return await self._collect(gen, stream, first, record)
            except StreamCancelled:
                return Response(status_code=499)  # the client left: counted as 499 by the record
            except BaseException:
                stream.cancel()
                raise
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            if stream.cancelled:  # the client left while we waited for the first token
                return Response(status_code=499)
            return StreamingResponse(
                self._sse(gen, stream, first, record.hand_over()),
                media_type="text/event-stream",
                headers=_SSE_HEADERS,
            )

    async def _collect(
        self, gen: Generation, stream: RequestStream, first: Output, record: RequestRecord
    ) -> Response:
        parts, out, reply = [gen.echo, first.text], first, gen.reply
        if reply is not None:
            reply.collect(first)
        while out.finish_reason is None:
            out = await next_output(stream, record)
            parts.append(out.text)
            if reply is not None:
                reply.collect(out)
        record.ok(out)
        _log_done(gen.request, out, record)
        text = "".join(parts)
        body = gen.shape.full(text, out)
        if reply is not None:
            body = reply.finish(body, text, out, len(gen.echo))
        return JSONResponse(body)

    async def _sse(
        self, gen: Generation, stream: RequestStream, first: Output, record: RequestRecord
    ) -> AsyncIterator[bytes]:
        writer = gen.shape.chunk_writer(gen.include_usage)
        out, reply = first, gen.reply
        with record:
            try:
                if gen.shape.chat:
                    yield writer.role()
                elif gen.echo:
                    yield writer.text(gen.echo)
                while True:
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
                    out = await next_output(stream, record)
                if gen.include_usage:
                    yield writer.usage(out)
                yield sse.DONE
                record.ok(out)
                _log_done(gen.request, out, record)
            except HaloError as exc:  # an engine failure, a shutdown's deadline (503), a bad chunk
                record.failed(exc.status)
                yield sse_error(exc)
            except StreamCancelled:
                pass  # the client left: counted as 499 by the record
            finally:
                stream.cancel()


async def _watch_disconnect(request: Request, stream: RequestStream) -> None:
    """Cancel ``stream`` when the client goes away before the response starts."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            stream.cancel()
            return


def _log_done(greq: GenerationRequest, final: Output, record: RequestRecord) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info(
            "%s done: prompt=%d (cached %d) completion=%d finish=%s ttft=%.0fms total=%.0fms",
            greq.request_id,
            final.prompt_tokens,
            final.cached_tokens,
            final.completion_tokens,
            final.finish_reason,
            (record.first - record.start) * 1000,
            (time.monotonic() - record.start) * 1000,
        )

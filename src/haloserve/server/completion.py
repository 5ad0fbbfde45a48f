"""``POST /v1/completions``: a text prompt (or token ids) to one engine request."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from haloserve.engine.base import Output, TokenLogprob
from haloserve.errors import InvalidRequestError
from haloserve.protocol.openai import CompletionRequest
from haloserve.server.convert import completion_prompt, generation_request, request_limits
from haloserve.server.logprobs import completion_logprobs
from haloserve.server.responses import ChunkWriter, ResponseShape
from haloserve.server.serving import Generation, OpenAIServing


def completion_logprobs_count(body: CompletionRequest) -> int | None:
    """None without ``logprobs``; else the number of alternatives (logprobs of the prompt are not given)."""
    if body.logprobs is None:
        return None
    if body.echo:
        raise InvalidRequestError(
            "logprobs together with echo (prompt logprobs) is not supported", param="echo"
        )
    return body.logprobs


class LogprobsReply:
    """The completions ``logprobs`` of a reply, streamed per chunk or whole at the end."""

    def __init__(self) -> None:
        self._offset = 0
        self._lps: list[TokenLogprob] = []

    def chunks(self, writer: ChunkWriter, out: Output) -> list[bytes]:
        """One event for an output with text or logprobs (and for the finishing one)."""
        lp = completion_logprobs(out.logprobs, self._offset) if out.logprobs else None
        self._offset += len(out.text)
        if not out.text and lp is None and out.finish_reason is None:
            return []
        return [writer.text(out.text, out.finish_reason, lp)]

    def collect(self, out: Output) -> None:
        """Non-streaming: remember an output's logprobs."""
        if out.logprobs:
            self._lps.extend(out.logprobs)

    def finish(self, body: dict[str, Any], text: str, final: Output, echo_len: int) -> dict[str, Any]:
        """The body with the choice's ``logprobs`` (offsets count from the end of an echoed prompt)."""
        body["choices"][0]["logprobs"] = completion_logprobs(self._lps, echo_len)
        return body


class CompletionServing(OpenAIServing):
    """Text completion: the prompt tokenised off the event loop, the engine request built once."""

    endpoint = "completions"

    async def build(self, body: CompletionRequest, request_id: str) -> Generation:
        """The :class:`Generation` of a checked request (see :meth:`OpenAIServing.check`)."""
        engine = self.state.engine
        prompt, prompt_text = await asyncio.to_thread(completion_prompt, body, engine)
        limits = request_limits(body, len(prompt), body.max_tokens, engine, self.state.settings)
        arrival = time.monotonic()
        n_logprobs = completion_logprobs_count(body)
        if n_logprobs is not None:
            self.require("logprobs", "logprobs")
        greq = generation_request(request_id, body, prompt, limits, arrival_time=arrival, logprobs=n_logprobs)
        return Generation(
            request=greq,
            shape=ResponseShape(id=f"cmpl-{request_id}", model=self.state.model_id, chat=False),
            streaming=bool(body.stream),
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
            echo=prompt_text if body.echo else "",
            reply=LogprobsReply() if n_logprobs is not None else None,
        )

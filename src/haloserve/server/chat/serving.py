"""``POST /v1/chat/completions`` (as vLLM's ``serving_chat.py``): messages, tools, ``response_format``
and reasoning planned, the template rendered and tokenised, the grammar compiled, and the engine request
built once from all of it."""

from __future__ import annotations

import asyncio
import time

from haloserve.engine.base import Constraint
from haloserve.engine.grammar import build_constraint, preserved_tokens
from haloserve.errors import InvalidRequestError
from haloserve.protocol.openai import ChatCompletionRequest
from haloserve.server.chat.reply import ChatReply
from haloserve.server.chat.request import ChatPlan, plan_chat
from haloserve.server.convert import chat_messages, chat_prompt, generation_request, request_limits
from haloserve.server.responses import ResponseShape
from haloserve.server.serving import Generation, OpenAIServing


def chat_logprobs_count(body: ChatCompletionRequest) -> int | None:
    """None without ``logprobs``; else ``top_logprobs`` (0 if unset). ``top_logprobs`` alone is a 400."""
    if body.logprobs:
        return body.top_logprobs or 0
    if body.top_logprobs:
        raise InvalidRequestError("top_logprobs needs logprobs: true", param="top_logprobs")
    return None


class ChatServing(OpenAIServing):
    """Chat completion, with tool calling, structured output, reasoning and logprobs."""

    endpoint = "chat"

    async def build(self, body: ChatCompletionRequest, request_id: str) -> Generation:
        """The :class:`Generation` of a checked request (see :meth:`OpenAIServing.check`)."""
        state = self.state
        assert state.template is not None  # check() refused the request while loading
        settings, engine = state.settings, state.engine
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
            chat_prompt, body, engine, state.template, plan.messages, plan.tools
        )
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        limits = request_limits(body, len(prompt), max_tokens, engine, settings)
        arrival = time.monotonic()
        n_logprobs = chat_logprobs_count(body)
        if n_logprobs is not None:
            self.require("logprobs", "logprobs")
        constraint = await self._constraint(plan)
        greq = generation_request(
            request_id,
            body,
            prompt,
            limits,
            arrival_time=arrival,
            constraint=constraint,
            logprobs=n_logprobs,
            preserved_tokens=self._preserved(plan),
        )
        reply = None
        if plan.tool_format is not None or plan.reasoning or n_logprobs is not None:
            opened = plan.reasoning == "think" and text.rstrip().endswith("<think>")
            reply = ChatReply(plan, logprobs=n_logprobs is not None, opened_think=opened)
        return Generation(
            request=greq,
            shape=ResponseShape(id=f"chatcmpl-{request_id}", model=state.model_id, chat=True),
            streaming=bool(body.stream),
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
            reply=reply,
        )

    def _preserved(self, plan: ChatPlan) -> frozenset[int]:
        """The ids of the markers the reply parsers look for, so that they are rendered as text."""
        model = self.state.engine.tokenizer
        if not plan.preserved or not hasattr(model, "vocab"):  # the fake engine has no special tokens
            return frozenset()
        return preserved_tokens(model, plan.preserved)

    async def _constraint(self, plan: ChatPlan) -> Constraint | None:
        """The compiled grammar of ``tools`` or ``response_format`` (compiled off the event loop)."""
        if plan.grammar is None:
            return None
        self.require("grammar", plan.grammar_param)
        model = self.state.engine.tokenizer
        return await asyncio.to_thread(build_constraint, plan.grammar, plan.grammar_param, model)

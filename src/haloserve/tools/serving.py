"""Glue between the OpenAI routes and this package: request planning before generation, and the
reply's message, deltas and logprobs after it."""

from __future__ import annotations

import asyncio
from typing import Any

from haloserve.engine.base import Engine, GenerationRequest, Output, TokenLogprob
from haloserve.errors import InvalidRequestError
from haloserve.protocol.openai import ChatCompletionRequest, CompletionRequest
from haloserve.tools.assemble import ChatAssembler, completion_logprobs, expand
from haloserve.tools.request import ChatPlan
from haloserve.tools.stream import HarmonySplitter, ReasoningSplitter, ToolCallStream


def _require(engine: Engine, feature: str, param: str) -> None:
    if feature not in engine.info.features:
        raise InvalidRequestError(f"{param} is not supported by this engine", param=param)


async def attach(
    greq: GenerationRequest,
    engine: Engine,
    *,
    grammar: str | None,
    param: str,
    logprobs: int | None,
    preserved: list[str],
) -> None:
    """Add the grammar constraint, logprobs and preserved tokens to an engine request."""
    if logprobs is not None:
        _require(engine, "logprobs", "logprobs")
        greq.logprobs = logprobs
    if grammar is None and not preserved:
        return
    model = engine.tokenizer
    if preserved and hasattr(model, "vocab"):
        from haloserve.tools.constraint import single_token

        ids = (single_token(model, text) for text in preserved)
        greq.preserved_tokens = frozenset(t for t in ids if t is not None)
    if grammar is not None:
        _require(engine, "grammar", param)
        from haloserve.tools.constraint import build_constraint

        greq.constraint = await asyncio.to_thread(build_constraint, grammar, param, model)


def chat_logprobs_count(body: ChatCompletionRequest) -> int | None:
    """None without ``logprobs``; else ``top_logprobs`` (0 if unset). ``top_logprobs`` alone is a 400."""
    if body.logprobs:
        return body.top_logprobs or 0
    if body.top_logprobs:
        raise InvalidRequestError("top_logprobs needs logprobs: true", param="top_logprobs")
    return None


def completion_logprobs_count(body: CompletionRequest) -> int | None:
    """None without ``logprobs``; else the number of alternatives (logprobs of the prompt are not given)."""
    if body.logprobs is None:
        return None
    if body.echo:
        raise InvalidRequestError(
            "logprobs together with echo (prompt logprobs) is not supported", param="echo"
        )
    return body.logprobs


def _splitter(plan: ChatPlan | None, opened: bool) -> ReasoningSplitter | HarmonySplitter | None:
    if plan is None or not plan.reasoning:
        return None
    return HarmonySplitter() if plan.reasoning == "harmony" else ReasoningSplitter(opened)


class Reply:
    """Turns engine outputs into OpenAI chunks or the final body when tools, reasoning or logprobs are on."""

    def __init__(
        self, plan: ChatPlan | None, *, chat: bool, logprobs: bool, opened_think: bool = False
    ) -> None:
        self.chat = chat
        self.logprobs = logprobs
        self.asm: ChatAssembler | None = None
        if chat:
            self.asm = ChatAssembler(
                reasoning=_splitter(plan, opened_think),
                tools=ToolCallStream(plan.tool_format) if plan is not None and plan.tool_format else None,
                named_choice=bool(plan and plan.named),
            )
        self._offset = 0
        self._lps: list[TokenLogprob] = []

    def chunks(self, writer: Any, out: Output) -> list[bytes]:
        """SSE events for one output (the finishing one included)."""
        final = out.finish_reason is not None
        if self.asm is None:  # completions with logprobs
            lp = completion_logprobs(out.logprobs or [], self._offset) if out.logprobs else None
            self._offset += len(out.text)
            if not out.text and lp is None and not final:
                return []
            return [writer.text(out.text, out.finish_reason, lp)]
        events: list[bytes] = []
        for delta in self.asm.feed(out, final):
            events.extend(writer.choice(d, None, lp) for d, lp in expand(delta))
        if final:
            events.append(writer.choice({}, self.asm.finish_reason(out.finish_reason), None))
        return events

    def collect(self, out: Output) -> None:
        """Non-streaming: remember an output's logprobs."""
        if out.logprobs:
            self._lps.extend(out.logprobs)

    def finish(self, body: dict[str, Any], text: str, final: Output, echo_len: int = 0) -> dict[str, Any]:
        """Patch the plain response body with the message parts and logprobs."""
        choice = body["choices"][0]
        if self.asm is None:
            if self.logprobs:
                choice["logprobs"] = completion_logprobs(self._lps, echo_len)
            return body
        self.asm.feed(Output(text=text, logprobs=self._lps), final=True)
        choice["message"] = self.asm.message()
        choice["finish_reason"] = self.asm.finish_reason(final.finish_reason)
        if self.logprobs:
            from haloserve.tools.assemble import chat_logprobs

            choice["logprobs"] = {"content": chat_logprobs(self.asm.all_logprobs), "refusal": None}
        return body

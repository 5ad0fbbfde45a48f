"""A chat reply beyond plain text: reasoning, tool calls and logprobs, as stream chunks or the final
message (the :class:`~haloserve.server.serving.Reply` of the chat endpoint)."""

from __future__ import annotations

from typing import Any

from haloserve.engine.base import Output, TokenLogprob
from haloserve.server.chat.assemble import ChatAssembler, expand
from haloserve.server.chat.request import ChatPlan
from haloserve.server.chat.stream import HarmonySplitter, ReasoningSplitter, ToolCallStream
from haloserve.server.logprobs import chat_logprobs
from haloserve.server.responses import ChunkWriter


def _splitter(plan: ChatPlan, opened: bool) -> ReasoningSplitter | HarmonySplitter | None:
    if not plan.reasoning:
        return None
    return HarmonySplitter() if plan.reasoning == "harmony" else ReasoningSplitter(opened)


class ChatReply:
    """Turns engine outputs into OpenAI chunks or the final body when tools, reasoning or logprobs are on."""

    def __init__(self, plan: ChatPlan, *, logprobs: bool, opened_think: bool = False) -> None:
        self.logprobs = logprobs
        self.asm = ChatAssembler(
            reasoning=_splitter(plan, opened_think),
            tools=ToolCallStream(plan.tool_format) if plan.tool_format else None,
            named_choice=plan.named,
        )
        self._lps: list[TokenLogprob] = []

    def chunks(self, writer: ChunkWriter, out: Output) -> list[bytes]:
        """SSE events for one output (the finishing one included)."""
        final = out.finish_reason is not None
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
        """The plain response body with the message parts and logprobs."""
        choice = body["choices"][0]
        self.asm.feed(Output(text=text, logprobs=self._lps), final=True)
        choice["message"] = self.asm.message()
        choice["finish_reason"] = self.asm.finish_reason(final.finish_reason)
        if self.logprobs:
            choice["logprobs"] = {"content": chat_logprobs(self.asm.all_logprobs), "refusal": None}
        return body

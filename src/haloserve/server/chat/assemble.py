"""One chat reply assembled from engine outputs: content, ``reasoning_content``, ``tool_calls`` and
``logprobs``, as OpenAI stream deltas or as the final message.

Streamed tool calls follow OpenAI's shape: a first delta with ``index``, ``id``, ``type`` and
``function.name`` (``arguments`` empty), then ``function.arguments`` fragments with the same index.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

from haloserve.engine.base import Output, TokenLogprob
from haloserve.server.chat.stream import Event, HarmonySplitter, ReasoningSplitter, ToolCallStream
from haloserve.server.logprobs import chat_logprobs

_ALNUM = string.ascii_letters + string.digits


def call_id() -> str:
    """An OpenAI-style tool call id (``call_`` and 24 random letters and digits)."""
    return "call_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


class ChatAssembler:
    """Splits one request's output into message parts and stream deltas."""

    def __init__(
        self,
        *,
        reasoning: ReasoningSplitter | HarmonySplitter | None = None,
        tools: ToolCallStream | None = None,
        named_choice: bool = False,
    ) -> None:
        self._reasoning = reasoning
        self._tools = tools
        self._named = named_choice
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.all_logprobs: list[TokenLogprob] = []
        self._pending_lp: list[TokenLogprob] = []

    def _split(self, text: str, final: bool) -> list[Event]:
        events = self._reasoning.feed(text, final) if self._reasoning else [Event("content", text)]
        if self._tools is None:
            return [e for e in events if e.text]
        out: list[Event] = []
        for e in events:
            if e.kind == "content":
                out.extend(self._tools.feed(e.text))
            else:
                out.append(e)
        if final:
            out.extend(self._tools.finish())
        return out

    def feed(self, out: Output, final: bool = False) -> list[dict[str, Any]]:
        """Stream chunks' choice parts (``delta`` and ``logprobs``) for one engine output."""
        if out.logprobs:
            self.all_logprobs.extend(out.logprobs)
            self._pending_lp.extend(out.logprobs)
        deltas = [self._delta(e) for e in self._split(out.text, final)]
        deltas = [d for d in deltas if d]
        if self._pending_lp and (deltas or final):
            if not deltas:
                deltas.append({})
            lp = {"content": chat_logprobs(self._pending_lp), "refusal": None}
            self._pending_lp = []
            deltas[0] = {**deltas[0], "__logprobs__": lp}
        return deltas

    def _delta(self, e: Event) -> dict[str, Any]:
        if e.kind == "reasoning":
            self.reasoning.append(e.text)
            return {"reasoning_content": e.text}
        if e.kind == "content":
            self.content.append(e.text)
            return {"content": e.text}
        if e.kind == "args":
            index = len(self.calls) - 1
            self.calls[index]["function"]["arguments"] += e.text
            return {"tool_calls": [{"index": index, "function": {"arguments": e.text}}]}
        assert e.call is not None
        index = len(self.calls)
        cid = call_id()
        self.calls.append(
            {"id": cid, "type": "function", "function": {"name": e.call.name, "arguments": e.call.arguments}}
        )
        head = {
            "index": index,
            "id": cid,
            "type": "function",
            "function": {"name": e.call.name, "arguments": ""},
        }
        if e.kind == "call_start":
            return {"tool_calls": [head]}
        return {"tool_calls": [head], "__args__": (index, e.call.arguments)}

    def finish_reason(self, engine_reason: str | None) -> str | None:
        """``tool_calls`` when calls were made (``stop`` for a forced named function, as OpenAI does)."""
        if self.calls and engine_reason == "stop":
            return "stop" if self._named else "tool_calls"
        return engine_reason

    def message(self) -> dict[str, Any]:
        """The non-streaming ``message`` (call :meth:`feed` with the whole output first)."""
        content = "".join(self.content)
        msg: dict[str, Any] = {
            "role": "assistant",
            "content": content if (content or not self.calls) else None,
            "refusal": None,
        }
        if self.reasoning:
            msg["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            msg["tool_calls"] = self.calls
        return msg


def expand(delta: dict[str, Any]) -> list[tuple[dict[str, Any], Any]]:
    """A delta from :meth:`ChatAssembler.feed` as ``(delta, logprobs)`` chunk parts, arguments split off."""
    lp = delta.pop("__logprobs__", None)
    args = delta.pop("__args__", None)
    parts: list[tuple[dict[str, Any], Any]] = [(delta, lp)]
    if args is not None:
        index, arguments = args
        parts.append(({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}, None))
    return parts

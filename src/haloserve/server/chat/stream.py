"""Incremental splitting of a chat reply into reasoning, content and tool calls.

Text arrives in arbitrary pieces. :class:`ReasoningSplitter` separates a leading ``<think>...</think>``
block; :class:`ToolCallStream` releases content up to a tool-call start marker (holding back text that
could still become the marker) and then emits each call once it is complete. Both give the same result
whatever the chunk boundaries are, which the tests check with hypothesis.
"""

from __future__ import annotations

from dataclasses import dataclass

from haloserve.server.chat.formats import Call, ToolFormat, json_value_prefix, partial_suffix

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True, slots=True)
class Event:
    """A piece of the reply: ``content``, ``reasoning``, a whole ``call``, or a streamed call's
    ``call_start`` (name) and ``args`` (argument text fragment)."""

    kind: str
    text: str = ""
    call: Call | None = None


class ReasoningSplitter:
    """Separates the leading ``<think>`` block (or, when the prompt opened it, the text to ``</think>``)."""

    __slots__ = ("_buf", "_state")

    def __init__(self, opened: bool = False) -> None:
        self._state = "reasoning" if opened else "start"  # start -> reasoning -> gap -> content
        self._buf = ""

    def feed(self, text: str, final: bool = False) -> list[Event]:
        """Split ``text``; with ``final`` nothing is held back."""
        self._buf += text
        out: list[Event] = []
        if self._state == "start":
            stripped = self._buf.lstrip()
            if stripped.startswith(THINK_OPEN):
                self._buf = stripped[len(THINK_OPEN) :]
                self._state = "reasoning"
            elif not final and THINK_OPEN.startswith(stripped):
                return out  # still could be the opening tag
            else:
                self._state = "content"
        if self._state == "reasoning":
            idx = self._buf.find(THINK_CLOSE)
            if idx >= 0:
                if idx:
                    out.append(Event("reasoning", self._buf[:idx]))
                self._buf = self._buf[idx + len(THINK_CLOSE) :]
                self._state = "gap"
            else:
                keep = 0 if final else partial_suffix(self._buf, THINK_CLOSE)
                if len(self._buf) > keep:
                    out.append(Event("reasoning", self._buf[: len(self._buf) - keep]))
                self._buf = self._buf[len(self._buf) - keep :]
                return out
        if self._state == "gap":  # whitespace between </think> and the answer is dropped
            self._buf = self._buf.lstrip()
            if self._buf:
                self._state = "content"
        if self._state == "content" and self._buf:
            out.append(Event("content", self._buf))
            self._buf = ""
        return out


class ToolCallStream:
    """Content until the format's start marker, then calls: ``call_start`` and ``args`` fragments while
    a call is written (formats that can tell), or one ``call`` event once a call is complete."""

    __slots__ = ("_buf", "_emitted", "_fmt", "_region", "_sent", "_streaming")

    def __init__(self, fmt: ToolFormat) -> None:
        self._fmt = fmt
        self._buf = ""
        self._region: str | None = None
        self._emitted = 0
        self._streaming: int | None = None  # index of the call whose arguments are being streamed
        self._sent = ""  # its argument text sent so far

    def feed(self, text: str) -> list[Event]:
        """Events made available by ``text``."""
        if self._region is not None:
            self._region += text
            return self._calls(final=False)
        self._buf += text
        idx = self._fmt.start(self._buf)
        if idx >= 0:
            before, self._region, self._buf = self._buf[:idx], self._buf[idx:], ""
            out = [Event("content", before)] if before else []
            return out + self._calls(final=False)
        keep = self._fmt.hold(self._buf)
        ready = self._buf[: len(self._buf) - keep]
        self._buf = self._buf[len(self._buf) - keep :]
        return [Event("content", ready)] if ready else []

    def finish(self) -> list[Event]:
        """The rest at end of output; a region that held no call goes out as content after all."""
        if self._region is None:
            rest, self._buf = self._buf, ""
            return [Event("content", rest)] if rest else []
        out = self._calls(final=True)
        if self._emitted == 0:
            out.append(Event("content", self._region))
        return out

    @property
    def n_calls(self) -> int:
        """Calls emitted so far."""
        return self._emitted

    def _calls(self, final: bool) -> list[Event]:
        assert self._region is not None
        calls = self._fmt.parse(self._region, final)
        out: list[Event] = []
        for k in range(self._emitted, len(calls)):
            if k == self._streaming:  # finish the streamed call with what it still lacks
                rest = calls[k].arguments
                if rest.startswith(self._sent):
                    rest = rest[len(self._sent) :]
                if rest:
                    out.append(Event("args", rest))
                self._streaming, self._sent = None, ""
            else:
                out.append(Event("call", call=calls[k]))
        self._emitted = max(self._emitted, len(calls))
        opened = None if final else self._fmt.open_call(self._region)
        value = json_value_prefix(opened[1]) if opened else None
        if opened and value is not None and not value[1]:
            if self._streaming is None:
                self._streaming, self._sent = self._emitted, ""
                out.append(Event("call_start", call=Call(opened[0], "")))
            if len(value[0]) > len(self._sent) and value[0].startswith(self._sent):
                out.append(Event("args", value[0][len(self._sent) :]))
                self._sent = value[0]
        return out


_HARMONY_ENDS = ("<|end|>", "<|call|>", "<|return|>")


class HarmonySplitter:
    """gpt-oss's harmony messages: ``analysis`` is reasoning, ``final`` (and plain commentary) is content,
    and a commentary message addressed ``to=functions.X`` is passed on verbatim for the tool parser."""

    __slots__ = ("_buf", "_kind")

    def __init__(self, opened: bool = False) -> None:
        self._buf = ""
        self._kind: str | None = None  # None: reading a header; else the current message's event kind

    def feed(self, text: str, final: bool = False) -> list[Event]:
        """Split ``text``; with ``final`` nothing is held back."""
        self._buf += text
        out: list[Event] = []
        while self._buf:
            if self._kind is None:
                head = self._buf.lstrip()
                if head and not (head.startswith("<|") or "<|".startswith(head)):
                    self._kind = "content"  # no header at all (e.g. a grammar-shaped reply)
                    continue
                idx = self._buf.find("<|message|>")
                if idx < 0:
                    if final:
                        out.append(Event("content", self._buf))
                        self._buf = ""
                    break
                header = self._buf[:idx]
                self._buf = self._buf[idx + len("<|message|>") :]
                if "to=functions." in header:
                    self._kind = "call"
                    out.append(
                        Event("content", header.replace("<|start|>assistant", "").strip() + "<|message|>")
                    )
                else:
                    self._kind = "reasoning" if "<|channel|>analysis" in header else "content"
                continue
            ends = [(self._buf.find(e), e) for e in _HARMONY_ENDS if e in self._buf]
            if ends:
                idx, end = min(ends)
                body, self._buf = self._buf[:idx], self._buf[idx + len(end) :]
                kind, self._kind = self._kind, None
                if kind == "call":
                    out.append(Event("content", body + "<|call|>"))
                elif body:
                    out.append(Event(kind, body))
                continue
            keep = 0 if final else max(partial_suffix(self._buf, e) for e in _HARMONY_ENDS)
            ready, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep :]
            if ready:
                out.append(Event("content" if self._kind == "call" else self._kind, ready))
            break
        return out

"""Server-sent events: the encoder the servers use and the one incremental decoder for every reader.

OpenAI streams are ``data: <json>\\n\\n`` events ending with ``data: [DONE]``; other servers (for
instance sse-starlette) end lines with ``\\r\\n``. The decoder follows the WHATWG EventSource rules
that matter here: lines end with ``\\r\\n``, ``\\n`` or ``\\r`` (mixed freely, even inside one
event), a blank line ends an event, multi-line ``data``, comment lines starting with ``:``, and the
``event`` field.

Two layers, used by the gateway and the clients alike: :class:`Framer` cuts a byte stream into whole
raw events (what a proxy forwards untouched), :func:`parse_event` reads one raw event, and
:class:`Decoder` is the two together. The framer scans each byte once (a separator cut by a read is
found by looking back at most three bytes), so its cost is linear in the stream, and it refuses an
event longer than its limit instead of buffering it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

DONE = b"data: [DONE]\n\n"
DEFAULT_MAX_EVENT = 1 << 20
CONTENT_TYPE = "text/event-stream"
# Response headers of a stream besides its type: no caching, and no buffering by a proxy (nginx).
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_LINE_END = re.compile(r"\r\n|\n|\r")
_TRAILING_ENDS = re.compile(rb"[\r\n]+\Z")


def encode(obj: Any) -> bytes:
    """One ``data:`` event carrying ``obj`` as compact JSON."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def encode_raw(payload: str | bytes) -> bytes:
    """One ``data:`` event around an already-serialised JSON text (``str``, or UTF-8 ``bytes``)."""
    return b"data: " + (payload if isinstance(payload, bytes) else payload.encode()) + b"\n\n"


def encode_like(obj: Any, raw: bytes) -> bytes:
    """``obj`` as one ``data:`` event ending with the same line ends as the raw event ``raw``."""
    m = _TRAILING_ENDS.search(raw)
    end = m.group() if m is not None and len(m.group()) >= 2 else b"\n\n"
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + end


@dataclass(slots=True)
class Event:
    """A decoded event: its ``event`` type (default ``message``) and joined ``data`` lines."""

    data: str
    event: str = "message"

    @property
    def done(self) -> bool:
        """True for OpenAI's end-of-stream sentinel."""
        return self.data == "[DONE]"

    def json(self) -> Any:
        """The data parsed as JSON."""
        return json.loads(self.data)


class EventTooLarge(ValueError):
    """An event grew past the framer's limit before its blank line arrived."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"an SSE event is longer than {limit} bytes")
        self.limit = limit


def _pair_end(buf: bytes | bytearray, i: int) -> int:
    """End of the separator whose line-end pair starts at ``i`` (an empty line's ``\\r\\n`` included)."""
    end = i + 2
    if buf[i + 1] == 13 and end < len(buf) and buf[end] == 10:
        end += 1
    return end


# Every event separator (a line end, then an empty line's end) holds one of the pairs "\n\n", "\n\r"
# or "\r\r", and each of them is a separator ("\r\n" alone is one line end). The first one is found
# by a regex that stops at its match (so iterating over events stays linear); the last one by plain
# rfinds in C, which with no "\r" in the data (OpenAI's style) is one rfind.
_PAIR = re.compile(rb"\n[\n\r]|\r\r")
_PAIRS = (b"\n\r", b"\n\n", b"\r\r")


def _first_end(buf: bytes | bytearray, pos: int) -> int:
    """End of the first event separator starting at ``pos`` or later (0 when none)."""
    m = _PAIR.search(buf, pos)
    return _pair_end(buf, m.start()) if m is not None else 0


def _last_end(buf: bytes | bytearray, pos: int) -> int:
    """End of the last event separator starting at ``pos`` or later (0 when none)."""
    if buf.find(b"\r", pos) < 0:
        i = buf.rfind(b"\n\n", pos)
    else:
        i = -1
        for pat in _PAIRS:
            i = max(i, buf.rfind(pat, max(pos, i + 1)))  # only one after the best so far
    return _pair_end(buf, i) if i >= 0 else 0


def _misfit(buf: bytes | bytearray, first: int, last: int, limit: int) -> int | None:
    """None when every event in ``buf`` fits in ``limit`` bytes, else the end of the whole events
    before the first one that does not (``first``: end of the first event, 0 when not known)."""
    start = 0
    if first:
        if first > limit:
            return 0
        start = first
    if len(buf) - start > limit:  # only then can a later event (or the tail) be too long
        while start < last and (end := _first_end(buf, start)):
            if end - start > limit:
                return start
            start = end
        if len(buf) - last > limit:
            return last
    return None


class Framer:
    """Cuts a byte stream, fed in pieces split anywhere, into whole raw events (blank line included).

    ``limit`` bounds one event (and so what is held between reads); ``None`` means no bound.
    """

    __slots__ = ("_held", "_over", "limit")

    def __init__(self, limit: int | None = DEFAULT_MAX_EVENT) -> None:
        self.limit = limit
        self._held = bytearray()
        self._over = False  # an event passed the limit after the events returned last

    @property
    def held(self) -> int:
        """Bytes of an incomplete event waiting for the rest."""
        return len(self._held)

    def cut(self, chunk: bytes) -> bytes:
        """The whole events that ``chunk`` completes, as one block (b'' when none); holds the rest.

        Raises :class:`EventTooLarge` once an event passes the limit (the whole events before it
        are returned first).
        """
        if self._over:
            raise EventTooLarge(self.limit or 0)
        limit = self.limit
        held = self._held
        first = 0
        if not held:  # the common case: nothing waiting, search the chunk itself (no copy)
            if (chunk.endswith(b"\n\n") or chunk.endswith(b"\r\n\r\n")) and (
                limit is None or len(chunk) <= limit
            ):
                return chunk  # a read of whole events (a backend writes one or more per token)
            buf: bytes | bytearray = chunk
            last = _last_end(chunk, 0)
        else:
            # A separator cut by the previous read began at most 3 bytes before its end; the bytes
            # before that were searched already (which keeps the cost linear in the stream).
            pos = max(0, len(held) - 3)
            held += chunk
            buf = held
            first = _first_end(held, pos)
            last = max(first, _last_end(held, first)) if first else 0
        if limit is not None and len(buf) > limit:
            bad = _misfit(buf, first, last, limit)
            if bad is not None:
                if not bad:
                    held.clear()
                    raise EventTooLarge(limit)
                self._over = True
                done = bytes(buf[:bad])
                held.clear()
                return done
        if buf is chunk:
            if last == len(chunk):
                return chunk
            held += chunk[last:]
            return chunk[:last] if last else b""
        if not last:
            return b""
        done = bytes(held[:last])
        del held[:last]
        return done

    def flush(self) -> bytes:
        """What is still held (an event the stream ended without closing)."""
        if self._over:
            raise EventTooLarge(self.limit or 0)
        rest = bytes(self._held)
        self._held.clear()
        return rest


def split(block: bytes) -> list[bytes]:
    """The raw events of a block made of whole events (as :meth:`Framer.cut` returns)."""
    out: list[bytes] = []
    start = 0
    while end := _first_end(block, start):
        out.append(block[start:end])
        start = end
    if start < len(block):
        out.append(block[start:])
    return out


def parse_event(raw: bytes) -> Event | None:
    """The event in one raw event's bytes; None when it has no ``data`` (comments, blank lines)."""
    data: list[str] = []
    kind = "message"
    for line in _LINE_END.split(raw.decode("utf-8", errors="replace")):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            kind = value
    return Event("\n".join(data), kind) if data else None


class Decoder:
    """Feed it raw bytes in any chunking; it returns complete events."""

    def __init__(self, limit: int | None = None) -> None:
        self._framer = Framer(limit)

    def feed(self, chunk: bytes) -> list[Event]:
        """Consume ``chunk`` and return every event it completes."""
        block = self._framer.cut(chunk)
        if not block:
            return []
        return [e for raw in split(block) if (e := parse_event(raw)) is not None]

    def close(self) -> list[Event]:
        """Flush a final event that was not followed by a blank line."""
        tail = self._framer.flush()
        event = parse_event(tail) if tail else None
        return [event] if event is not None else []

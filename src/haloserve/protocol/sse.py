"""Server-sent events: the encoder the servers use and an incremental decoder for clients.

OpenAI streams are ``data: <json>\\n\\n`` events ending with ``data: [DONE]``. The decoder follows
the WHATWG rules that matter here: ``\\n``, ``\\r\\n`` or ``\\r`` line ends, multi-line ``data``,
comment lines starting with ``:``, and the ``event`` field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

DONE = b"data: [DONE]\n\n"


def encode(obj: Any) -> bytes:
    """One ``data:`` event carrying ``obj`` as compact JSON."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def encode_raw(payload: str) -> bytes:
    """One ``data:`` event around an already-serialised JSON string."""
    return b"data: " + payload.encode() + b"\n\n"


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


class Decoder:
    """Feed it raw bytes in any chunking; it yields complete events."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event = "message"

    def feed(self, chunk: bytes) -> Iterator[Event]:
        """Consume ``chunk`` and yield every event it completes."""
        self._buf += chunk
        while True:
            nl = self._buf.find(b"\n")
            cr = self._buf.find(b"\r")
            idx = nl if cr < 0 else (cr if nl < 0 else min(nl, cr))
            if idx < 0:
                return
            line = self._buf[:idx]
            skip = 1
            if self._buf[idx] == 13:
                if idx + 1 >= len(self._buf):
                    return  # wait: this \r may be the first half of \r\n
                if self._buf[idx + 1] == 10:
                    skip = 2
            self._buf = self._buf[idx + skip :]
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                yield event

    def _line(self, line: str) -> Event | None:
        if line == "":
            if not self._data:
                self._event = "message"
                return None
            event = Event("\n".join(self._data), self._event)
            self._data = []
            self._event = "message"
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def close(self) -> Iterator[Event]:
        """Flush a final event that was not followed by a blank line."""
        if self._buf:
            yield from self.feed(b"\n")
        if self._data:
            yield Event("\n".join(self._data), self._event)
            self._data = []

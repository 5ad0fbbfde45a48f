"""Reading token usage out of upstream responses without parsing every byte.

Streams pass through untouched except for complete SSE events that carry a ``usage`` object: those
are parsed to count tokens, and dropped when the gateway asked for ``include_usage`` on the client's
behalf (the client did not ask, so it must not see the extra chunk). The scan is a substring search
over each upstream read (after the framer's one pass), so a token chunk costs two searches.
"""

from __future__ import annotations

import re
from typing import Any

from haloserve.protocol import sse

_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


def body_usage(body: bytes) -> tuple[int, int]:
    """(prompt, completion) tokens of a non-streamed JSON response (0, 0 when absent)."""
    m = _USAGE.search(body)
    if m is None:
        return 0, 0
    tail = body[m.end() :]
    p = _PROMPT.search(tail)
    c = _COMPLETION.search(tail)
    return (int(p.group(1)) if p else 0), (int(c.group(1)) if c else 0)


def wants_usage(body: dict[str, Any]) -> bool:
    """True when the client itself asked for the usage chunk."""
    opts = body.get("stream_options")
    return isinstance(opts, dict) and bool(opts.get("include_usage"))


class UsageScanner:
    """Feeds upstream bytes through, returns what to send on, remembers the usage it saw.

    Events are framed by the one SSE framer (any line-end style, bounded by ``max_event`` bytes:
    :class:`~haloserve.protocol.sse.EventTooLarge` beyond it), so whole events go on as soon as
    they arrive and an incomplete one waits for the rest.
    """

    def __init__(self, strip: bool, max_event: int | None = sse.DEFAULT_MAX_EVENT) -> None:
        self.strip = strip
        self.prompt = 0
        self.completion = 0
        self.seen = False
        self._framer = sse.Framer(max_event)

    def feed(self, data: bytes) -> bytes:
        """Bytes to forward now: the complete events; an incomplete last event waits for the rest."""
        done = self._framer.cut(data)
        if b'"usage"' not in done or _USAGE.search(done) is None:
            return done
        out: list[bytes] = []
        for event in sse.split(done):
            if _USAGE.search(event) is not None:
                event = self._take(event)
                if not event:
                    continue
            out.append(event)
        return b"".join(out)

    def flush(self) -> bytes:
        """Whatever is still held when the upstream ends."""
        return self._framer.flush()

    def _take(self, raw: bytes) -> bytes:
        event = sse.parse_event(raw)
        if event is None or event.event != "message":
            return raw
        try:
            obj = event.json()
        except ValueError:
            return raw
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if not isinstance(usage, dict):
            return raw
        self.seen = True
        self.prompt = int(usage.get("prompt_tokens") or 0)
        self.completion = int(usage.get("completion_tokens") or 0)
        if not self.strip:
            return raw
        if obj.get("choices"):
            # usage rode on a chunk that also carries content (some servers do): keep the content
            obj["usage"] = None
            return sse.encode_like(obj, raw)
        return b""

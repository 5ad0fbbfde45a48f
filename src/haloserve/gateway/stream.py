"""Reading token usage out of upstream responses without parsing every byte.

Streams pass through untouched except for complete SSE events that carry a ``usage`` object: those
are parsed to count tokens, and dropped when the gateway asked for ``include_usage`` on the client's
behalf (the client did not ask, so it must not see the extra chunk). The scan is a substring search
over each upstream read, so the cost per token chunk is one ``bytes.find``.
"""

from __future__ import annotations

import json
import re
from typing import Any

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
    """Feeds upstream bytes through, returns what to send on, remembers the usage it saw."""

    def __init__(self, strip: bool) -> None:
        self.strip = strip
        self.prompt = 0
        self.completion = 0
        self.seen = False
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        """Bytes to forward now: the complete events; an incomplete last event waits for the rest."""
        if self._held:
            data = self._held + data
        end = data.rfind(b"\n\n")
        if end < 0:
            self._held = data
            return b""
        cut = end + 2
        self._held = data[cut:]
        done = data[:cut] if cut < len(data) else data
        if b'"usage"' not in done or _USAGE.search(done) is None:
            return done
        out: list[bytes] = []
        for event in done.split(b"\n\n"):
            if not event:
                continue
            if _USAGE.search(event) is not None:
                event = self._take(event)
                if not event:
                    continue
            out.append(event + b"\n\n")
        return b"".join(out)

    def flush(self) -> bytes:
        """Whatever is still held when the upstream ends."""
        held, self._held = self._held, b""
        return held

    def _take(self, event: bytes) -> bytes:
        payload = event.strip()
        if payload.startswith(b"data:"):
            payload = payload[5:].strip()
        try:
            obj = json.loads(payload)
        except ValueError:
            return event
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if not isinstance(usage, dict):
            return event
        self.seen = True
        self.prompt = int(usage.get("prompt_tokens") or 0)
        self.completion = int(usage.get("completion_tokens") or 0)
        if not self.strip:
            return event
        if obj.get("choices"):
            # usage rode on a chunk that also carries content (some servers do): keep the content
            obj["usage"] = None
            return b"data: " + json.dumps(obj, separators=(",", ":")).encode()
        return b""

"""Incremental detokenisation with stop strings.

Token pieces are bytes; a UTF-8 character may span several tokens, so bytes go through an incremental
decoder that only releases whole characters. Stop strings are matched on the decoded text across token
boundaries: text that could still become the start of a stop string is held back, and a matched stop
string (and anything after it) is never released.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    """Turns a stream of token byte pieces into safe-to-send text, honouring stop strings."""

    __slots__ = ("_decoder", "_held", "_stops", "stopped", "text_len")

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(s for s in stop if s)
        self._held = ""
        self.stopped = False
        self.text_len = 0

    def push(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that can be sent now (maybe empty)."""
        if self.stopped:
            return ""
        text = self._decoder.decode(piece)
        if not self._stops:
            self.text_len += len(text)
            return text
        return self._release(self._held + text, final=False)

    def flush(self) -> str:
        """End of generation: release whatever is held (no stop string can complete any more)."""
        if self.stopped:
            return ""
        text = self._decoder.decode(b"", final=True)
        if not self._stops:
            self.text_len += len(text)
            return text
        return self._release(self._held + text, final=True)

    def _release(self, pending: str, *, final: bool) -> str:
        cut = -1
        for stop in self._stops:
            idx = pending.find(stop)
            if idx >= 0 and (cut < 0 or idx < cut):
                cut = idx
        if cut >= 0:
            self.stopped = True
            self._held = ""
            self.text_len += cut
            return pending[:cut]
        hold = 0 if final else self._partial_suffix(pending)
        out = pending[: len(pending) - hold]
        self._held = pending[len(pending) - hold :]
        self.text_len += len(out)
        return out

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best

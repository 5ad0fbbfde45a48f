"""OpenAI response bodies and stream chunks, built as plain data on the hot path.

Stream chunks are formatted from a per-request prefix and a JSON-escaped delta, which costs a fraction
of serialising a dict per token; their shapes are exactly OpenAI's (``chat.completion.chunk`` and
``text_completion``), checked by the tests with the official client.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from haloserve.engine.base import Output
from haloserve.protocol import sse

FINGERPRINT = "fp_haloserve"


def usage_dict(out: Output) -> dict[str, Any]:
    """OpenAI ``usage`` from the engine's final output."""
    return {
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.completion_tokens,
        "total_tokens": out.prompt_tokens + out.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": out.cached_tokens},
    }


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@dataclass(slots=True)
class ResponseShape:
    """Identity of one response: id, model name, creation time, and chat or text completion."""

    id: str
    model: str
    chat: bool
    created: int = 0

    def __post_init__(self) -> None:
        if not self.created:
            self.created = int(time.time())

    # -- whole responses -----------------------------------------------------------------------
    def full(self, text: str, final: Output) -> dict[str, Any]:
        """The non-streaming response body."""
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": final.finish_reason,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": final.finish_reason}
            obj = "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [choice],
            "usage": usage_dict(final),
        }

    # -- stream chunks ---------------------------------------------------------------------------
    def _head(self, with_usage: bool) -> str:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        head = (
            f'{{"id":{_dumps(self.id)},"object":"{obj}","created":{self.created},'
            f'"model":{_dumps(self.model)},"system_fingerprint":"{FINGERPRINT}",'
        )
        return head + ('"usage":null,' if with_usage else "")

    def chunk_writer(self, with_usage: bool) -> ChunkWriter:
        """A formatter for this response's stream chunks."""
        return ChunkWriter(self, self._head(with_usage))


class ChunkWriter:
    """Formats the SSE events of one streamed response."""

    __slots__ = ("_head", "_shape")

    def __init__(self, shape: ResponseShape, head: str) -> None:
        self._shape = shape
        self._head = head

    def _event(self, choice: str) -> bytes:
        return sse.encode_raw(f'{self._head}"choices":[{choice}]}}')

    def role(self) -> bytes:
        """The chat stream's first chunk, announcing the assistant role."""
        return self._event(
            '{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}'
        )

    def text(self, text: str, finish: str | None = None, logprobs: Any = None) -> bytes:
        """A chunk carrying ``text`` (and the finish reason on the last one)."""
        fin = "null" if finish is None else f'"{finish}"'
        lp = "null" if logprobs is None else _dumps(logprobs)
        if self._shape.chat:
            delta = "{}" if not text else f'{{"content":{_dumps(text)}}}'
            return self._event(f'{{"index":0,"delta":{delta},"logprobs":{lp},"finish_reason":{fin}}}')
        return self._event(f'{{"index":0,"text":{_dumps(text)},"logprobs":{lp},"finish_reason":{fin}}}')

    def choice(self, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
        """A chat chunk with any ``delta`` (reasoning, tool calls) and optional logprobs."""
        body = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return self._event(_dumps(body))

    def usage(self, final: Output) -> bytes:
        """The extra last chunk of ``stream_options.include_usage``: no choices, the usage."""
        s = self._shape
        obj = "chat.completion.chunk" if s.chat else "text_completion"
        body = {
            "id": s.id,
            "object": obj,
            "created": s.created,
            "model": s.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [],
            "usage": usage_dict(final),
        }
        return sse.encode(body)

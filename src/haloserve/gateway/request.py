"""One API request at the gateway: its body read and checked, what it did (:class:`Outcome`), error answers.

The body is parsed once with ``json.loads`` and only ``model``, ``stream``, ``stream_options``,
``user`` and (for the prefix policy and token quotas) the prompt text are read from it.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from haloserve.errors import HaloError, InvalidRequestError, PayloadTooLargeError
from haloserve.gateway.accounting import Reservation
from haloserve.gateway.backends import Backend
from haloserve.gateway.store import KeyRecord
from haloserve.protocol.errors import CONTENT_TYPE, error_json

TOO_DEEP = "the JSON body is nested too deeply"


def error_response(exc: HaloError) -> web.Response:
    """An OpenAI-shaped error body with the error's status and headers."""
    return web.Response(
        body=error_json(exc), status=exc.status, content_type=CONTENT_TYPE, headers=exc.headers or None
    )


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The request body, 413 beyond ``limit`` bytes (checked before reading when the length is known)."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLargeError(f"request body of {length} bytes is over the {limit}-byte limit")
    if length is not None:
        return await request.content.readexactly(length) if length else b""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(body: bytes) -> tuple[dict[str, Any], str]:
    """The JSON object of an API request and its ``model``; a 400 for anything else."""
    try:
        obj = json.loads(body)
    except ValueError:
        raise InvalidRequestError("malformed JSON body") from None
    except RecursionError:  # json's C parser stops near the interpreter's recursion limit (~1000)
        raise InvalidRequestError(TOO_DEEP) from None
    if not isinstance(obj, dict):
        raise InvalidRequestError("the body must be a JSON object")
    model = obj.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("'model' is required", param="model")
    return obj, model


def dump_body(obj: dict[str, Any]) -> bytes:
    """``obj`` as a compact request body again (after the gateway changed it)."""
    try:
        return json.dumps(obj, separators=(",", ":")).encode()
    except RecursionError:
        raise InvalidRequestError(TOO_DEEP) from None


def prompt_text(obj: dict[str, Any]) -> str:
    """The prompt as one string (roles and text parts of messages, or the prompt), for prefix routing."""
    messages = obj.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        for m in messages:
            if not isinstance(m, dict):
                continue
            parts.append(str(m.get("role", "")))
            content = m.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [str(p.get("text", "")) for p in content if isinstance(p, dict)]
        return "\x1e".join(parts)
    prompt = obj.get("prompt", obj.get("input"))
    return prompt if isinstance(prompt, str) else json.dumps(prompt) if prompt is not None else ""


class Outcome:
    """What one request did, for logs, metrics and usage."""

    __slots__ = (
        "attempts",
        "backend",
        "completion",
        "error",
        "held",
        "key",
        "model",
        "prompt",
        "status",
        "ttfb",
    )

    def __init__(self) -> None:
        self.model: str | None = None
        self.key: KeyRecord | None = None
        self.backend: Backend | None = None
        self.status = 0
        self.prompt = 0
        self.completion = 0
        self.attempts = 0
        self.ttfb = 0.0
        self.error = False
        self.held: Reservation | None = None  # tokens held against the key's quota

    def charged(self) -> int:
        """Tokens to charge against the key's quota when the request ends.

        The usage the backend reported; without a report, everything held when a backend may have
        generated (it answered, or was still working when the client left), else nothing.
        """
        used = self.prompt + self.completion
        if used or self.held is None:
            return used
        if self.backend is not None and (self.status < 400 or self.status == 499):
            return self.held.tokens
        return 0

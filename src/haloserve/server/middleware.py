"""Pure ASGI middleware: request ids, the body-size limit and an access log without prompts or keys."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from haloserve.errors import PayloadTooLargeError

access_log = logging.getLogger("haloserve.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    """A fresh random request id."""
    return uuid.uuid4().hex


class RequestContext:
    """Assigns ``scope["state"]["request_id"]`` (from ``X-Request-Id`` if sane), echoes it, logs access."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        length = -1
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                cand = value.decode("latin-1")
                if _SAFE_ID.match(cand):
                    rid = cand
            elif name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
        rid = rid or new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        started = time.monotonic()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        if length > self.max_body:
            await _reject_too_large(send_with_id, self.max_body)
        else:
            await self.app(scope, self._limited(receive), send_with_id)
        access_log.info(
            "%s %s %s %d %.1fms",
            rid,
            scope["method"],
            scope["path"],
            status,
            (time.monotonic() - started) * 1000,
        )

    def _limited(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLargeError(f"request body is larger than the {limit}-byte limit")
            return message

        return wrapped


async def _reject_too_large(send: Any, limit: int) -> None:
    body = json.dumps(
        PayloadTooLargeError(f"request body is larger than the {limit}-byte limit").to_dict()
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})

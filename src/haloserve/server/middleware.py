"""Pure ASGI middleware: request ids, authentication, the body-size limit and an access log without
prompts or keys."""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from haloserve.errors import AuthenticationError, HaloError, PayloadTooLargeError
from haloserve.protocol.errors import error_json

access_log = logging.getLogger("haloserve.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    """A fresh random request id."""
    return uuid.uuid4().hex


def authenticate(keys: list[bytes], authorization: str, x_api_key: str) -> None:
    """401 in OpenAI shape unless one of ``keys`` is presented (compared in constant time)."""
    if not keys:
        return
    scheme, _, token = authorization.partition(" ")
    presented = token.strip() if scheme.lower() == "bearer" else x_api_key
    candidate = presented.encode()
    ok = False
    for key in keys:  # compare against every key so timing does not tell which one matched
        ok |= hmac.compare_digest(candidate, key)
    if not ok:
        message = "Missing API key" if not presented else "Incorrect API key provided"
        raise AuthenticationError(f"{message}: pass it as 'Authorization: Bearer <key>'")


class RequestContext:
    """Assigns ``scope["state"]["request_id"]`` (from ``X-Request-Id`` if sane), echoes it, logs access.

    Before the app sees a request it is authenticated (401 first, from the headers alone, when API keys
    are set and the path is not open) and its body is read up to ``max_body`` bytes: a larger body gets
    413 whether it declares a ``Content-Length`` or comes chunked. The app then gets the buffered body.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body: int,
        api_keys: list[bytes] | None = None,
        open_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.api_keys = api_keys or []
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        length = -1
        authorization = x_api_key = ""
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
            elif name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"x-api-key":
                x_api_key = value.decode("latin-1")
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

        try:
            # Authenticate first: a caller without the key learns nothing from how we judge its body.
            # CORS preflights (OPTIONS) carry no credentials by design.
            if scope["method"] != "OPTIONS" and scope["path"] not in self.open_paths:
                authenticate(self.api_keys, authorization, x_api_key)
            if length > self.max_body:
                raise _too_large(self.max_body)
            body = await self._read_body(receive)
        except HaloError as exc:
            await _reply_error(send_with_id, exc)
        else:
            await self.app(scope, _replay(body, receive), send_with_id)
        access_log.info(
            "%s %s %s %d %.1fms",
            rid,
            scope["method"],
            scope["path"],
            status,
            (time.monotonic() - started) * 1000,
        )

    async def _read_body(self, receive: Receive) -> list[Message]:
        """The body's messages, up to the limit (413 beyond it, however the body is framed)."""
        messages: list[Message] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages  # the client left: the app sees the disconnect
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise _too_large(self.max_body)
            if not message.get("more_body", False):
                return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands out the buffered body, then the live channel (for disconnects)."""
    pending = list(messages)

    async def wrapped() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return wrapped


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"request body is larger than the {limit}-byte limit")


async def _reply_error(send: Any, exc: HaloError) -> None:
    body = error_json(exc)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    if exc.status == 413:  # the rest of the body is not read: the connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

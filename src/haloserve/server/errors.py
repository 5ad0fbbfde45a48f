"""The one place where exceptions become HTTP responses in OpenAI's error shape."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from haloserve.errors import HaloError, error_body
from haloserve.protocol.errors import body_json, error_event
from haloserve.protocol.openai import LONE_SURROGATE, TOO_DEEP

log = logging.getLogger("haloserve.server")

_HTTP_TYPES = {
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
}


class ErrorResponse(JSONResponse):
    """A JSON error body that always encodes: non-ASCII is escaped, so text echoed from a hostile request
    (a lone surrogate in a model name, say) cannot turn a 4xx into a 500 while it is being written."""

    def render(self, content: Any) -> bytes:
        return body_json(content)


# The single SSE event sent when a stream fails after it started (the gateway sends the same one).
sse_error = error_event


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if err.get("type") == "json_invalid":
        return f"malformed JSON body: {err.get('ctx', {}).get('error', err.get('msg'))}", None
    if err.get("type") == "missing" and not loc:
        return "request body is required", None
    if err.get("type") in (LONE_SURROGATE, TOO_DEEP):
        where = str(err.get("ctx", {}).get("param", "")) or None
        return str(err.get("msg")), where
    msg = str(err.get("msg", "invalid value"))
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return (f"{param}: {msg}{more}" if param else f"{msg}{more}"), param


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every failure into an OpenAI error body."""

    @app.exception_handler(HaloError)
    async def _halo(request: Request, exc: HaloError) -> JSONResponse:
        return ErrorResponse(exc.to_dict(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return ErrorResponse(error_body(message, "invalid_request_error", None, param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_, code = _HTTP_TYPES.get(exc.status_code, ("invalid_request_error", None))
        message = f"{request.method} {request.url.path}: {exc.detail}"
        body = error_body(message, type_, code)
        return ErrorResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = error_body(f"internal error: {type(exc).__name__}", "server_error", "internal_error")
        return ErrorResponse(body, status_code=500)

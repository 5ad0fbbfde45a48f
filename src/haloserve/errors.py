"""One exception hierarchy for the whole product.

Every error knows its HTTP status and its OpenAI error ``type`` and ``code``; the server, the gateway
and the CLI each turn it into their own output at exactly one place (see ``server/errors.py`` and
``cli/__init__.py``). Nothing classifies errors by looking at their message text.
"""

from __future__ import annotations

from typing import Any


class HaloError(Exception):
    """Base class: an error with an HTTP status and an OpenAI-shaped body."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error body ``{"error": {"message", "type", "param", "code"}}`` (for errors that are
    not a :class:`HaloError`, such as a framework's validation error, and for :meth:`HaloError.to_dict`)."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class InvalidRequestError(HaloError):
    """The request is malformed or asks for something impossible (400)."""

    status = 400
    type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    """Prompt plus requested tokens do not fit in one slot's context (400)."""

    code = "context_length_exceeded"


class AuthenticationError(HaloError):
    """Missing or wrong API key (401)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(HaloError):
    """The key is valid but not allowed to do this (403)."""

    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFoundError(HaloError):
    """A route or object that does not exist (404)."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    """The requested model is not served here (404)."""

    code = "model_not_found"


class PayloadTooLargeError(HaloError):
    """The request body is larger than the configured limit (413)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestTimeoutError(HaloError):
    """The client took too long to send a request's head or body (408; the connection is closed)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class UriTooLongError(HaloError):
    """The request line is longer than the configured limit (414)."""

    status = 414
    type = "invalid_request_error"
    code = "uri_too_long"


class HeadersTooLargeError(HaloError):
    """The request headers are larger than the configured limits (431)."""

    status = 431
    type = "invalid_request_error"
    code = "request_header_too_large"


class RateLimitError(HaloError):
    """Too many requests: a full queue or a quota (429, with ``Retry-After``)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        self.headers.setdefault("Retry-After", str(max(1, round(retry_after))))


class QueueFullError(RateLimitError):
    """Every slot is busy and the wait queue is full (429)."""

    code = "queue_full"


class ServiceUnavailableError(HaloError):
    """Not ready, shutting down, or no healthy backend (503, with ``Retry-After``)."""

    status = 503
    type = "service_unavailable"
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        self.headers.setdefault("Retry-After", str(max(1, round(retry_after))))


class ModelLoadError(ServiceUnavailableError):
    """The requested model could not be loaded: a bad file, no memory (503, with ``Retry-After``)."""

    code = "model_load_failed"


class EngineError(HaloError):
    """The inference engine failed while serving one request (500)."""

    status = 500
    type = "server_error"
    code = "engine_error"


class UpstreamError(HaloError):
    """A backend behind the gateway failed (502)."""

    status = 502
    type = "server_error"
    code = "upstream_error"


class UpstreamTimeoutError(UpstreamError):
    """A backend behind the gateway did not answer in time (504)."""

    status = 504
    code = "upstream_timeout"


class ConfigError(HaloError):
    """Bad settings: a flag, an environment variable or a config file (CLI exit code 2)."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_config"


class CommandError(HaloError):
    """A command could not do its job for a reason the user can fix (CLI exit code 1)."""

    status = 500
    type = "server_error"
    code = "command_failed"

"""OpenAI error bodies on the wire, the same bytes from the server and the gateway.

A failure before a response started is a JSON body (:func:`error_json`); one after a stream started
is a single SSE event in the same shape (:func:`error_event`), after which the stream ends. Both are
ASCII: text echoed from a hostile request (a lone surrogate in a model name, say) is escaped, so the
error itself always encodes and a 4xx never turns into a 500 while it is written.
"""

from __future__ import annotations

import json
from typing import Any

from haloserve.errors import HaloError
from haloserve.protocol import sse

CONTENT_TYPE = "application/json"


def body_json(body: dict[str, Any]) -> bytes:
    """An error body (``{"error": {...}}``, see :func:`haloserve.errors.error_body`) as ASCII JSON bytes."""
    return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_json(exc: HaloError) -> bytes:
    """``exc``'s OpenAI error body as ASCII JSON bytes."""
    return body_json(exc.to_dict())


def error_event(exc: HaloError) -> bytes:
    """The one SSE event that ends a stream which failed after it started."""
    return sse.encode_raw(error_json(exc))

"""Whose fault a failed attempt is: the backend's counts towards its ejection, the request's never does.

Connection errors, timeouts and 502-504 are the backend's (or a proxy's in front of it). A 4xx is
the request's: it is passed on, not retried. Any other 5xx (500 above all) may be either: a request
whose content crashes a backend's handler was retried on every backend, opened every breaker and
took the model down for every client. So such an answer is kept as a :class:`Suspect` and the
request is asked of one other backend only. If that one answers, the first backend was at fault and
is counted; if it fails the same way, the request is, and the kept answer goes to the client with
neither backend counted. A response too large for the gateway's bounds is nobody's (:func:`too_large`).

The counting itself is a callback (:class:`OnFailure`) handed to the proxy by whoever wires it.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from haloserve.errors import UpstreamError
from haloserve.gateway.backends import Backend

BACKEND_FAULT = frozenset({502, 503, 504})


class OnFailure(Protocol):
    """Counts one failure that is ``b``'s fault (``fatal``: the node is down; eject it at once)."""

    def __call__(self, b: Backend, *, fatal: bool) -> None: ...


class Suspect:
    """A 5xx answer (not 502-504) kept while a second backend tells whose fault it was."""

    __slots__ = ("backend", "content_type", "data", "status")

    def __init__(self, backend: Backend, status: int, data: bytes, content_type: str) -> None:
        self.backend = backend
        self.status = status
        self.data = data
        self.content_type = content_type

    def response(self) -> web.Response:
        """The kept answer, for the client when no other backend could answer instead."""
        return web.Response(body=self.data, status=self.status, headers={"Content-Type": self.content_type})


def record(
    on_failure: OnFailure, b: Backend, status: int, suspect: Suspect | None, *, counted: bool = False
) -> None:
    """Count the final answer ``b`` gave for the breakers (``counted``: its success already was).

    Below 400: ``b`` works, and an earlier 5xx for the same request was that backend's own fault.
    502-504: ``b``'s fault. 4xx and other 5xx: the request's doing, or not knowable: nobody's.
    """
    if status < 400:
        if not counted:
            b.succeeded()
        if suspect is not None:
            on_failure(suspect.backend, fatal=False)
    elif status in BACKEND_FAULT:
        on_failure(b, fatal=False)


def too_large(b: Backend, exc: Exception) -> UpstreamError:
    """A response past a buffer bound: a clean 502, neither retried nor counted against the backend.

    Its size may come from the request (an echoed long prompt, a large batch), so counting it would
    let one client eject healthy backends; the bound itself keeps the gateway safe.
    """
    return UpstreamError(f"backend {b.url} sent too much: {exc}")

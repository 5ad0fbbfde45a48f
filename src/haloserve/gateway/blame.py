"""Whose fault a failed attempt is: the backend's counts towards its ejection, the request's never does.

Connection errors, timeouts and 502-504 are the backend's (or a proxy's in front of it). A 4xx is
the request's: it is passed on, not retried. Any other 5xx (500 above all) may be either: a request
whose content crashes a backend's handler was retried on every backend, opened every breaker and
took the model down for every client. So such an answer is kept as a :class:`Suspect` and the
request is asked of one other backend only. If that one answers, the first backend was at fault and
is counted; if it fails the same way, the request is, and the kept answer goes to the client with
neither backend counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from haloserve.gateway.backends import Backend

if TYPE_CHECKING:
    from haloserve.gateway.app import Gateway

BACKEND_FAULT = frozenset({502, 503, 504})


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


def record(gw: Gateway, b: Backend, status: int, suspect: Suspect | None, *, counted: bool = False) -> None:
    """Count the final answer ``b`` gave for the breakers (``counted``: its success already was).

    Below 400: ``b`` works, and an earlier 5xx for the same request was that backend's own fault.
    502-504: ``b``'s fault. 4xx and other 5xx: the request's doing, or not knowable: nobody's.
    """
    if status < 400:
        if not counted:
            b.succeeded()
        if suspect is not None:
            gw.on_failure(suspect.backend, fatal=False)
    elif status in BACKEND_FAULT:
        gw.on_failure(b, fatal=False)

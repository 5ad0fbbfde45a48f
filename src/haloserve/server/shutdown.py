"""Graceful shutdown of one node: queued requests get 503 at once, running ones until the deadline.

uvicorn stops accepting connections on SIGTERM and waits for the open ones; what it cannot do is end a
response in a way the client understands. So when shutdown begins the app (1) refuses new work with 503,
(2) answers every request still waiting for a slot with 503 and ``Retry-After`` at once, since it would
never be served here, and (3) at ``--shutdown-timeout`` ends every request still running: a stream gets
one SSE error event in OpenAI's shape and its proper end, a non-streamed request a 503 body. uvicorn's
own deadline is set :data:`FLUSH_MARGIN` seconds later, so those last answers reach the clients.
"""

from __future__ import annotations

import asyncio
import logging

from haloserve.engine.bridge import RequestStream
from haloserve.errors import ServiceUnavailableError
from haloserve.server.state import ServerState

log = logging.getLogger("haloserve.server")

# Seconds between our deadline and uvicorn's, for the final error events to be written.
FLUSH_MARGIN = 3.0
RETRY_AFTER = 5.0


def begin_shutdown(state: ServerState, timeout: float) -> None:
    """Start draining (event-loop thread): 503 for queued and new requests, the rest cut at ``timeout``."""
    if state.draining:
        return
    state.draining = True
    refused = refuse_queued(state)
    log.info(
        "shutting down: %d queued request(s) refused, %d running (%gs to finish)",
        refused,
        len(state.streams) - refused,
        timeout,
    )
    asyncio.get_running_loop().call_later(timeout, cut_running, state, timeout)


def refuse_queued(state: ServerState) -> int:
    """503 for the requests that wait for a slot and will not get one (those that fit in the slots free
    now are admitted at the engine's next step and run). Returns how many were refused."""
    waiting = sorted((s for s in state.streams if not s.started and not s.cancelled), key=lambda s: s.seq)
    try:
        free = max(0, state.engine.info.n_parallel - state.engine.stats().busy_slots)
    except Exception:  # the engine is gone: nothing will be admitted
        free = 0
    for stream in waiting[free:]:
        stream.fail(
            ServiceUnavailableError(
                "the server is shutting down; this request was still queued and was not started",
                retry_after=RETRY_AFTER,
            )
        )
    return len(waiting[free:])


def on_new_stream(state: ServerState, stream: RequestStream) -> None:
    """A request prepared while shutdown began: queued ones are refused, and after the deadline all."""
    if state.deadline_passed:
        stream.fail(ServiceUnavailableError("the server is shutting down", retry_after=RETRY_AFTER))
    elif state.draining:
        refuse_queued(state)


def cut_running(state: ServerState, timeout: float) -> None:
    """End every request still running (its stream gets one error event, then ends)."""
    state.deadline_passed = True
    live = list(state.streams)
    if live:
        log.warning("shutdown deadline: ending %d request(s) still running", len(live))
    for stream in live:
        stream.fail(
            ServiceUnavailableError(
                f"the server shut down before this request finished (--shutdown-timeout {timeout:g}s)",
                retry_after=RETRY_AFTER,
            )
        )

"""The thread-safe seam between an engine's compute thread and asyncio request handlers.

The compute thread never touches asyncio objects directly: each step it hands a list of
``(stream, output)`` pairs to :func:`deliver`, which schedules one callback per event loop with
``call_soon_threadsafe`` (one wake-up per step, not one per token).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from haloserve.engine.output import Output


class StreamCancelled(Exception):
    """Raised to a reader of a stream that was cancelled: the rest of its outputs will never come."""


# Put in a cancelled stream's queue so that a reader waiting for the next output wakes up at once.
_CANCELLED = Output(finish_reason="cancelled", error="cancelled")
# Put in a failed stream's queue: its reader gets the stream's error (see :meth:`RequestStream.fail`).
_FAILED = Output(finish_reason="error", error="failed")
_SEQ = itertools.count()


class RequestStream:
    """Async iterator over one request's outputs; :meth:`cancel` tells the engine to stop it."""

    __slots__ = (
        "__weakref__",
        "_cancel_cb",
        "_done",
        "_error",
        "_queue",
        "admitted",
        "cancelled",
        "job",
        "loop",
        "outputs",
        "seq",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, cancel_cb: Callable[[RequestStream], None]) -> None:
        self.loop = loop
        self._queue: asyncio.Queue[Output] = asyncio.Queue()
        self._cancel_cb = cancel_cb
        self._done = False
        self._error: BaseException | None = None
        self.cancelled = False
        self.job: Any = None
        # Set by the engine (from any thread) when the request gets a slot; until then it is only queued.
        self.admitted = False
        self.outputs = 0  # outputs delivered so far
        self.seq = next(_SEQ)  # arrival order (an engine admits in this order)

    @property
    def started(self) -> bool:
        """True once the engine has taken the request into a slot (or it has produced output)."""
        return self.admitted or self.outputs > 0

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> Output:
        if self._done:
            raise StopAsyncIteration
        out = await self._queue.get()
        if out is _CANCELLED:
            self._done = True
            raise StreamCancelled
        if out is _FAILED:
            self._done = True
            assert self._error is not None
            raise self._error
        if out.finish_reason is not None:
            self._done = True
        return out

    def put(self, out: Output) -> None:
        """Deliver one output (event-loop thread only)."""
        self.outputs += 1
        self._queue.put_nowait(out)

    @property
    def done(self) -> bool:
        """True once the final output has been read."""
        return self._done

    def cancel(self) -> None:
        """Stop the request (idempotent, event-loop thread): its slot is freed at the engine's next step,
        and a reader waiting for output gets :class:`StreamCancelled`."""
        if not self._done and not self.cancelled:
            self.cancelled = True
            self._cancel_cb(self)
            self._queue.put_nowait(_CANCELLED)

    def fail(self, error: BaseException) -> None:
        """End the request with ``error`` (event-loop thread): the engine stops it as on :meth:`cancel`,
        and the reader gets ``error`` raised instead of the rest of the outputs. Idempotent."""
        if self._done or self.cancelled:
            return
        self._error = error
        self.cancelled = True
        self._cancel_cb(self)
        self._queue.put_nowait(_FAILED)

    async def aclose(self) -> None:
        """Cancel, as closing an async generator would."""
        self.cancel()


def _deliver_batch(items: list[tuple[RequestStream, Output]]) -> None:
    for stream, out in items:
        stream.put(out)


def deliver(items: list[tuple[RequestStream, Output]]) -> None:
    """Hand outputs produced on a compute thread to their event loops (called from that thread)."""
    if not items:
        return
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, Output]]] = defaultdict(list)
    for stream, out in items:
        by_loop[stream.loop].append((stream, out))
    for loop, batch in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
            loop.call_soon_threadsafe(_deliver_batch, batch)

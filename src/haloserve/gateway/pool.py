"""The backend pool: which backends may take a request, the per-model wait queue, and config updates."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterable

from haloserve.config.gateway import BackendSpec
from haloserve.errors import QueueFullError, ServiceUnavailableError
from haloserve.gateway.backends import FAILED, RANK, Backend, BreakerConfig
from haloserve.gateway.policy import Balancer, RouteInfo
from haloserve.protocol.models import unknown_model


def by_readiness(model: str, live: list[Backend], room: list[Backend]) -> list[Backend]:
    """Of the backends with room, those where ``model`` is readiest: loaded, then loading, then can load.

    So a request goes where its model is loaded while one of those has room, and makes another
    backend load it only when they are all full. A backend where the model failed to load takes it
    only when every live backend has it failed; when the others are merely full, the request waits.
    """
    best_live = min(b.rank(model) for b in live)
    if best_live < RANK[FAILED]:
        room = [b for b in room if b.rank(model) < RANK[FAILED]]
    if not room:
        return room
    best = min(b.rank(model) for b in room)
    return [b for b in room if b.rank(model) == best]


class Pool:
    """Backends, the balancer and the bounded per-model queues of requests waiting for room."""

    def __init__(
        self,
        specs: Iterable[BackendSpec],
        balancer: Balancer,
        *,
        breaker: BreakerConfig | None = None,
        queue_size: int = 256,
        queue_timeout: float = 30.0,
        workers: int = 1,
    ) -> None:
        self.breaker = breaker or BreakerConfig()
        self.balancer = balancer
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.workers = workers
        self.backends: list[Backend] = []
        self.queues: dict[str, deque[asyncio.Future[None]]] = {}
        self.prefix_hits = 0
        self.prefix_lookups = 0
        self.update(specs)

    def update(
        self, specs: Iterable[BackendSpec], prepared: dict[str, Backend] | None = None
    ) -> tuple[list[Backend], list[Backend]]:
        """Apply a new backend list: keep known URLs (new spec), add new ones, drop the rest.

        In-flight requests on a dropped backend finish normally; they hold their own reference.
        ``prepared`` holds new backends already probed (a reload probes before it switches).
        Returns (added, removed).
        """
        old = {b.url: b for b in self.backends}
        new: list[Backend] = []
        added: list[Backend] = []
        for spec in specs:
            b = old.pop(spec.url, None)
            if b is None:
                b = (prepared or {}).get(spec.url) or Backend(
                    spec, self.breaker, api_key=spec.resolved_api_key()
                )
                added.append(b)
            else:
                b.spec = spec
                b.api_key = spec.resolved_api_key()
            if spec.models:
                b.models = frozenset(spec.models)
            new.append(b)
        self.backends = new
        self._wake_all()
        return added, list(old.values())

    def models(self) -> list[str]:
        """The union of every backend's models, sorted."""
        return sorted({m for b in self.backends for m in b.models})

    def ready(self) -> bool:
        """At least one backend is healthy and serves something."""
        return any(b.healthy and b.models for b in self.backends)

    def queue_depth(self, model: str | None = None) -> int:
        """Requests waiting (for one model, or in total)."""
        if model is not None:
            return len(self.queues.get(model, ()))
        return sum(len(q) for q in self.queues.values())

    def pick(self, model: str, info: RouteInfo, exclude: set[str]) -> Backend | None:
        """A backend with room for ``model`` now, or None when all that could take it are full.

        Raises 404 when no backend serves the model, 503 when none of them is healthy.
        """
        now = time.monotonic()
        serving = [b for b in self.backends if b.serves(model)]
        if not serving:
            if any(not b.models for b in self.backends):
                raise ServiceUnavailableError(
                    f"model {model!r} is not served by any backend known so far; some are not reachable yet",
                    retry_after=1.0,
                )
            raise unknown_model(model)
        live = [b for b in serving if b.url not in exclude and b.routable(now)]
        if not live:
            soonest = min((b.open_until - now for b in serving if b.open_until > now), default=1.0)
            raise ServiceUnavailableError(
                f"no healthy backend for model {model!r}", retry_after=max(1.0, soonest)
            )
        room = [b for b in live if b.has_room()]
        # Multi-model backends report states: prefer where the model is loaded (a choice only among several).
        if len(live) > 1 and any(b.model_states for b in live):
            room = by_readiness(model, live, room)
        if not room:
            return None
        if len(room) == 1:
            chosen = room[0]
            if self.balancer.needs_prompt:
                self.balancer.choose(room, info, now)  # keep the prefix index learning
        else:
            decision = self.balancer.choose(room, info, now)
            chosen = room[decision.index]
            if self.balancer.needs_prompt:
                self.prefix_lookups += 1
                self.prefix_hits += decision.prefix_hit
        chosen.acquire()
        return chosen

    async def acquire(self, model: str, info: RouteInfo, exclude: set[str]) -> tuple[Backend, float]:
        """A backend for this request, waiting in the model's queue when all are full.

        Returns the backend and the seconds spent waiting. Raises 429 (queue full or timed out).
        """
        b = self.pick(model, info, exclude)
        if b is not None:
            return b, 0.0
        queue = self.queues.setdefault(model, deque())
        if len(queue) >= self.queue_size:
            raise QueueFullError(
                f"every backend for {model!r} is busy and its queue is full ({self.queue_size})",
                retry_after=1.0,
            )
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self.queue_timeout
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            queue.append(fut)
            try:
                await asyncio.wait_for(fut, deadline - loop.time())
            except asyncio.TimeoutError:
                raise QueueFullError(
                    f"no backend for {model!r} had room within {self.queue_timeout:g}s",
                    retry_after=max(1.0, self.queue_timeout / 4),
                    code="queue_timeout",
                ) from None
            finally:
                if not fut.done() or fut.cancelled():
                    fut.cancel()
                with contextlib.suppress(ValueError):
                    queue.remove(fut)
            b = self.pick(model, info, exclude)
            if b is not None:
                return b, loop.time() - start
            if loop.time() >= deadline:
                raise QueueFullError(
                    f"no backend for {model!r} had room within {self.queue_timeout:g}s",
                    retry_after=1.0,
                    code="queue_timeout",
                )

    def release(self, b: Backend) -> None:
        """A request left ``b``: wake the oldest waiter of a model it serves."""
        b.release()
        for model in b.models:
            queue = self.queues.get(model)
            if queue:
                for fut in queue:
                    if not fut.done():
                        fut.set_result(None)
                        return

    def _wake_all(self) -> None:
        for queue in self.queues.values():
            for fut in queue:
                if not fut.done():
                    fut.set_result(None)

    def wake(self) -> None:
        """Let waiters re-check (a backend came back or learned a bigger limit)."""
        self._wake_all()

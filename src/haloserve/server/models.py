"""Many models in one ``halo serve``: each loaded model has its own engine (thread and backend) and its
own :class:`ServerState` and serving objects; the :class:`ModelManager` loads them on demand within the
memory budget and unloads them by the rules of ``server/model_policy.py`` (docs/models.md).

Everything here runs on the event loop except engine start and stop, which go to worker threads, so the
streams of one model never wait for another model's load. Each transition of a model (a load, an unload)
is one task that requests for that model await together: concurrent requests share one load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from haloserve.config.model_registry import ModelEntry
from haloserve.engine.base import Engine, EngineStats
from haloserve.errors import (
    HaloError,
    InvalidRequestError,
    ModelLoadError,
    ServiceUnavailableError,
)
from haloserve.protocol.models import unknown_model
from haloserve.server.chat.serving import ChatServing
from haloserve.server.completion import CompletionServing
from haloserve.server.metrics import ServerMetrics
from haloserve.server.model_policy import Resident, plan_eviction
from haloserve.server.model_state import ManagedModel, model_state
from haloserve.server.state import ServerState
from haloserve.server.tokens import TokenServing
from haloserve.units import fmt_bytes

log = logging.getLogger("haloserve.models")

RETRY_FAILED_AFTER = 30.0  # seconds before a request retries the load of a model that failed
POLL = 0.05  # seconds between looks at busy models (eviction waits, explicit unloads)


class ModelManager:
    """Loads models on demand within ``budget`` bytes and ``max_models``; unloads idle ones by LRU and ttl."""

    def __init__(
        self,
        entries: Sequence[ModelEntry],
        *,
        budget: int,
        make_engine: Callable[[ModelEntry], Engine],
        need_bytes: Callable[[ModelEntry], int],
        api_keys: list[bytes] | None = None,
        max_models: int = 0,
        load_timeout: float = 300.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.models = {e.id: ManagedModel(e) for e in entries}
        self.names = {name: m for m in self.models.values() for name in m.entry.names()}
        self.budget = budget
        self.max_models = max_models
        self.load_timeout = load_timeout
        self.stop_timeout = stop_timeout
        self.make_engine = make_engine
        self.need_bytes = need_bytes
        # One registry for the app: HTTP metrics, the loaded engines' counters summed, per-model labels.
        self.metrics = ServerMetrics(self.total_stats, lambda: None)
        self.api_keys = api_keys or []
        self.draining = False
        self._admit: asyncio.Lock | None = None
        self._ttl_task: asyncio.Task[None] | None = None

    # -- start-up -----------------------------------------------------------------------------------
    def measure(self) -> list[str]:
        """Plan every model's bytes (blocking: reads GGUF headers); returns one warning per model that can
        never fit. A model whose header cannot be read is marked failed with the cause."""
        warnings = []
        for m in self.models.values():
            try:
                m.need_bytes = self.need_bytes(m.entry)
            except Exception as exc:
                self._fail(m, _cause(exc))
                continue
            if m.need_bytes > self.budget:
                warnings.append(
                    f"model {m.id!r} needs {fmt_bytes(m.need_bytes)}, more than the memory budget"
                    f" ({fmt_bytes(self.budget)}): it cannot be loaded"
                )
        return warnings

    def fits_any(self) -> bool:
        """True when at least one model is loaded, or not failed and small enough for the budget."""
        return any(
            m.status == "loaded"
            or (m.status != "failed" and m.need_bytes is not None and m.need_bytes <= self.budget)
            for m in self.models.values()
        )

    async def start(self) -> None:
        """Start the ttl watcher and the preloads (in the event loop of the app)."""
        self._admit = asyncio.Lock()
        self._ttl_task = asyncio.create_task(self._ttl_loop())
        for m in self.models.values():
            if m.entry.preload or m.entry.pinned:
                self._start_load(m)

    async def close(self) -> None:
        """Stop taking work, wait for loads in progress, and stop every engine."""
        self.draining = True
        if self._ttl_task is not None:
            self._ttl_task.cancel()
        tasks = [m.task for m in self.models.values() if m.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        engines = [m.engine for m in self.models.values() if m.engine is not None]
        for m in self.models.values():
            m.engine, m.state, m.servings, m.reserved = None, None, {}, False
            if m.status == "loaded":
                m.status = "unloaded"
        await asyncio.gather(*(asyncio.to_thread(e.stop, self.stop_timeout) for e in engines))

    # -- requests -----------------------------------------------------------------------------------
    def resolve(self, name: str) -> ManagedModel:
        """The model called ``name`` (id or alias; empty: the only model); 404 when none."""
        if not name:
            if len(self.models) == 1:
                return next(iter(self.models.values()))
            raise InvalidRequestError("model is required: this server serves several models", param="model")
        m = self.names.get(name)
        if m is None:
            raise unknown_model(name)
        return m

    async def acquire(self, name: str) -> ManagedModel:
        """The loaded model ``name``, loading it first when needed; the caller must :meth:`release` it."""
        m = self.resolve(name)
        deadline = time.monotonic() + self.load_timeout
        while True:
            if self.draining:
                raise ServiceUnavailableError("the server is shutting down", retry_after=5.0)
            if m.status == "loaded" and m.task is None:
                m.leases += 1
                m.touch()
                return m
            recent = time.monotonic() - m.failed_at < RETRY_FAILED_AFTER
            if m.status == "failed" and m.task is None and recent:
                raise ModelLoadError(
                    f"model {m.id!r} failed to load: {m.error}", retry_after=RETRY_FAILED_AFTER
                )
            if m.task is None:
                self._start_load(m)
            assert m.task is not None
            left = deadline - time.monotonic()
            try:
                await asyncio.wait_for(asyncio.shield(m.task), max(0.0, left))
            except TimeoutError:
                raise ServiceUnavailableError(
                    f"model {m.id!r} is still loading (waited {self.load_timeout:g}s); retry later",
                    retry_after=5.0,
                ) from None
            if m.refusal is not None and m.status == "unloaded":
                raise m.refusal
            if m.status == "failed":
                raise ModelLoadError(
                    f"model {m.id!r} failed to load: {m.error}", retry_after=RETRY_FAILED_AFTER
                )

    def release(self, m: ManagedModel) -> None:
        """Give back a model taken by :meth:`acquire`."""
        m.leases -= 1
        m.touch()

    @asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[ManagedModel]:
        """``async with manager.use(name) as m:`` holds the loaded model for the block."""
        m = await self.acquire(name)
        try:
            yield m
        finally:
            self.release(m)

    async def load(self, name: str) -> ManagedModel:
        """``POST /models/load``: load now (a failed model is retried at once); waits for the load."""
        m = self.resolve(name)
        if m.status == "loaded" and m.task is None:
            raise InvalidRequestError(f"model {m.id!r} is already loaded", param="model")
        if m.status == "failed" and m.task is None:
            m.failed_at = 0.0
        self.release(await self.acquire(m.id))
        return m

    async def unload(self, name: str) -> None:
        """``POST /models/unload``: running requests get up to the stop timeout, then the model goes."""
        m = self.resolve(name)
        if m.task is not None:
            await asyncio.shield(m.task)
        if m.status != "loaded":
            raise InvalidRequestError(f"model {m.id!r} is not loaded", param="model")
        await asyncio.shield(self._begin_unload(m, "unloaded by request", wait=self.stop_timeout))

    # -- transitions --------------------------------------------------------------------------------
    def _start_load(self, m: ManagedModel) -> None:
        m.status, m.error, m.refusal = "loading", None, None
        m.task = asyncio.create_task(self._load(m), name=f"load {m.id}")
        m.task.add_done_callback(lambda t: _clear(m, t))

    async def _load(self, m: ManagedModel) -> None:
        assert self._admit is not None
        start = time.monotonic()
        try:
            async with self._admit:  # one admission decision at a time: budgets add up
                if m.need_bytes is None:
                    m.need_bytes = await asyncio.to_thread(self.need_bytes, m.entry)
                await self._make_room(m)
                m.reserved = True
            engine = await asyncio.to_thread(self._start_engine, m.entry)
            state = model_state(m.entry, engine, self.metrics, self.api_keys)
        except ModelLoadError as exc:
            self._fail(m, _cause(exc))
            return
        except ServiceUnavailableError as exc:  # no room while other models are busy: not the model's fault
            m.status, m.reserved, m.refusal = "unloaded", False, exc
            return
        except Exception as exc:
            self._fail(m, _cause(exc))
            return
        m.engine, m.state = engine, state
        m.servings = {
            "chat": ChatServing(state),
            "completion": CompletionServing(state),
            "token": TokenServing(state),
        }
        m.status = "loaded"
        m.loads += 1
        m.load_seconds += time.monotonic() - start
        m.touch()
        log.info(
            "model %r loaded in %.2fs (%s planned)",
            m.id,
            time.monotonic() - start,
            fmt_bytes(m.need_bytes or 0),
        )

    def _start_engine(self, entry: ModelEntry) -> Engine:
        engine = self.make_engine(entry)
        try:
            engine.start()
            _ = engine.tokenizer, engine.info  # a backend that failed half-way fails here
        except BaseException:
            try:
                engine.stop(1.0)
            except Exception:  # the load error is the one to report
                log.debug("stopping a failed engine", exc_info=True)
            raise
        return engine

    def _fail(self, m: ManagedModel, cause: str) -> None:
        m.status, m.error, m.reserved = "failed", cause, False
        m.failed_at = time.monotonic()
        m.load_failures += 1
        log.error("model %r failed to load: %s", m.id, cause)

    async def _make_room(self, m: ManagedModel) -> None:
        need = m.need_bytes or 0
        deadline = time.monotonic() + self.load_timeout
        while True:
            residents = [
                Resident(
                    o.id,
                    o.need_bytes or 0,
                    o.entry.pinned,
                    o.status != "loaded" or o.in_flight(),
                    o.last_used_mono,
                )
                for o in self.models.values()
                if o is not m and o.reserved
            ]
            plan = plan_eviction(residents, need, self.budget, self.max_models)
            if plan.impossible:
                raise ModelLoadError(plan.impossible)
            if plan.ok and not plan.victims:
                return
            if plan.ok:
                for vid in plan.victims:
                    victim = self.models[vid]
                    await asyncio.shield(self._begin_unload(victim, f"evicted for {m.id!r}"))
                continue
            if time.monotonic() > deadline:
                busy = ", ".join(repr(r.id) for r in residents if r.busy and not r.pinned)
                raise ServiceUnavailableError(
                    f"no room for model {m.id!r}: models {busy} stayed busy for {self.load_timeout:g}s",
                    retry_after=5.0,
                )
            await asyncio.sleep(POLL)

    def _begin_unload(self, m: ManagedModel, why: str, wait: float = 0.0) -> asyncio.Task[None]:
        m.status = "unloading"  # from now on requests for it wait for this task, then load it again
        m.task = asyncio.create_task(self._unload(m, why, wait), name=f"unload {m.id}")
        m.task.add_done_callback(lambda t: _clear(m, t))
        return m.task

    async def _unload(self, m: ManagedModel, why: str, wait: float) -> None:
        deadline = time.monotonic() + wait
        while m.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(POLL)
        engine = m.engine
        m.engine, m.state, m.servings = None, None, {}
        if engine is not None:
            await asyncio.to_thread(engine.stop, self.stop_timeout)
        m.reserved, m.status = False, "unloaded"
        m.unloads += 1
        log.info("model %r unloaded (%s)", m.id, why)

    async def _ttl_loop(self) -> None:
        ttls = [m.entry.ttl for m in self.models.values() if m.entry.ttl]
        tick = min(1.0, max(0.05, min(ttls) / 4)) if ttls else 1.0
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for m in self.models.values():
                if m.status != "loaded" or m.task is not None:
                    continue
                if m.in_flight():
                    m.touch()  # a long stream keeps its model fresh
                elif m.entry.ttl and not m.entry.pinned and now - m.last_used_mono >= m.entry.ttl:
                    self._begin_unload(m, f"idle for {m.entry.ttl:g}s (ttl)")

    # -- views --------------------------------------------------------------------------------------
    def states(self) -> list[ServerState]:
        """The per-model states of the loaded models (shutdown ends their streams)."""
        return [m.state for m in self.models.values() if m.state is not None]

    def total_stats(self) -> EngineStats:
        """The counters of every loaded engine, summed (the unlabelled engine metrics)."""
        total = EngineStats()
        for m in self.models.values():
            if m.engine is not None and m.engine.ready:
                total = total.plus(m.engine.stats())
        return total

    def used_bytes(self) -> int:
        """Bytes the loaded and loading models take by the plan."""
        return sum(m.need_bytes or 0 for m in self.models.values() if m.reserved)


def _clear(m: ManagedModel, task: asyncio.Task[None]) -> None:
    if m.task is task:
        m.task = None


def _cause(exc: BaseException) -> str:
    if isinstance(exc, HaloError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"

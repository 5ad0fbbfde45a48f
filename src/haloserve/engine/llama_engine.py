"""The embedded llama.cpp engine: continuous batching over one shared context, in its own thread.

The engine owns the lifecycle (load, start, stop), the queue limit and the compute thread; each round
of that thread is one :meth:`Scheduler.step <haloserve.engine.scheduler.Scheduler.step>` over a
:class:`~haloserve.engine.backend.Backend` (llama.cpp's, unless another is passed in), whose outputs go
to the event loops in one call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from haloserve.config.serve import ServeSettings
from haloserve.engine.backend import Backend
from haloserve.engine.base import EngineInfo, EngineStats, GenerationRequest
from haloserve.engine.bridge import RequestStream, deliver
from haloserve.engine.scheduler import Job, Scheduler
from haloserve.engine.stepcost import clock, name_os_thread
from haloserve.errors import QueueFullError, ServiceUnavailableError

log = logging.getLogger("haloserve.engine")


class LlamaEngine:
    """Continuous-batching engine over llama-cpp-python's low-level API (or any other backend)."""

    def __init__(self, settings: ServeSettings, model_path: Path, backend: Backend | None = None) -> None:
        self.settings = settings
        self.model_path = model_path
        self._backend = backend  # None: llama.cpp's, loaded by start()
        self._sched: Scheduler | None = None
        self._ready = False
        self._stopping = False
        self._inbox: deque[Job] = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._n_submitted = 0
        self._stats = EngineStats()
        self._masker: ThreadPoolExecutor | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def info(self) -> EngineInfo:
        """Static facts about the model and context."""
        if self._sched is None:
            raise ServiceUnavailableError("the model is still loading")
        return self._sched.backend.info

    @property
    def tokenizer(self) -> Any:
        """The model (it tokenises and detokenises)."""
        if self._sched is None:
            raise ServiceUnavailableError("the model is still loading")
        return self._sched.backend.tokenizer

    @property
    def chat_template(self) -> str | None:
        """The chat template stored in the GGUF."""
        return self._sched.backend.chat_template if self._sched is not None else None

    @property
    def ready(self) -> bool:
        """True when requests can be served."""
        return self._ready and not self._stopping

    def start(self) -> None:
        """Load the model and context, then start the compute thread (blocking)."""
        backend = self._backend
        if backend is None:
            from haloserve.engine.llama_backend import LlamaBackend

            backend = self._backend = LlamaBackend(self.settings, self.model_path)
        self._masker = ThreadPoolExecutor(1, thread_name_prefix="halo-grammar")
        self._sched = Scheduler(
            backend,
            parallel=self.settings.parallel,
            kv_unified=self.settings.kv_unified,
            stats=self._stats,
            masker=self._masker,
        )
        self._thread = threading.Thread(target=self._run, name="halo-engine", daemon=True)
        self._thread.start()
        self._ready = True

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel whatever is still running, stop the thread and free the model."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # pragma: no cover - a decode longer than the timeout
                log.warning("engine thread did not stop within %.1fs", timeout)
                return
        if self._masker is not None:
            self._masker.shutdown(wait=True)
        if self._backend is not None:
            self._backend.close()

    # -- event-loop side -------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> RequestStream:
        """Queue ``request``; raises 503 while loading or stopping and 429 when the queue is full."""
        sched = self._sched
        if not self.ready or sched is None:
            raise ServiceUnavailableError("the server is not ready (loading or shutting down)")
        waiting = self._n_submitted - sched.n_taken
        free = sum(1 for sl in sched.slots if sl.free)
        if waiting - free >= self.settings.max_queue:
            raise QueueFullError(
                f"all {self.settings.parallel} slots are busy and {waiting} requests are waiting "
                f"(--max-queue {self.settings.max_queue}); retry later",
                retry_after=1.0,
            )
        stream = RequestStream(asyncio.get_running_loop(), self._on_cancel)
        job = Job(request, stream)
        stream.job = job
        self._n_submitted += 1
        self._inbox.append(job)
        self._wake.set()
        return stream

    def _on_cancel(self, stream: RequestStream) -> None:
        self._wake.set()

    def stats(self) -> EngineStats:
        """Current counters; gauges computed now."""
        st, sched = self._stats, self._sched
        st.busy_slots = 0 if sched is None else sum(1 for sl in sched.slots if not sl.free)
        st.queue_depth = max(0, self._n_submitted - (0 if sched is None else sched.n_taken))
        # len() of each slot's list is atomic under the GIL; a gauge may be a step old
        st.kv_tokens = 0 if sched is None else sum(len(sl.tokens) for sl in sched.slots)
        if sched is not None:
            c = sched.cost
            ns = {
                "schedule": c.schedule_ns,
                "decode": c.decode_ns,
                "tokens": c.tokens_ns,
                "handoff": c.handoff_ns,
            }
            st.engine_cpu_seconds = {k: v / 1e9 for k, v in ns.items()}
        return st

    # -- compute thread --------------------------------------------------------------------------
    def _run(self) -> None:
        sched = self._sched
        assert sched is not None
        name_os_thread("halo-engine")
        try:
            while not self._stopping:
                if sched.idle and not self._inbox:
                    self._wake.wait(0.5)
                self._wake.clear()
                while self._inbox:
                    sched.submit(self._inbox.popleft())
                outputs = sched.step()
                t0 = clock()
                deliver(outputs)
                sched.cost.handoff_ns += clock() - t0
        except Exception:  # a bug: fail everything rather than hang clients, and stop taking work
            log.exception("engine thread crashed")
            self._ready = False
        finally:
            while self._inbox:
                sched.submit(self._inbox.popleft())
            deliver(sched.fail_all("the server is shutting down" if self._stopping else "engine stopped"))

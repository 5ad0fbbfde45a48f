"""The child-process engine: the llama.cpp engine in a supervised child, for ``halo serve --rpc``.

ggml's RPC client aborts its process when a worker fails mid-compute and cannot forget a registered
worker, so with ``--rpc`` the scheduler and the model live in a spawned child (:mod:`.child`) that the
server can lose and replace. The parent keeps what the server needs synchronously: a vocabulary-only
model (tokenizer, chat template, grammar compilation), the :class:`EngineInfo` the child reported and
its latest stats. Three parent threads: a sender (requests and cancels to the pipe, so the event loop
never blocks on it), a reader (one message per child step, handed to the event loops with
:func:`~haloserve.engine.bridge.deliver`) and a supervisor that checks the workers every second.

When the child dies, every in-flight request ends with an ``error`` output naming the unreachable
worker(s), :attr:`fault` says why the engine is not ready (503 with ``Retry-After``), and once every
worker answers the supervisor starts a new child and serves again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from haloserve.config.serve import ServeSettings
from haloserve.engine.base import EngineInfo, EngineStats, GenerationRequest, Output
from haloserve.engine.bridge import RequestStream, deliver
from haloserve.engine.child import ChildSpec
from haloserve.errors import CommandError, QueueFullError, ServiceUnavailableError

log = logging.getLogger("haloserve.engine")

RETRY_AFTER = 2.0  # seconds a client is told to wait while the engine reloads


class _Child:
    """One child process (``python -m haloserve.engine.child FD``) and its end of a socket pair.

    Not ``multiprocessing``'s spawn: that re-imports the parent's ``__main__`` in the child, which a
    script without a main guard (a benchmark, an embedding application) does not survive. A child that
    outlives us reads the end of file and exits.
    """

    def __init__(self, spec: ChildSpec) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "haloserve.engine.child", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.stats = EngineStats()
        try:
            self.conn.send(list(sys.path))  # the child imports what we import (pytest's rootdir included)
            self.conn.send(spec)
        except OSError:
            pass  # the child died at once: wait_ready reports it

    def wait_ready(self, stop: threading.Event) -> EngineInfo:
        """The child's :class:`EngineInfo` once loaded; :class:`CommandError` if it failed or died."""
        while not stop.is_set():
            if self.conn.poll(0.2):
                try:
                    kind, payload = self.conn.recv()
                except (EOFError, OSError):
                    break
                if kind == "ready":
                    info: EngineInfo = payload
                    return info
                raise CommandError(str(payload))
            if self.process.poll() is not None and not self.conn.poll(0):
                break
        if stop.is_set():
            raise CommandError("stopped while loading")
        raise CommandError(f"the engine process exited with code {self.wait(5)} while loading")

    def wait(self, timeout: float) -> int | None:
        """The exit code, waiting at most ``timeout`` seconds (None: still running)."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self, timeout: float = 5.0) -> int | None:
        """Reap the process (killed after ``timeout``) and close the pipe; returns its exit code."""
        code = self.wait(timeout)
        if code is None:
            self.process.kill()
            code = self.wait(5)
        self.conn.close()
        return code


class ProcessEngine:
    """An :class:`~haloserve.engine.base.Engine` whose scheduler and model run in a supervised child."""

    def __init__(
        self,
        settings: ServeSettings,
        spec: ChildSpec,
        *,
        probe_interval: float = 1.0,
        stall_timeout: float | None = None,
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.probe_interval = probe_interval
        # a worker that hangs (stopped, partitioned) instead of dying blocks the child's compute for good
        self.stall_timeout = settings.rpc_stall_timeout if stall_timeout is None else stall_timeout
        self._heard = time.monotonic()  # when the child last made progress (or work arrived when idle)
        self._kill_reason = ""  # why the supervisor killed the child, if it did
        self._tokenizer: Any = None
        self._template: str | None = None
        self._info: EngineInfo | None = None
        self._child: _Child | None = None
        self._ready = False
        self._fault: str | None = None
        self._stop = threading.Event()
        self._gone = threading.Event()
        self._lock = threading.Lock()
        self._live: dict[int, RequestStream] = {}
        self._ids = itertools.count(1)
        self._outbox: deque[tuple[Any, ...]] = deque()
        self._wake = threading.Event()
        self._base = EngineStats()  # counters of the children that died (counters never go back)
        self._threads: list[threading.Thread] = []
        self.restarts = 0

    # -- Engine ----------------------------------------------------------------------------------
    @property
    def info(self) -> EngineInfo:
        """What the child reported when it loaded."""
        if self._info is None:
            raise ServiceUnavailableError("the model is still loading")
        return self._info

    @property
    def tokenizer(self) -> Any:
        """The parent's vocabulary-only model."""
        if self._tokenizer is None:
            raise ServiceUnavailableError("the model is still loading")
        return self._tokenizer

    @property
    def chat_template(self) -> str | None:
        """The chat template stored in the GGUF."""
        return self._template

    @property
    def ready(self) -> bool:
        """True while a child serves."""
        return self._ready and not self._stop.is_set()

    @property
    def fault(self) -> str | None:
        """Why the engine is not serving after a loss (unreachable workers, a failed reload), else None."""
        return self._fault

    @property
    def child_pid(self) -> int | None:
        """The process id of the serving child (None between children)."""
        child = self._child
        return child.process.pid if child is not None and self._ready else None

    def start(self) -> None:
        """Load the vocabulary here and the model in a child (blocking); raises if the child fails."""
        self._tokenizer, self._template = self.spec.vocab()
        child = _Child(self.spec)
        try:
            self._info = child.wait_ready(self._stop)
        except BaseException:
            child.close(0)
            raise
        self._adopt(child)
        for target, name in ((self._send_loop, "halo-engine-send"), (self._supervise, "halo-engine-watch")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        """Tell the child to end its requests and exit; reap it and the threads."""
        self._stop.set()
        self._wake.set()
        self._gone.set()
        child = self._child
        if child is not None:
            with contextlib.suppress(OSError):  # already gone
                child.conn.send(("stop",))
            child.wait(timeout)
            for t in self._threads:
                if t.name.startswith("halo-engine-read"):
                    t.join(timeout)
            child.close(0)
            self._child = None
        for t in self._threads:
            t.join(timeout)
        if self._tokenizer is not None and hasattr(self._tokenizer, "close"):
            self._tokenizer.close()
        self._fail_live("the server is shutting down")

    def generate(self, request: GenerationRequest) -> RequestStream:
        """Queue ``request`` for the child; 503 while there is none, 429 when the queue is full."""
        if not self.ready:
            raise ServiceUnavailableError(
                self._fault or "the server is not ready (loading or shutting down)", retry_after=RETRY_AFTER
            )
        s = self.settings
        grammar = None
        if request.constraint is not None:
            c: Any = request.constraint
            grammar = (c.grammar, c.param)
            request = replace(request, constraint=None)
        stream = RequestStream(asyncio.get_running_loop(), self._on_cancel)
        with self._lock:  # checked again under the lock: a child lost meanwhile fails what _live holds
            if not self.ready:
                raise ServiceUnavailableError(
                    self._fault or "the engine is reloading", retry_after=RETRY_AFTER
                )
            if len(self._live) - s.parallel >= s.max_queue:
                raise QueueFullError(
                    f"all {s.parallel} slots are busy and {len(self._live) - s.parallel} requests are"
                    f" waiting (--max-queue {s.max_queue}); retry later",
                    retry_after=1.0,
                )
            rid = next(self._ids)
            stream.job = rid
            if not self._live:
                self._heard = time.monotonic()  # an idle child owed us nothing until now
            self._live[rid] = stream
        self._post(("gen", rid, request, grammar))
        return stream

    def stats(self) -> EngineStats:
        """The child's latest counters added to those of earlier children; gauges from the latest."""
        child = self._child
        cur = child.stats if child is not None else EngineStats()
        out = self._base.plus(cur)  # the counters; the gauges are the live child's alone
        out.kv_tokens = cur.kv_tokens if self._ready else 0
        out.busy_slots = cur.busy_slots if self._ready else 0
        out.queue_depth = max(0, len(self._live) - out.busy_slots)
        return out

    # -- parent threads --------------------------------------------------------------------------
    def _post(self, msg: tuple[Any, ...]) -> None:
        self._outbox.append(msg)
        self._wake.set()

    def _on_cancel(self, stream: RequestStream) -> None:
        if self._live.pop(stream.job, None) is not None:
            self._post(("cancel", stream.job))

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            child = self._child
            while self._outbox:
                msg = self._outbox.popleft()
                if child is None or not self._ready:
                    continue  # a request sent to a dead child was failed by _on_gone
                with contextlib.suppress(OSError):  # the child died; the reader reports it
                    child.conn.send(msg)

    def _adopt(self, child: _Child) -> None:
        """Make ``child`` the serving one: start its reader, become ready."""
        self._child = child
        self._gone.clear()
        self._fault = None
        self._ready = True
        t = threading.Thread(target=self._read_loop, args=(child,), name="halo-engine-read", daemon=True)
        t.start()
        self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _read_loop(self, child: _Child) -> None:
        conn, live = child.conn, self._live
        try:
            while True:
                kind, outs, admitted, stats = conn.recv()
                self._heard = time.monotonic()
                if kind != "step":  # pragma: no cover - the protocol has no other message after ready
                    continue
                for rid in admitted:
                    stream = live.get(rid)
                    if stream is not None:
                        stream.admitted = True
                items = []
                for rid, *rest in outs:
                    stream = live.get(rid)
                    if stream is None:
                        continue  # cancelled meanwhile
                    out = Output(*rest)
                    if out.finish_reason is not None:
                        live.pop(rid, None)
                    items.append((stream, out))
                if stats is not None:
                    child.stats = stats
                deliver(items)
        except (EOFError, OSError):
            pass
        if not self._stop.is_set():
            self._on_gone(child)

    def _on_gone(self, child: _Child) -> None:
        """The child died: fail what it held, say why, and let the supervisor reload."""
        with self._lock:
            self._ready = False
        code = child.close(2)
        # the dead child's counters carry over (its gauges too, but stats() reads gauges from the live one)
        self._base = base = self._base.plus(child.stats)
        child.stats = EngineStats()
        down = self.spec.unreachable(handshake=True)
        why = "; ".join(down) or self._kill_reason or f"the engine process exited (code {code})"
        self._kill_reason = ""
        self._fault = f"{why}; reloading the model when every worker answers"
        log.error("engine lost: %s", why)
        n = self._fail_live(f"{why}: the request was lost")
        base.requests_failed += n
        self._gone.set()

    def _fail_live(self, message: str) -> int:
        with self._lock:
            live, self._live = self._live, {}
        self._outbox.clear()
        deliver([(s, Output(finish_reason="error", error=message)) for s in live.values()])
        return len(live)

    def _supervise(self) -> None:
        """Every ``probe_interval``: while serving, check that each worker still listens (a loss shows
        before a request meets it); after a loss, reload once every worker answers."""
        while not self._stop.wait(self.probe_interval):
            if self._ready:
                child = self._child
                down = self.spec.unreachable(handshake=False)
                quiet = time.monotonic() - self._heard
                if not down and self._live and quiet > self.stall_timeout:
                    down = [f"no engine step for {quiet:.0f} s (a worker that hangs?)"]
                if down and child is not None and self._ready:
                    self._kill_reason = "; ".join(down)
                    log.error("%s: restarting the engine", self._kill_reason)
                    child.process.kill()  # the reader sees the pipe close and reports the loss
                continue
            if not self._gone.is_set():
                continue  # the reader has not finished reporting the loss
            down = self.spec.unreachable(handshake=True)
            if down:
                self._fault = f"{'; '.join(down)}; reloading the model when every worker answers"
                continue
            self._reload()

    def _reload(self) -> None:
        t0 = time.monotonic()
        log.warning("every RPC worker answers: reloading the model")
        child = _Child(self.spec)
        try:
            info = child.wait_ready(self._stop)
        except CommandError as exc:
            child.close(0)
            self._fault = f"reload failed: {exc.message}; retrying when every worker answers"
            log.error("%s", self._fault)
            return
        info.extra.setdefault("load", {})["restarts"] = self.restarts + 1
        self._info = info
        self.restarts += 1
        self._adopt(child)
        load = info.extra["load"]
        log.warning(
            "engine reloaded in %.1fs (model load %.1fs, %d bytes sent to the RPC workers): serving again",
            time.monotonic() - t0,
            load.get("seconds", 0.0),
            load.get("bytes_sent", 0),
        )

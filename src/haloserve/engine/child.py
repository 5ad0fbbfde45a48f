"""The child side of the child-process engine (:mod:`haloserve.engine.process`): the scheduler and its
backend in a process of their own, driven by messages on a pipe.

Why a child: ggml's RPC client aborts the whole process when a worker connection fails mid-compute
(``RPC_STATUS_ASSERT`` -> ``GGML_ABORT`` in ggml-rpc.cpp) and registered RPC devices cannot be removed,
so the process that talks to RPC workers must be one the server can lose and replace.

The wire (pickled tuples, one message per scheduler step, not per token):

- parent -> child: ``("gen", rid, request, grammar)`` (``request.constraint`` is None; ``grammar`` is
  ``(lark_text, param)`` or None, rebuilt here), ``("cancel", rid)``, ``("stop",)``;
- child -> parent: ``("ready", info)`` or ``("failed", message)`` once, then
  ``("step", outputs, admitted, stats)`` where each output is a tuple of :class:`Output`'s fields after
  ``rid`` and ``stats`` is an :class:`EngineStats` snapshot at most every 0.2 s (and when going idle).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from haloserve.config.serve import ServeSettings
from haloserve.engine.backend import Backend
from haloserve.engine.base import EngineStats, GenerationRequest, Output
from haloserve.engine.bridge import RequestStream
from haloserve.engine.scheduler import Job, Scheduler

log = logging.getLogger("haloserve.engine")

STATS_EVERY = 0.2  # seconds between stats snapshots sent while busy


class ChildSpec(Protocol):
    """What the child-process engine runs (picklable: it crosses to the spawned child)."""

    @property
    def settings(self) -> ServeSettings:
        """The serve settings (the child reads its log level, slots and KV layout from them)."""
        ...

    def vocab(self) -> tuple[Any, str | None]:
        """Parent side: the tokenizer (with the vocabulary the grammar code reads) and chat template."""
        ...

    def backend(self) -> Backend:
        """Child side: register the workers, load the model and context (blocking)."""
        ...

    def unreachable(self, *, handshake: bool) -> list[str]:
        """Parent side: one description per worker that does not answer (empty: all answer).
        Without ``handshake`` only a TCP connect is tried (a worker serves one client at a time, so a
        worker busy with our child never answers a handshake)."""
        ...


@dataclass(frozen=True)
class LlamaSpec:
    """The llama.cpp engine of ``settings`` with its ``--rpc`` workers (see :class:`ChildSpec`)."""

    settings: ServeSettings
    model_path: Path
    probe_timeout: float = 2.0

    def vocab(self) -> tuple[Any, str | None]:
        """The model loaded vocabulary-only (no weights, no devices): tokenizer and chat template."""
        from haloserve.engine.llamacpp import LlamaModel, ModelParams

        model = LlamaModel(self.model_path, ModelParams(vocab_only=True))
        return model, model.chat_template

    def backend(self) -> Backend:
        """Register the workers with ggml (before the load, so llama.cpp offloads layers to them)."""
        from haloserve.engine import rpc
        from haloserve.engine.devices import list_devices, offload_devices
        from haloserve.engine.llama_backend import LlamaBackend

        names = [n for ep in rpc.parse_endpoints(self.settings.rpc) for n in rpc.rpc_api().add_server(ep)]
        # The device list is passed explicitly, in llama.cpp's own default order. Without it every layer
        # stayed on the CPU: the wheel ships libggml.so and libggml.so.0 as two files, llama_cpp._ggml
        # loads the first by path and libllama links the second, so the workers land in a registry
        # (a second copy of libggml) that llama.cpp's default selection never reads.
        return LlamaBackend(self.settings, self.model_path, offload_devices(names, list_devices()))

    def unreachable(self, *, handshake: bool) -> list[str]:
        """Workers that do not answer, each as ``RPC worker host:port: why``."""
        from haloserve.engine.workers import unreachable

        return unreachable(self.settings.rpc, handshake=handshake, timeout=self.probe_timeout)


class ChildStream:
    """The child's stand-in for a :class:`RequestStream`: what the scheduler reads and sets."""

    __slots__ = ("_admitted", "_sink", "cancelled", "rid")

    def __init__(self, rid: int, sink: list[int]) -> None:
        self.rid = rid
        self.cancelled = False
        self._admitted = False
        self._sink = sink

    @property
    def admitted(self) -> bool:
        """True once the request has a slot."""
        return self._admitted

    @admitted.setter
    def admitted(self, value: bool) -> None:
        if value and not self._admitted:
            self._sink.append(self.rid)  # told to the parent with the step's outputs
        self._admitted = value


def tcp_bytes_sent() -> int:
    """Bytes this process has sent over its TCP connections (its RPC workers'), as the kernel counts
    them (``tcpi_bytes_acked`` of ``TCP_INFO``); 0 where the platform cannot tell."""
    total = 0
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    for name in fds:
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(int(name))) as sock:
                if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 128)
        except OSError:
            continue
        if len(info) >= 128:
            total += max(0, struct.unpack_from("<Q", info, 120)[0] - 1)  # the SYN counts as one byte
    return total


def child_main(conn: Any, spec: ChildSpec) -> None:
    """Entry point of the spawned child: load, say ready, then serve messages until told to stop."""
    # The parent owns the process group's signals: it drains its requests, then stops us by message.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # an abort should not attach gdb first
    level = spec.settings.log_level
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s[child]: %(message)s",
        stream=sys.stderr,
    )
    if level != "debug":
        logging.getLogger("haloserve.llama").setLevel(logging.WARNING)
    t0 = time.monotonic()
    try:
        backend = spec.backend()
    except BaseException as exc:  # reported to the parent, which decides what it means
        conn.send(("failed", getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"))
        return
    info = backend.info
    # what this load cost: with the workers' tensor cache, a reload sends the big tensors' hashes only
    info.extra["load"] = {"seconds": round(time.monotonic() - t0, 3), "bytes_sent": tcp_bytes_sent()}
    conn.send(("ready", info))
    try:
        ChildLoop(conn, spec.settings, backend).run()
    finally:
        backend.close()


class ChildLoop:
    """The scheduler driven by the pipe: read what came, step, send the step's outputs in one message."""

    def __init__(self, conn: Any, settings: ServeSettings, backend: Backend) -> None:
        self.conn = conn
        self.backend = backend
        self.stats = EngineStats()
        self.masker = ThreadPoolExecutor(1, thread_name_prefix="halo-grammar")
        self.compiler = ThreadPoolExecutor(1, thread_name_prefix="halo-compile")
        self.sched = Scheduler(
            backend,
            parallel=settings.parallel,
            kv_unified=settings.kv_unified,
            stats=self.stats,
            masker=self.masker,
        )
        self.streams: dict[int, ChildStream] = {}
        self.admitted: list[int] = []
        self.compiling: list[tuple[Future[Any], Job]] = []
        self.stopping = False
        self._stats_at = 0.0
        self._handlers: dict[str, Callable[..., None]] = {
            "gen": self._gen,
            "cancel": self._cancel,
            "stop": self._stop,
        }

    def run(self) -> None:
        """Serve until ``("stop",)`` or the parent is gone (end of file on the pipe)."""
        conn, sched = self.conn, self.sched
        try:
            while not self.stopping:
                idle = sched.idle
                wait = (0.005 if self.compiling else 0.5) if idle else 0.0
                if conn.poll(wait):
                    self._read()
                if self.compiling:
                    self._admit_compiled()
                if sched.idle:
                    continue
                out = sched.step()
                self._send(out, final=sched.idle)
        except (EOFError, OSError):  # the parent is gone: nobody to serve
            pass
        finally:
            self.masker.shutdown(wait=True)
            self.compiler.shutdown(wait=True)

    def _read(self) -> None:
        conn = self.conn
        while True:
            msg = conn.recv()
            self._handlers[msg[0]](*msg[1:])
            if self.stopping or not conn.poll(0):
                return

    def _gen(self, rid: int, req: GenerationRequest, grammar: tuple[str, str] | None) -> None:
        stream = ChildStream(rid, self.admitted)
        self.streams[rid] = stream
        job = Job(req, cast(RequestStream, stream))
        if grammar is None:
            self.sched.submit(job)
            return
        from haloserve.engine.grammar import rebuild_constraint

        self.compiling.append(
            (self.compiler.submit(rebuild_constraint, *grammar, self.backend.tokenizer), job)
        )

    def _admit_compiled(self) -> None:
        failed: list[tuple[RequestStream, Output]] = []
        for fut, job in [c for c in self.compiling if c[0].done()]:
            self.compiling.remove((fut, job))
            exc = fut.exception()
            if exc is None:
                job.req.constraint = fut.result()
                self.sched.submit(job)
            else:
                failed.append((job.stream, job.output("", None, "error", f"engine error: {exc}")))
        if failed:
            self._send(failed, final=False)

    def _cancel(self, rid: int) -> None:
        stream = self.streams.pop(rid, None)
        if stream is not None:
            stream.cancelled = True

    def _stop(self) -> None:
        self.stopping = True
        for _fut, job in self.compiling:
            job.stream.cancelled = True
        self._send(self.sched.fail_all("the server is shutting down"), final=True)

    def _send(self, out: list[tuple[RequestStream, Output]], *, final: bool) -> None:
        streams = self.streams
        wire = []
        for stream, o in out:
            rid = cast(ChildStream, stream).rid
            if o.finish_reason is not None:
                streams.pop(rid, None)
            wire.append((rid, *astuple_shallow(o)))
        now = time.monotonic()
        stats = None
        if final or now - self._stats_at >= STATS_EVERY:
            self._stats_at = now
            stats = self._snapshot()
        admitted, self.admitted[:] = list(self.admitted), []
        if wire or admitted or stats is not None:
            self.conn.send(("step", wire, admitted, stats))

    def _snapshot(self) -> EngineStats:
        st, sched = self.stats, self.sched
        st.busy_slots = sum(1 for sl in sched.slots if not sl.free)
        st.queue_depth = len(sched.waiting) + len(self.compiling)
        return st  # pickled (copied) by the send


def astuple_shallow(o: Output) -> tuple[Any, ...]:
    """An :class:`Output`'s fields in declaration order (``dataclasses.astuple`` deep-copies; this does
    not), so that ``Output(*t)`` rebuilds it on the other side."""
    return (
        o.text,
        o.token_ids,
        o.finish_reason,
        o.prompt_tokens,
        o.completion_tokens,
        o.cached_tokens,
        o.error,
        o.logprobs,
        o.error_param,
    )


def main(argv: list[str]) -> None:
    """``python -m haloserve.engine.child FD``: the parent's sys.path, then the spec, come on ``FD``."""
    from multiprocessing.connection import Connection

    conn = Connection(int(argv[1]))
    try:
        sys.path[:] = conn.recv()
        spec = conn.recv()
    except (EOFError, OSError):
        return
    child_main(conn, spec)


if __name__ == "__main__":
    main(sys.argv)

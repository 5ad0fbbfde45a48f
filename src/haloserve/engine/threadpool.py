"""ggml's persistent CPU thread pools, attached to a llama.cpp context as llama.cpp's tools attach them."""

from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass
from typing import Any

import llama_cpp as lc

log = logging.getLogger("haloserve.llama")


GGML_MAX_N_THREADS = 512  # ggml.h


class _ThreadpoolParams(ctypes.Structure):
    """ggml.h's ``struct ggml_threadpool_params``."""

    _fields_ = [
        ("cpumask", ctypes.c_bool * GGML_MAX_N_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


@dataclass(frozen=True)
class _ThreadpoolApi:
    init: Any
    new: Any
    free: Any
    attach: Any
    detach: Any


@functools.cache
def _threadpool_api() -> _ThreadpoolApi | None:
    """ggml's CPU threadpool functions, found as llama.cpp's tools find them (through the CPU backend's
    registry, which also works when backends are loaded dynamically); None when this build has none."""
    try:
        from llama_cpp._ggml import libggml

        ggml = libggml
        ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
        ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
        ggml.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
        ggml.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
        ggml.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        ggml.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
        ggml.ggml_threadpool_params_init.argtypes = [ctypes.POINTER(_ThreadpoolParams), ctypes.c_int]
        ggml.ggml_threadpool_params_init.restype = None
        dev = ggml.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
        reg = ggml.ggml_backend_dev_backend_reg(dev) if dev else None
        new = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_threadpool_new") if reg else None
        free = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_threadpool_free") if reg else None
        if not new or not free:
            return None
        llama = lc.llama_cpp._lib
        llama.llama_attach_threadpool.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        llama.llama_attach_threadpool.restype = None
        llama.llama_detach_threadpool.argtypes = [ctypes.c_void_p]
        llama.llama_detach_threadpool.restype = None
    except (ImportError, AttributeError, OSError) as exc:  # an older or unusual build: ggml's own fallback
        log.debug("no ggml threadpool API: %s", exc)
        return None
    return _ThreadpoolApi(
        init=ggml.ggml_threadpool_params_init,
        new=ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_ThreadpoolParams))(new),
        free=ctypes.CFUNCTYPE(None, ctypes.c_void_p)(free),
        attach=llama.llama_attach_threadpool,
        detach=llama.llama_detach_threadpool,
    )


class CpuThreadpools:
    """Persistent CPU worker threads attached to a context, as llama.cpp's tools attach them.

    Without them, llama.cpp built without OpenMP (as haloserve builds it) creates and joins
    ``n_threads - 1`` threads for every graph it computes, that is for every decode step. ``poll``
    is llama-server's ``--poll``: how long idle workers spin for the next graph before they sleep
    (0 no spinning, 50 llama.cpp's default, 100 most).
    """

    def __init__(self, ctx: Any, n_threads: int, n_threads_batch: int, poll: int) -> None:
        self._api = _threadpool_api()
        self._pools: list[int] = []
        self._ctx = ctx
        if self._api is None or n_threads < 1:
            return
        split = n_threads_batch != n_threads  # a second pool for prompt batches; the first one waits paused
        gen = self._new(n_threads, poll, paused=split)
        batch = self._new(n_threads_batch, poll) if split else None
        if gen is None or (split and batch is None):
            self.close()
            return
        self._api.attach(ctx, gen, batch)

    def _new(self, n: int, poll: int, paused: bool = False) -> int | None:
        assert self._api is not None
        params = _ThreadpoolParams()
        self._api.init(ctypes.byref(params), n)
        params.poll = poll
        params.paused = paused
        pool = self._api.new(ctypes.byref(params))
        if not pool:
            log.warning("could not create a CPU threadpool of %d threads; llama.cpp makes one per step", n)
            return None
        self._pools.append(pool)
        return pool

    @property
    def attached(self) -> bool:
        """True when the context computes on these persistent threads."""
        return bool(self._pools)

    def close(self) -> None:
        """Detach from the context and stop the threads (call it before the context is freed)."""
        if self._api is None or not self._pools:
            return
        if self._ctx:
            self._api.detach(self._ctx)
        for pool in self._pools:
            self._api.free(pool)
        self._pools.clear()

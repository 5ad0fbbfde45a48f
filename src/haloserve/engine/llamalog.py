"""llama.cpp's log routed to Python logging, with captures for callers that read what it printed."""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any

import llama_cpp as lc

from haloserve.printable import printable

log = logging.getLogger("haloserve.llama")


class _LogRouter:
    """Routes llama.cpp's log lines to Python logging and lets a caller capture them for a while."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._captures: list[list[str]] = []
        self._partial = ""
        self.init_lines: list[str] = []
        self._cb = lc.llama_log_callback(self._on_log)
        lc.llama_log_set(self._cb, ctypes.c_void_p(0))

    def _on_log(self, level: int, text: bytes, _user: Any) -> None:
        try:
            line = text.decode("utf-8", errors="replace")
        except Exception:  # pragma: no cover - never let a log line raise into C
            return
        with self._lock:
            for cap in self._captures:
                cap.append(line)
        # ggml levels: 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the previous line; lines can
        # quote tensor names and metadata from the file, so controls are shown escaped
        shown = printable(line.rstrip())
        if level == 4:
            log.error("%s", shown)
        elif level == 3:
            log.warning("%s", shown)
        else:
            log.debug("%s", shown)

    def capture(self) -> list[str]:
        """Start capturing log lines into the returned list (stop with :meth:`release`)."""
        cap: list[str] = []
        with self._lock:
            self._captures.append(cap)
        return cap

    def release(self, cap: list[str]) -> None:
        """Stop capturing into ``cap``."""
        with self._lock:
            self._captures = [c for c in self._captures if c is not cap]


_router: _LogRouter | None = None
_init_lock = threading.Lock()


def init_backend() -> _LogRouter:
    """Initialise llama.cpp once per process and route its log.

    The lines ggml prints while its backends initialise (a GPU backend names each device's architecture
    there, e.g. ``Device 0: AMD Radeon Graphics, gfx1151``) are kept in ``init_lines``.
    """
    global _router
    with _init_lock:
        if _router is None:
            router = _LogRouter()  # first, so the backends' start-up lines are routed and kept
            cap = router.capture()
            try:
                lc.llama_backend_init()
                from llama_cpp._ggml import libggml

                libggml.ggml_backend_dev_count()  # the device registry initialises on first use
            except (ImportError, AttributeError, OSError):  # pragma: no cover - an unusual build
                pass
            finally:
                router.release(cap)
            router.init_lines = cap
            _router = router
        return _router

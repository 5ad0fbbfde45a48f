"""Ask llama.cpp itself what it allocates for a GGUF, a context and cache types (``halo plan --verify``).

The model is opened through llama-cpp-python's low-level API and a context is created with the same
``n_ctx``, ``n_seq_max``, cache types, batch sizes and flags the plan assumes. By default the model is
opened with ``no_alloc`` ("only load metadata and simulate memory allocations"): llama.cpp lays out every
buffer and logs its sizes without reading the weights, so checking a 100 GB model takes a second. With
``allocate=True`` the weights are loaded and the buffers really allocated.

llama.cpp reports sizes only in its log (``llama_kv_cache: size = ... MiB``, two decimals), so the
report is parsed from log lines captured through ``llama_log_set``; each figure is exact to 0.005 MiB.
"""

from __future__ import annotations

import ctypes
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haloserve.errors import CommandError, ConfigError
from haloserve.planner.quant import kv_type
from haloserve.units import MiB

_KV_RE = re.compile(
    r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers,\s*(\d+)/\s*(\d+) seqs\), "
    r"K \((\w+)\):\s*([\d.]+) MiB, V \((\w+)\):\s*([\d.]+) MiB"
)
_RS_RE = re.compile(r"llama_memory_recurrent: size =\s*([\d.]+) MiB")
_KV_BUF_RE = re.compile(r"llama_kv_cache:\s+(\S+) KV buffer size =\s*([\d.]+) MiB")
_COMPUTE_RE = re.compile(r"sched_reserve:\s+(\S+) compute buffer size =\s*([\d.]+) MiB")
_CTX_RE = re.compile(r"llama_context: (n_ctx|n_ctx_seq)\s+= (\d+)")
_LOCK = threading.Lock()  # llama.cpp's log callback is process-wide
RESOLUTION = round(0.005 * MiB)  # llama.cpp prints MiB with two decimals


@dataclass(frozen=True)
class KVLine:
    """One ``llama_kv_cache: size = ...`` line (an SWA model logs one per cache)."""

    cells: int
    layers: int
    seqs: int
    streams: int
    k_bytes: int
    v_bytes: int


@dataclass(frozen=True)
class LlamaCppReport:
    """What llama.cpp reported for one context."""

    n_ctx: int
    n_ctx_seq: int
    caches: tuple[KVLine, ...]
    recurrent_bytes: int
    kv_buffer_bytes: int
    compute_buffers: dict[str, int]
    model_bytes: int
    n_params: int
    allocated: bool

    @property
    def kv_bytes(self) -> int:
        """K+V bytes over every KV cache (to 0.005 MiB per cache)."""
        return sum(c.k_bytes + c.v_bytes for c in self.caches)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "n_ctx": self.n_ctx,
            "n_ctx_seq": self.n_ctx_seq,
            "kv_bytes": self.kv_bytes,
            "caches": [c.__dict__ for c in self.caches],
            "recurrent_bytes": self.recurrent_bytes,
            "kv_buffer_bytes": self.kv_buffer_bytes,
            "compute_buffers": dict(self.compute_buffers),
            "model_bytes": self.model_bytes,
            "n_params": self.n_params,
            "allocated": self.allocated,
            "resolution_bytes": RESOLUTION,
        }


def _mib(text: str) -> int:
    return round(float(text) * MiB)


def parse_log(text: str) -> dict[str, Any]:
    """The figures llama.cpp logged while creating a context (pure; exposed for tests)."""
    caches = tuple(
        KVLine(int(m[1]), int(m[2]), int(m[3]), int(m[4]), _mib(m[6]), _mib(m[8]))
        for m in _KV_RE.findall(text)
    )
    ctx = {name: int(value) for name, value in _CTX_RE.findall(text)}
    return {
        "n_ctx": ctx.get("n_ctx", 0),
        "n_ctx_seq": ctx.get("n_ctx_seq", 0),
        "caches": caches,
        "recurrent_bytes": sum(_mib(v) for v in _RS_RE.findall(text)),
        "kv_buffer_bytes": sum(_mib(size) for _, size in _KV_BUF_RE.findall(text)),
        "compute_buffers": {name: _mib(size) for name, size in _COMPUTE_RE.findall(text)},
    }


def probe_llama_cpp(
    path: Path,
    *,
    ctx: int,
    n_seq: int = 1,
    type_k: str = "f16",
    type_v: str | None = None,
    unified: bool = False,
    swa_full: bool = False,
    n_ubatch: int = 512,
    n_batch: int = 2048,
    flash_attn: bool = True,
    allocate: bool = False,
) -> LlamaCppReport:
    """Create a llama.cpp context for ``path`` with these settings and report what llama.cpp allocated.

    Raises :class:`ConfigError` for settings llama.cpp would abort on, :class:`CommandError` if llama.cpp
    cannot load the model or create the context.
    """
    import llama_cpp

    tk, tv = kv_type(type_k), kv_type(type_v or type_k)
    if tv.block_size > 1 and not flash_attn:
        raise ConfigError("a quantised V cache needs flash attention in llama.cpp")
    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def _collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", "replace"))

    with _LOCK:
        llama_cpp.llama_log_set(_collect, ctypes.c_void_p(0))
        model = context = None
        try:
            mp = llama_cpp.llama_model_default_params()
            mp.no_alloc = not allocate
            mp.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
            model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
            if not model:
                raise CommandError(f"llama.cpp could not load {path}: {_last_error(lines)}")
            cp = llama_cpp.llama_context_default_params()
            cp.n_ctx, cp.n_seq_max, cp.n_batch, cp.n_ubatch = ctx, n_seq, n_batch, n_ubatch
            cp.type_k, cp.type_v = tk.type_id, tv.type_id
            cp.kv_unified, cp.swa_full = unified, swa_full
            cp.flash_attn_type = 1 if flash_attn else 0  # LLAMA_FLASH_ATTN_TYPE_ENABLED / _DISABLED
            context = llama_cpp.llama_init_from_model(model, cp)
            if not context:
                raise CommandError(f"llama.cpp could not create the context: {_last_error(lines)}")
            size, params = llama_cpp.llama_model_size(model), llama_cpp.llama_model_n_params(model)
        finally:
            if context:
                llama_cpp.llama_free(context)
            if model:
                llama_cpp.llama_model_free(model)
            _restore_logger(llama_cpp)
    return LlamaCppReport(**parse_log("".join(lines)), model_bytes=size, n_params=params, allocated=allocate)


def _last_error(lines: list[str]) -> str:
    errors = [ln.strip() for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
    return errors[-1] if errors else "no reason given"


def _restore_logger(llama_cpp: Any) -> None:
    """Give the log back to llama-cpp-python's own handler."""
    try:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    except (ImportError, AttributeError):  # pragma: no cover - depends on the llama-cpp-python version
        pass

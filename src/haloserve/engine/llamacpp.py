"""Thin, typed wrappers over llama-cpp-python's low-level (ctypes) API.

Only what the engine needs: loading a model and a context, tokenising, token pieces, the batch used for
``llama_decode`` (with numpy views so filling it costs no Python loop per token), KV-cache sequence
edits, and llama.cpp's log routed to Python logging.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as lc
import numpy as np

from haloserve.errors import CommandError, ConfigError
from haloserve.printable import printable

log = logging.getLogger("haloserve.llama")

# ggml type ids of the KV-cache types llama-server accepts for --cache-type-k/-v.
KV_CACHE_TYPES: dict[str, int] = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
    "iq4_nl": 20,
    "bf16": 30,
}
FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}

_KV_SIZE_RE = re.compile(r"KV buffer size\s*=\s*([0-9.]+)\s*MiB")


def _header_fault(path: Path) -> str | None:
    """Why a GGUF that llama.cpp refused is damaged ("damaged GGUF: ..."), as the planner's reader sees it."""
    from haloserve.planner.gguf_header import read_header

    try:
        read_header(path)
    except ConfigError as exc:
        return exc.message
    return None


class _LogRouter:
    """Routes llama.cpp's log lines to Python logging and lets a caller capture them for a while."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._captures: list[list[str]] = []
        self._partial = ""
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
    """Initialise llama.cpp once per process and route its log."""
    global _router
    with _init_lock:
        if _router is None:
            lc.llama_backend_init()
            _router = _LogRouter()
        return _router


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has Intel AMX (whose llama.cpp kernels segfault on some models: llama.cpp #20824)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    return any(line.startswith("flags") and " amx_int8" in line for line in text.splitlines())


def uses_openmp(maps: Path = Path("/proc/self/maps")) -> bool:
    """Whether the loaded llama.cpp was built with OpenMP (libgomp or LLVM's libomp mapped in)."""
    try:
        text = maps.read_text(errors="replace")
    except OSError:
        return False
    return any(lib in text for lib in ("/libgomp.so", "/libomp.so", "/libiomp5.so"))


def _set_load_mode(params: Any, use_mmap: bool) -> None:
    # llama.cpp replaced the use_mmap flag with a load_mode enum; ctypes silently accepts unknown
    # attributes, so set whichever field this build's struct really has.
    fields = {name for name, *_ in type(params)._fields_}
    if "load_mode" in fields:
        params.load_mode = lc.LLAMA_LOAD_MODE_MMAP if use_mmap else lc.LLAMA_LOAD_MODE_NONE
    elif "use_mmap" in fields:
        params.use_mmap = use_mmap


class LlamaModel:
    """A loaded GGUF model and its vocabulary."""

    def __init__(
        self, path: Path, *, n_gpu_layers: int = -1, use_mmap: bool = True, repack: str = "auto"
    ) -> None:
        init_backend()
        if not path.is_file():
            raise CommandError(f"model file not found: {path}")
        params = lc.llama_model_default_params()
        params.n_gpu_layers = 2**31 - 1 if n_gpu_layers < 0 else n_gpu_layers
        _set_load_mode(params, use_mmap)
        params.use_extra_bufts = repack == "on" or (repack == "auto" and not cpu_has_amx())
        self.path = path
        self.ptr = lc.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            fault = _header_fault(path)
            raise CommandError(
                fault or f"llama.cpp could not load {printable(path)} (not a valid GGUF model?)"
            )
        self.vocab = lc.llama_model_get_vocab(self.ptr)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(lc.llama_model_n_ctx_train(self.ptr))
        self.bos = int(lc.llama_vocab_bos(self.vocab))
        self.eos = int(lc.llama_vocab_eos(self.vocab))
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self.vocab))
        self._pieces: dict[int, bytes] = {}
        self._special_pieces: dict[int, bytes] = {}
        self._buf = ctypes.create_string_buffer(256)
        self.eog_tokens = frozenset(t for t in range(self.n_vocab) if lc.llama_vocab_is_eog(self.vocab, t))
        self.description = self._desc()

    def _desc(self) -> str:
        buf = ctypes.create_string_buffer(256)
        n = lc.llama_model_desc(self.ptr, buf, len(buf))
        return buf.raw[: max(0, n)].decode("utf-8", errors="replace")

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as a string, or None."""
        size = 4096
        while True:
            buf = ctypes.create_string_buffer(size)
            n = lc.llama_model_meta_val_str(self.ptr, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = n + 1

    @property
    def chat_template(self) -> str | None:
        """The default chat template stored in the GGUF, if any."""
        raw = lc.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    @property
    def n_params(self) -> int:
        """Total parameter count."""
        return int(lc.llama_model_n_params(self.ptr))

    @property
    def size_bytes(self) -> int:
        """Total bytes of the model's tensors."""
        return int(lc.llama_model_size(self.ptr))

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        arr = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            arr = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special, parse_special)
        return list(arr[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (cached); control tokens are empty unless ``special``."""
        cache = self._special_pieces if special else self._pieces
        got = cache.get(token)
        if got is None:
            n = lc.llama_token_to_piece(self.vocab, token, self._buf, len(self._buf), 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
                got = buf.raw[:n]
            else:
                got = self._buf.raw[:n]
            cache[token] = got
        return got

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens``, special tokens rendered."""
        return b"".join(self.piece(t, special=True) for t in tokens).decode("utf-8", errors="replace")

    @property
    def bos_text(self) -> str:
        """Text of the BOS token."""
        return self.piece(self.bos, special=True).decode("utf-8", "replace") if self.bos >= 0 else ""

    @property
    def eos_text(self) -> str:
        """Text of the EOS token."""
        return self.piece(self.eos, special=True).decode("utf-8", "replace") if self.eos >= 0 else ""

    def close(self) -> None:
        """Free the model."""
        if self.ptr:
            lc.llama_model_free(self.ptr)
            self.ptr = None


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


@dataclass(slots=True)
class ContextParams:
    """What the context is built with (llama-server's meaning for each)."""

    n_ctx: int
    n_seq_max: int
    n_batch: int = 2048
    n_ubatch: int = 512
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: str = "auto"
    n_threads: int = 0
    n_threads_batch: int = 0
    kv_unified: bool = False
    poll: int = 50


class LlamaContext:
    """A llama.cpp context with ``n_seq_max`` sequences sharing a KV cache."""

    def __init__(self, model: LlamaModel, p: ContextParams) -> None:
        params = lc.llama_context_default_params()
        params.n_ctx = p.n_ctx
        params.n_batch = p.n_batch
        params.n_ubatch = min(p.n_ubatch, p.n_batch)
        params.n_seq_max = p.n_seq_max
        params.type_k = KV_CACHE_TYPES[p.type_k]
        params.type_v = KV_CACHE_TYPES[p.type_v]
        params.flash_attn_type = FLASH_ATTN[p.flash_attn]
        if p.n_threads > 0:
            params.n_threads = p.n_threads
        if p.n_threads_batch > 0 or p.n_threads > 0:
            params.n_threads_batch = p.n_threads_batch or p.n_threads
        params.kv_unified = p.kv_unified
        params.no_perf = True
        router = init_backend()
        cap = router.capture()
        try:
            self.ptr = lc.llama_init_from_model(model.ptr, params)
        finally:
            router.release(cap)
        if not self.ptr:
            tail = " ".join(line.strip() for line in cap[-3:])
            raise CommandError(f"llama.cpp could not create the context (n_ctx={p.n_ctx}): {tail}")
        self.model = model
        self.params = p
        self.n_ctx = int(lc.llama_n_ctx(self.ptr))
        self.n_ctx_seq = int(lc.llama_n_ctx_seq(self.ptr))
        self.n_batch = int(lc.llama_n_batch(self.ptr))
        self.n_ubatch = int(lc.llama_n_ubatch(self.ptr))
        self.n_threads = int(lc.llama_n_threads(self.ptr))
        self.threadpools = CpuThreadpools(
            self.ptr, self.n_threads, int(lc.llama_n_threads_batch(self.ptr)), p.poll
        )
        self.memory = lc.llama_get_memory(self.ptr)
        self.kv_cache_bytes = int(sum(float(m) for line in cap for m in _KV_SIZE_RE.findall(line)) * 2**20)

    def warmup(self, batch: Batch) -> None:
        """An empty run as llama.cpp's tools do at start-up (BOS, EOS), so the first request is not slow."""
        vocab = self.model
        tokens = [t for t in (vocab.bos, vocab.eos) if t >= 0] or [0]
        batch.clear()
        batch.add(tokens, 0, 0, True)
        lc.llama_set_warmup(self.ptr, True)
        try:
            self.decode(batch)
        finally:
            lc.llama_set_warmup(self.ptr, False)
            self.clear()
            lc.llama_synchronize(self.ptr)
            batch.clear()

    def decode(self, batch: Batch) -> int:
        """Run the model on ``batch``; 0 on success (llama.cpp's return code otherwise)."""
        return int(lc.llama_decode(self.ptr, batch.struct))

    def logits(self, idx: int) -> np.ndarray:
        """The logits row at batch index ``idx`` of the last decode, as a writable float32 view."""
        ptr = lc.llama_get_logits_ith(self.ptr, idx)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        """Drop positions [p0, p1) of ``seq`` from the KV cache (-1 means open-ended)."""
        return bool(lc.llama_memory_seq_rm(self.memory, seq, p0, p1))

    def seq_pos_max(self, seq: int) -> int:
        """Largest position held for ``seq`` (-1 when empty)."""
        return int(lc.llama_memory_seq_pos_max(self.memory, seq))

    def clear(self) -> None:
        """Empty the whole KV cache."""
        lc.llama_memory_clear(self.memory, True)

    def close(self) -> None:
        """Free the context."""
        if self.ptr:
            self.threadpools.close()
            lc.llama_free(self.ptr)
            self.ptr = None


class Batch:
    """A reusable ``llama_batch`` (one sequence id per token) with numpy views over its arrays."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._token = np.zeros(capacity, dtype=np.int32)
        self._pos = np.zeros(capacity, dtype=np.int32)
        self._nseq = np.ones(capacity, dtype=np.int32)
        self._seq = np.zeros(capacity, dtype=np.int32)
        self._logits = np.zeros(capacity, dtype=np.int8)
        self._seq_ptrs = (ctypes.POINTER(ctypes.c_int32) * capacity)()
        base = self._seq.ctypes.data
        for i in range(capacity):
            self._seq_ptrs[i] = ctypes.cast(base + 4 * i, ctypes.POINTER(ctypes.c_int32))
        s: Any = lc.llama_batch()
        s.token = self._token.ctypes.data_as(ctypes.POINTER(lc.llama_token))
        s.embd = ctypes.POINTER(ctypes.c_float)()
        s.pos = self._pos.ctypes.data_as(ctypes.POINTER(lc.llama_pos))
        s.n_seq_id = self._nseq.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        s.seq_id = ctypes.cast(self._seq_ptrs, ctypes.POINTER(ctypes.POINTER(lc.llama_seq_id)))
        s.logits = self._logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        s.n_tokens = 0
        self.struct = s
        self.n = 0

    def clear(self) -> None:
        """Empty the batch."""
        self.n = 0
        self.struct.n_tokens = 0

    def add(self, tokens: Sequence[int], pos0: int, seq: int, logits_last: bool) -> int:
        """Append ``tokens`` of ``seq`` at positions pos0...; returns the batch index of the last one."""
        k = len(tokens)
        a, b = self.n, self.n + k
        if b > self.capacity:
            raise ValueError("batch overflow")
        self._token[a:b] = tokens
        self._pos[a:b] = np.arange(pos0, pos0 + k, dtype=np.int32)
        self._seq[a:b] = seq
        self._logits[a:b] = 0
        if logits_last:
            self._logits[b - 1] = 1
        self.n = b
        self.struct.n_tokens = b
        return b - 1

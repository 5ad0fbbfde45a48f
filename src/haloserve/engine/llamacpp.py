"""Thin, typed wrappers over llama-cpp-python's low-level (ctypes) API.

Only what the engine needs: loading a model and a context, tokenising, token pieces, the batch used for
``llama_decode`` (with numpy views so filling it costs no Python loop per token), KV-cache sequence
edits, and llama.cpp's log routed to Python logging.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as lc
import numpy as np

from haloserve.engine.devices import Placement, device_handles, kv_buffers, model_placement
from haloserve.engine.llamalog import init_backend
from haloserve.engine.threadpool import CpuThreadpools
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
ROPE_SCALING = {
    None: lc.LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED,
    "none": lc.LLAMA_ROPE_SCALING_TYPE_NONE,
    "linear": lc.LLAMA_ROPE_SCALING_TYPE_LINEAR,
    "yarn": lc.LLAMA_ROPE_SCALING_TYPE_YARN,
}
SPLIT_MODES = {
    "none": lc.LLAMA_SPLIT_MODE_NONE,
    "layer": lc.LLAMA_SPLIT_MODE_LAYER,
    "row": lc.LLAMA_SPLIT_MODE_ROW,
    "tensor": getattr(lc, "LLAMA_SPLIT_MODE_TENSOR", -1),
}
NUMA = {
    "distribute": lc.GGML_NUMA_STRATEGY_DISTRIBUTE,
    "isolate": lc.GGML_NUMA_STRATEGY_ISOLATE,
    "numactl": lc.GGML_NUMA_STRATEGY_NUMACTL,
}
_LIB: Any = lc.llama_cpp._lib  # the loaded library, for private bindings with other return types
_FREQ_RE = re.compile(r"llama_context: (freq_base|freq_scale)\s*=\s*([0-9.eE+-]+)")


def _header_fault(path: Path) -> str | None:
    """Why a GGUF that llama.cpp refused is damaged ("damaged GGUF: ..."), as the planner's reader sees it."""
    from haloserve.planner.gguf_header import read_header

    try:
        read_header(path)
    except ConfigError as exc:
        return exc.message
    return None


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


def _set_load_mode(params: Any, use_mmap: bool, mlock: bool = False) -> None:
    # llama.cpp replaced the use_mmap/use_mlock flags with a load_mode enum; ctypes silently accepts
    # unknown attributes, so set whichever fields this build's struct really has.
    fields = {name for name, *_ in type(params)._fields_}
    if "load_mode" in fields:
        modes = {
            (True, False): lc.LLAMA_LOAD_MODE_MMAP,
            (False, False): lc.LLAMA_LOAD_MODE_NONE,
            (True, True): lc.LLAMA_LOAD_MODE_MMAP_MLOCK,
            (False, True): lc.LLAMA_LOAD_MODE_MLOCK,
        }
        params.load_mode = modes[(use_mmap, mlock)]
    else:
        params.use_mmap = use_mmap
        params.use_mlock = mlock


@dataclass(slots=True)
class ModelParams:
    """How the model is loaded and split across devices (llama-server's meaning for each)."""

    n_gpu_layers: int = -1
    use_mmap: bool = True
    mlock: bool = False
    repack: str = "auto"
    split_mode: str = "layer"
    main_gpu: int = 0
    tensor_split: tuple[float, ...] = ()
    numa: str | None = None
    vocab_only: bool = False  # the vocabulary and metadata only (a tokenizer beside a child-process engine)
    devices: tuple[str, ...] = ()  # ggml device names to offload to, in order (empty: llama.cpp's choice)


_numa_done = False
_numa_lock = threading.Lock()


def _numa_init(strategy: str | None) -> None:
    # process-wide in ggml and allowed once, before the first model loads (as llama-server does)
    global _numa_done
    with _numa_lock:
        if strategy and not _numa_done:
            lc.llama_numa_init(NUMA[strategy])
            _numa_done = True


class LlamaModel:
    """A loaded GGUF model and its vocabulary."""

    def __init__(self, path: Path, p: ModelParams | None = None) -> None:
        p = p or ModelParams()
        router = init_backend()
        if not path.is_file():
            raise CommandError(f"model file not found: {path}")
        _numa_init(p.numa)
        params = lc.llama_model_default_params()
        params.n_gpu_layers = 2**31 - 1 if p.n_gpu_layers < 0 else p.n_gpu_layers
        _set_load_mode(params, p.use_mmap, p.mlock)
        params.use_extra_bufts = p.repack == "on" or (p.repack == "auto" and not cpu_has_amx())
        params.split_mode = SPLIT_MODES[p.split_mode]
        params.main_gpu = p.main_gpu
        params.vocab_only = p.vocab_only
        if p.devices:
            # a NULL-terminated array of ggml device handles, alive until the load returns
            self._devices = (ctypes.c_void_p * (len(p.devices) + 1))(*device_handles(p.devices), None)
            params.devices = ctypes.cast(self._devices, ctypes.c_void_p)
        # llama.cpp reads llama_max_devices() floats; the array must outlive the load
        self._split = (ctypes.c_float * max(1, int(lc.llama_max_devices())))(*p.tensor_split)
        if p.tensor_split:
            params.tensor_split = ctypes.cast(self._split, ctypes.POINTER(ctypes.c_float))
        self.path = path
        self.params = p
        cap = router.capture()
        try:
            self.ptr = lc.llama_model_load_from_file(str(path).encode(), params)
        finally:
            router.release(cap)
        if not self.ptr:
            fault = _header_fault(path)
            raise CommandError(
                fault or f"llama.cpp could not load {printable(path)} (not a valid GGUF model?)"
            )
        self.placement: Placement = model_placement(cap)
        # the llguidance tokenizer built from this vocabulary (engine/grammar.py), freed with the model
        self.llg_tokenizer: Any = None
        self.llg_lock = threading.Lock()
        self.vocab = lc.llama_model_get_vocab(self.ptr)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(lc.llama_model_n_ctx_train(self.ptr))
        self.bos = int(lc.llama_vocab_bos(self.vocab))
        self.eos = int(lc.llama_vocab_eos(self.vocab))
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self.vocab))
        self._pieces: dict[int, bytes] = {}
        self._special_pieces: dict[int, bytes] = {}
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
        """The bytes of one token (cached); control tokens are empty unless ``special``.

        Thread-safe: it is called from the engine thread, the event loop and the grammar thread, and
        ctypes releases the GIL during the call, so each call writes into its own buffer (a shared one
        let a caller read another's bytes). Racing callers compute the same bytes; the cache keeps one.
        """
        cache = self._special_pieces if special else self._pieces
        got = cache.get(token)
        if got is None:
            buf = ctypes.create_string_buffer(64)
            n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
            got = buf.raw[: max(0, n)]
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
        """Free the model (and the llguidance tokenizer that points into its vocabulary)."""
        self.llg_tokenizer = None
        if self.ptr:
            lc.llama_model_free(self.ptr)
            self.ptr = None


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
    rope_scaling: str | None = None
    rope_freq_base: float = 0.0
    rope_freq_scale: float = 0.0
    yarn_orig_ctx: int = 0
    yarn_ext_factor: float = -1.0
    yarn_attn_factor: float = -1.0
    yarn_beta_fast: float = -1.0
    yarn_beta_slow: float = -1.0
    swa_full: bool = True
    offload_kqv: bool = True


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
        params.rope_scaling_type = ROPE_SCALING[p.rope_scaling]
        params.rope_freq_base = p.rope_freq_base
        params.rope_freq_scale = p.rope_freq_scale
        params.yarn_orig_ctx = p.yarn_orig_ctx
        params.yarn_ext_factor = p.yarn_ext_factor
        params.yarn_attn_factor = p.yarn_attn_factor
        params.yarn_beta_fast = p.yarn_beta_fast
        params.yarn_beta_slow = p.yarn_beta_slow
        params.swa_full = p.swa_full
        params.offload_kqv = p.offload_kqv
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
        # the row getter returning a plain address, and the row type, bound once (not per token)
        self._row_t = ctypes.c_float * model.n_vocab
        self._logits_ith = _LIB["llama_get_logits_ith"]
        self._logits_ith.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        self._logits_ith.restype = ctypes.c_void_p
        self.kv_buffers = kv_buffers(cap)  # device buffer name -> bytes: where the KV cache lives
        self.kv_cache_bytes = sum(self.kv_buffers.values())
        # the RoPE values llama.cpp settled on (the model's own unless overridden), from its own log
        self.rope = {k: float(v) for line in cap for k, v in _FREQ_RE.findall(line)}

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
        addr = self._logits_ith(self.ptr, idx)
        if not addr:
            raise RuntimeError(f"no logits at batch index {idx}")
        row: Any = self._row_t.from_address(addr)  # a ctypes array over the row: a buffer, no copy
        return np.frombuffer(row, dtype=np.float32)

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

"""Memory llama.cpp allocates for a model: KV cache (exact), recurrent state (exact), compute buffer
(estimate) and runtime overhead (estimate).

The KV arithmetic follows llama.cpp's source (``src/llama-context.cpp``, ``src/llama-kv-cache.cpp``,
``src/llama-kv-cache-iswa.cpp``) step by step, so the figure matches what llama.cpp reports as
``llama_kv_cache: size = ...``:

1. ``n_ctx`` is padded up to a multiple of 256 (``0`` means the model's trained context).
2. With ``n_seq_max`` slots and a non-unified cache (llama-server's default for an explicit ``-np``),
   each slot gets its own stream of ``n_ctx_seq = pad256(n_ctx / n_seq_max)`` cells, and ``n_ctx``
   becomes ``n_ctx_seq x n_seq_max``. A unified cache is one stream of ``n_ctx`` cells shared by all.
3. Every layer with a KV cache stores one K row and one V row per cell and stream, each
   ``ggml_row_size(type, n_head_kv x head_dim)`` bytes.
4. Sliding-window layers get their own, smaller cache of
   ``pad256(min(n_ctx_seq, n_swa x (n_seq_max if unified else 1) + n_ubatch))`` cells per stream,
   unless ``--swa-full`` asks for full-size SWA caches.
5. Recurrent layers (hybrid models) keep a fixed F32 state per sequence instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from haloserve.errors import ConfigError
from haloserve.planner.quant import GGML_TYPES, kv_type
from haloserve.planner.spec import F32_BYTES, ModelSpec
from haloserve.units import GiB

CTX_PAD = 256  # llama-context.cpp: cparams.n_ctx = GGML_PAD(cparams.n_ctx, 256)
DEFAULT_UBATCH = 512  # llama.cpp default physical batch (common.h n_ubatch)
DEFAULT_BATCH = 2048  # llama.cpp default logical batch (common.h n_batch)
DEFAULT_OVERHEAD = GiB  # see runtime_overhead_bytes()
F16_BYTES = 2


def pad(n: int, multiple: int = CTX_PAD) -> int:
    """``n`` rounded up to a multiple of ``multiple`` (ggml's ``GGML_PAD``)."""
    return (n + multiple - 1) // multiple * multiple


@dataclass(frozen=True)
class ContextLayout:
    """How llama.cpp lays out the KV cache for a requested context and number of slots."""

    n_ctx: int
    n_ctx_seq: int
    n_seq: int
    n_stream: int
    kv_size: int
    swa_size: int
    n_ubatch: int


def context_layout(
    ctx: int,
    n_seq: int = 1,
    *,
    unified: bool = False,
    n_swa: int = 0,
    n_ubatch: int = DEFAULT_UBATCH,
    n_batch: int = DEFAULT_BATCH,
    swa_full: bool = False,
) -> ContextLayout:
    """Padded context, per-slot context and cache sizes llama.cpp uses for ``ctx`` over ``n_seq`` slots."""
    if ctx <= 0:
        raise ConfigError(f"context must be a positive number of tokens (got {ctx})")
    if n_seq <= 0:
        raise ConfigError(f"parallel slots must be at least 1 (got {n_seq})")
    if n_ubatch <= 0 or n_batch <= 0:
        raise ConfigError("batch sizes must be positive")
    ubatch = min(ctx, n_batch, n_ubatch)  # causal models: n_batch <= n_ctx, n_ubatch <= n_batch
    n_ctx = pad(ctx)
    if unified:
        n_ctx_seq, n_stream = n_ctx, 1
    else:
        n_ctx_seq = pad(n_ctx // n_seq)
        n_ctx, n_stream = n_ctx_seq * n_seq, n_seq
    swa_size = 0
    if n_swa > 0:
        swa_size = n_ctx_seq if swa_full else pad(min(n_ctx_seq, n_swa * (n_seq if unified else 1) + ubatch))
    return ContextLayout(n_ctx, n_ctx_seq, n_seq, n_stream, n_ctx_seq, swa_size, ubatch)


@dataclass(frozen=True)
class KVCache:
    """KV cache bytes split by tensor kind and by full / sliding-window layers."""

    k_bytes: int
    v_bytes: int
    full_bytes: int
    swa_bytes: int
    layout: ContextLayout

    @property
    def total_bytes(self) -> int:
        """K plus V bytes."""
        return self.k_bytes + self.v_bytes


def kv_cache(
    spec: ModelSpec,
    ctx: int,
    n_seq: int = 1,
    type_k: str = "f16",
    type_v: str | None = None,
    *,
    unified: bool = False,
    swa_full: bool = False,
    n_ubatch: int = DEFAULT_UBATCH,
    n_batch: int = DEFAULT_BATCH,
) -> KVCache:
    """The KV cache llama.cpp allocates for ``spec`` (see the module docstring for each step)."""
    tk, tv = kv_type(type_k), kv_type(type_v or type_k)
    layout = context_layout(
        ctx,
        n_seq,
        unified=unified,
        n_swa=spec.sliding_window,
        n_ubatch=n_ubatch,
        n_batch=n_batch,
        swa_full=swa_full,
    )
    k_bytes = v_bytes = full = swa = 0
    for il in spec.kv_layers():
        cells = (layout.swa_size if spec.is_swa(il) else layout.kv_size) * layout.n_stream
        k = tk.row_bytes(spec.n_embd_k_gqa(il)) * cells
        v = tv.row_bytes(spec.n_embd_v_gqa(il)) * cells
        k_bytes += k
        v_bytes += v
        if spec.is_swa(il):
            swa += k + v
        else:
            full += k + v
    return KVCache(k_bytes, v_bytes, full, swa, layout)


def kv_layer_bytes(
    spec: ModelSpec, layout: ContextLayout, type_k: str = "f16", type_v: str | None = None
) -> list[int]:
    """K+V bytes of every layer (0 for layers without a KV cache) under ``layout``."""
    tk, tv = kv_type(type_k), kv_type(type_v or type_k)
    out = [0] * spec.n_layer
    for il in spec.kv_layers():
        cells = (layout.swa_size if spec.is_swa(il) else layout.kv_size) * layout.n_stream
        out[il] = (tk.row_bytes(spec.n_embd_k_gqa(il)) + tv.row_bytes(spec.n_embd_v_gqa(il))) * cells
    return out


def kv_cache_bytes(
    spec: ModelSpec,
    ctx: int,
    n_seq: int = 1,
    type_k: str = "f16",
    type_v: str | None = None,
    *,
    unified: bool = False,
    swa_full: bool = False,
    n_ubatch: int = DEFAULT_UBATCH,
) -> int:
    """Total KV cache bytes; a shortcut for ``kv_cache(...).total_bytes`` with the same arguments."""
    cache = kv_cache(spec, ctx, n_seq, type_k, type_v, unified=unified, swa_full=swa_full, n_ubatch=n_ubatch)
    return cache.total_bytes


def kv_bytes_per_token(spec: ModelSpec, type_k: str = "f16", type_v: str | None = None) -> int:
    """K+V bytes one token adds in every full-attention layer (sliding layers stop growing at the window)."""
    tk, tv = kv_type(type_k), kv_type(type_v or type_k)
    return sum(
        tk.row_bytes(spec.n_embd_k_gqa(il)) + tv.row_bytes(spec.n_embd_v_gqa(il))
        for il in spec.kv_layers()
        if not spec.is_swa(il)
    )


def kv_read_bytes(spec: ModelSpec, position: int, type_k: str = "f16", type_v: str | None = None) -> int:
    """KV bytes one decode step reads at ``position`` tokens of context (SWA layers read their window)."""
    tk, tv = kv_type(type_k), kv_type(type_v or type_k)
    total = 0
    for il in spec.kv_layers():
        cells = min(position, spec.sliding_window) if spec.is_swa(il) else position
        total += cells * (tk.row_bytes(spec.n_embd_k_gqa(il)) + tv.row_bytes(spec.n_embd_v_gqa(il)))
    return total


def recurrent_state_bytes(spec: ModelSpec, n_seq: int = 1) -> int:
    """F32 recurrent state of hybrid/recurrent models: one copy per sequence (``max(1, n_seq_max)``)."""
    return spec.recurrent.bytes_per_sequence() * max(1, n_seq) if spec.recurrent else 0


def compute_buffer_bytes(
    spec: ModelSpec,
    layout: ContextLayout,
    type_k: str = "f16",
    type_v: str | None = None,
    *,
    flash_attn: bool = True,
    backend: str = "rocm",
) -> int:
    """Estimated GPU compute buffer: the peak of llama.cpp's worst-case graph (an estimate, not exact).

    llama.cpp reserves the graph of one ``n_ubatch`` prompt batch with all its outputs. ggml-alloc reuses
    memory between stages, so the buffer is about the largest stage plus the residual stream:

    * output stage: logits, ``n_vocab x n_ubatch`` F32;
    * FFN stage: gate/up/activation, ``3 x n_ff x n_ubatch`` F32 (MoE: for the selected experts);
    * attention stage: with flash attention the F16 mask (``n_kv x n_ubatch``), and on ROCm/CUDA an F16
      copy of a layer's whole K and V when they are quantised (``ggml-cuda/fattn.cu``,
      ``ggml_cuda_flash_attn_ext_get_alloc_size``); without flash attention the F32 ``KQ`` scores
      (``n_kv x n_ubatch x n_head``) and F32 mask.

    ``backend="cpu"`` leaves out the ROCm/CUDA staging copies; the tests compare that variant with the
    compute buffer llama.cpp's CPU backend reports. The ROCm terms come from the ggml-cuda source.
    """
    ub = layout.n_ubatch
    residual = 2 * spec.n_embd * ub * F32_BYTES
    output = spec.n_vocab * ub * F32_BYTES
    if spec.is_moe:
        ffn = 3 * ub * (spec.n_expert_used * spec.n_ff_exp + spec.n_ff_shexp) * F32_BYTES
        ffn += ub * spec.n_expert * F32_BYTES  # router logits
    else:
        ffn = 3 * ub * spec.n_ff * F32_BYTES
    n_kv = layout.kv_size
    qkv = ub * (spec.n_head + 2 * max(spec.n_head_kv)) * spec.head_dim_k * F32_BYTES
    if flash_attn:
        attn = qkv + n_kv * ub * F16_BYTES
        staged = [
            (type_k, spec.head_dim_k),
            (type_v or type_k, spec.head_dim_v),
        ]
        kv_heads = max(spec.n_head_kv)
        for name, hd in staged:
            if backend != "cpu" and GGML_TYPES[name.lower()].block_size > 1:
                attn += layout.kv_size * layout.n_stream * kv_heads * hd * F16_BYTES
    else:
        attn = qkv + n_kv * ub * spec.n_head * F32_BYTES + n_kv * ub * F32_BYTES
    return residual + max(output, ffn, attn)


def runtime_overhead_bytes(overhead: int = DEFAULT_OVERHEAD) -> int:
    """GPU memory the runtime takes besides llama.cpp's own buffers (an estimate; 1 GiB by default).

    Covers the HIP runtime and loaded code objects, rocBLAS/hipBLASLt workspaces and llama.cpp's device
    memory pool for temporaries. It is not computable from the model; pass a measured value to refine.
    """
    if overhead < 0:
        raise ConfigError("runtime overhead cannot be negative")
    return overhead

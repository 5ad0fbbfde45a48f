"""The KV cache, recurrent state and compute buffer arithmetic, checked against hand computation."""

from __future__ import annotations

import pytest

from haloserve.errors import ConfigError
from haloserve.planner.catalog import lookup
from haloserve.planner.memory import (
    compute_buffer_bytes,
    context_layout,
    kv_bytes_per_token,
    kv_cache,
    kv_cache_bytes,
    kv_layer_bytes,
    kv_read_bytes,
    pad,
    recurrent_state_bytes,
)
from haloserve.planner.spec import ModelSpec, RecurrentState
from haloserve.units import GB

ONE_M = 1_048_576


def dense(n_layer: int = 4, kv: int = 2, hd: int = 64, **kw: object) -> ModelSpec:
    """A small dense spec for arithmetic tests."""
    args: dict[str, object] = dict(
        name="t",
        architecture="llama",
        n_layer=n_layer,
        n_embd=256,
        n_vocab=1000,
        n_head=4,
        n_head_kv=(kv,) * n_layer,
        head_dim_k=hd,
        head_dim_v=hd,
        ctx_train=4096,
        params_total=10_000_000,
        params_embedding=256_000,
        n_ff=512,
    )
    args.update(kw)
    return ModelSpec(**args)  # type: ignore[arg-type]


def test_pad() -> None:
    assert [pad(n) for n in (1, 256, 257, 1000)] == [256, 256, 512, 1024]


def test_layout_single_slot_pads_to_256() -> None:
    lay = context_layout(1000)
    assert (lay.n_ctx, lay.n_ctx_seq, lay.n_stream, lay.kv_size) == (1024, 1024, 1, 1024)


def test_layout_slots_split_the_context_like_llama_server() -> None:
    # llama-context.cpp: n_ctx_seq = pad(n_ctx / n_seq, 256); n_ctx = n_ctx_seq * n_seq
    lay = context_layout(1000, 3)
    assert (lay.n_ctx, lay.n_ctx_seq, lay.n_stream, lay.kv_size) == (1536, 512, 3, 512)
    lay = context_layout(262144, 2)
    assert (lay.n_ctx, lay.n_ctx_seq, lay.n_stream) == (262144, 131072, 2)


def test_layout_unified_is_one_stream_of_the_whole_context() -> None:
    lay = context_layout(1000, 3, unified=True)
    assert (lay.n_ctx, lay.n_ctx_seq, lay.n_stream, lay.kv_size) == (1024, 1024, 1, 1024)


def test_layout_sliding_window_cache_size() -> None:
    # iswa: pad(min(kv_size, n_swa * (n_seq if unified else 1) + n_ubatch), 256)
    assert context_layout(65536, n_swa=1024).swa_size == 1536
    assert context_layout(65536, 4, n_swa=1024).swa_size == 1536
    assert context_layout(65536, 4, unified=True, n_swa=1024).swa_size == 4608
    assert context_layout(1024, n_swa=4096).swa_size == 1024  # never more than the full cache
    assert context_layout(65536, n_swa=1024, swa_full=True).swa_size == 65536
    assert context_layout(65536, n_swa=1024, n_ubatch=2048).swa_size == 3072
    # the physical batch is capped by the context: a 300-token context uses a 300-token ubatch
    assert context_layout(300, n_swa=100).swa_size == 512
    assert context_layout(300, n_swa=100).n_ubatch == 300


@pytest.mark.parametrize(("ctx", "n_seq"), [(0, 1), (-5, 1), (1024, 0)])
def test_layout_rejects_impossible_values(ctx: int, n_seq: int) -> None:
    with pytest.raises(ConfigError):
        context_layout(ctx, n_seq)


@pytest.mark.parametrize(
    ("kind", "row"),
    [
        ("f32", 512),
        ("f16", 256),
        ("bf16", 256),
        ("q8_0", 136),
        ("q5_1", 96),
        ("q5_0", 88),
        ("q4_1", 80),
        ("q4_0", 72),
        ("iq4_nl", 72),
    ],
)
def test_kv_bytes_for_each_type(kind: str, row: int) -> None:
    spec = dense(n_layer=4, kv=2, hd=64)  # 128 values per K row
    cache = kv_cache(spec, 4096, 1, kind)
    assert cache.k_bytes == cache.v_bytes == 4 * 4096 * row
    assert cache.total_bytes == kv_cache_bytes(spec, 4096, 1, kind)


def test_kv_mixed_k_and_v_types() -> None:
    cache = kv_cache(dense(), 4096, 1, "q8_0", "q4_0")
    assert cache.k_bytes == 4 * 4096 * 136 and cache.v_bytes == 4 * 4096 * 72


def test_gqa_kv_scales_with_kv_heads_not_attention_heads() -> None:
    a, b = dense(kv=1), dense(kv=4)
    assert kv_cache_bytes(b, 8192) == 4 * kv_cache_bytes(a, 8192)
    assert kv_cache_bytes(dense(kv=4, n_head=32), 8192) == kv_cache_bytes(b, 8192)


def test_slots_share_the_context() -> None:
    spec = dense()
    assert kv_cache_bytes(spec, 8192, 4) == kv_cache_bytes(spec, 8192, 1)
    # padding per slot: 3 slots of 1000 tokens get 512 cells each, 1536 in total
    assert kv_cache_bytes(spec, 1000, 3) == kv_cache_bytes(spec, 1536, 1)


def test_sliding_window_layers_hold_their_window() -> None:
    flags = (True, True, True, False)
    spec = dense(sliding_window=1024, swa_layers=flags)
    cache = kv_cache(spec, 65536, 1, "f16")
    row = 2 * 128 * 2  # K+V, f16
    assert cache.full_bytes == 1 * 65536 * row
    assert cache.swa_bytes == 3 * 1536 * row
    assert kv_layer_bytes(spec, cache.layout) == [1536 * row] * 3 + [65536 * row]
    assert kv_cache(spec, 65536, 1, "f16", swa_full=True).total_bytes == 4 * 65536 * row


def test_hybrid_layers_without_kv_hold_none() -> None:
    spec = lookup("qwen3-coder-next").spec()
    assert len(spec.kv_layers()) == 12
    assert spec.kv_layers() == [3, 7, 11, 15, 19, 23, 27, 31, 35, 39, 43, 47]
    # 12 layers x 2 KV heads x 256 head dim, f16 K and V
    assert kv_cache_bytes(spec, 262144) == 12 * 262144 * 2 * (2 * 256 * 2)


def test_recurrent_state_is_per_sequence() -> None:
    spec = lookup("qwen3-coder-next").spec()
    state = spec.recurrent
    assert state == RecurrentState(n_layers=36, conv_values=3 * 8192, state_values=128 * 128 * 32)
    per_seq = 36 * (24576 + 524288) * 4
    assert recurrent_state_bytes(spec, 1) == per_seq
    assert recurrent_state_bytes(spec, 3) == 3 * per_seq
    assert recurrent_state_bytes(dense(), 4) == 0


def test_kv_read_per_token_and_per_position() -> None:
    spec = dense(sliding_window=100, swa_layers=(True, False, False, False))
    row = 2 * 128 * 2
    assert kv_bytes_per_token(spec) == 3 * row
    assert kv_read_bytes(spec, 1000) == 3 * 1000 * row + 100 * row
    assert kv_read_bytes(spec, 50) == 4 * 50 * row


# errata 2: 1M tokens of q4_0 KV, decimal GB (the seed said 38.6, 42.9, 25.7, 68.7)
@pytest.mark.parametrize(
    ("model", "gb"), [("qwen3-8b", 43.5), ("qwen3-14b", 48.3), ("qwen3-30b-a3b", 29.0), ("qwen3-32b", 77.3)]
)
def test_seed_errata_kv_sizes_at_one_million_tokens(model: str, gb: float) -> None:
    spec = lookup(model).spec()
    assert round(kv_cache_bytes(spec, ONE_M, 1, "q4_0") / GB, 1) == gb
    # the seed's own formula with 0.5 byte per value is 12.5 % lower
    seed = 2 * spec.n_layer * max(spec.n_head_kv) * 128 * ONE_M * 0.5
    assert kv_cache_bytes(spec, ONE_M, 1, "q4_0") == pytest.approx(seed * 1.125)


def test_compute_buffer_output_stage_dominates_small_contexts() -> None:
    spec = dense(n_vocab=50_000)
    lay = context_layout(4096)
    expected = 50_000 * 512 * 4 + 2 * 256 * 512 * 4
    assert compute_buffer_bytes(spec, lay) == expected


def test_compute_buffer_grows_with_context_without_flash_attention() -> None:
    spec = dense(n_vocab=1000)
    small = compute_buffer_bytes(spec, context_layout(4096), flash_attn=False)
    large = compute_buffer_bytes(spec, context_layout(65536), flash_attn=False)
    # KQ scores n_kv x n_ubatch x n_head F32 plus the F32 mask
    assert large - small == (65536 - 4096) * 512 * (4 + 1) * 4


def test_compute_buffer_stages_quantised_kv_on_rocm_only() -> None:
    spec = dense(n_vocab=1000)
    lay = context_layout(131072, 2)
    rocm = compute_buffer_bytes(spec, lay, "q8_0", backend="rocm")
    cpu = compute_buffer_bytes(spec, lay, "q8_0", backend="cpu")
    assert rocm - cpu == 2 * 131072 * 128 * 2  # F16 copies of K and V (2 heads x 64), both streams
    assert compute_buffer_bytes(spec, lay, "f16", backend="rocm") == cpu

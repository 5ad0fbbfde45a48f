"""The planner against llama.cpp itself: the KV cache llama.cpp allocates must match within 1 %.

The bundled model is loaded for real and the context really allocated; the synthetic GGUFs (sliding
window, MoE) are opened with ``no_alloc``, where llama.cpp lays out the same buffers without memory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from haloserve.planner.gguf_source import read_gguf
from haloserve.planner.llama_probe import RESOLUTION, parse_log, probe_llama_cpp
from haloserve.planner.memory import compute_buffer_bytes, kv_cache
from tests.plan.plan_ggufs import Shape, write_model


@pytest.mark.model
@pytest.mark.parametrize("ctx", [2048, 8192])
@pytest.mark.parametrize("cache_type", ["f16", "q8_0"])
def test_bundled_model_kv_matches_llama_cpp(model_path: Path, ctx: int, cache_type: str) -> None:
    spec, _ = read_gguf(model_path)
    report = probe_llama_cpp(model_path, ctx=ctx, type_k=cache_type, allocate=True)
    planned = kv_cache(spec, ctx, 1, cache_type)
    assert report.allocated and report.n_ctx == planned.layout.n_ctx
    assert abs(report.kv_bytes - planned.total_bytes) <= 0.01 * planned.total_bytes
    # tighter: each logged figure is rounded to 0.005 MiB, and the buffer really allocated is the same
    assert abs(report.kv_bytes - planned.total_bytes) <= 2 * RESOLUTION
    assert abs(report.kv_buffer_bytes - planned.total_bytes) <= RESOLUTION + 64 * spec.n_layer * 2
    assert [(c.cells, c.layers) for c in report.caches] == [(planned.layout.kv_size, spec.n_layer)]


@pytest.mark.model
def test_bundled_model_slots_and_weights_match_llama_cpp(model_path: Path) -> None:
    spec, weights = read_gguf(model_path)
    report = probe_llama_cpp(model_path, ctx=1000, n_seq=3, type_k="q4_0", type_v="q8_0")
    planned = kv_cache(spec, 1000, 3, "q4_0", "q8_0")
    assert (report.n_ctx, report.n_ctx_seq) == (1536, 512) == (planned.layout.n_ctx, planned.layout.n_ctx_seq)
    assert report.caches[0].streams == 3
    assert abs(report.caches[0].k_bytes - planned.k_bytes) <= RESOLUTION
    assert abs(report.caches[0].v_bytes - planned.v_bytes) <= RESOLUTION
    assert report.model_bytes == weights.total_bytes
    assert report.n_params == spec.params_total


@pytest.mark.model
def test_bundled_model_compute_buffer_estimate(model_path: Path) -> None:
    spec, _ = read_gguf(model_path)
    for ctx, flash in ((4096, True), (16384, True), (16384, False)):
        report = probe_llama_cpp(model_path, ctx=ctx, flash_attn=flash)
        planned = compute_buffer_bytes(spec, kv_cache(spec, ctx).layout, flash_attn=flash, backend="cpu")
        assert planned == pytest.approx(report.compute_buffers["CPU"], rel=0.02), (ctx, flash)


SWA_SHAPE = Shape(arch="gemma3", n_layer=12, n_head=4, n_kv=2, head_dim=64, swa=1024)
MOE_SHAPE = Shape(arch="qwen3moe", n_layer=6, n_kv=4, head_dim=32, experts=(8, 2, 32))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ggufs")
    paths = {}
    for name, shape in (("swa", SWA_SHAPE), ("moe", MOE_SHAPE)):
        paths[name] = root / f"{name}.gguf"
        write_model(paths[name], shape)
    return paths


@pytest.mark.parametrize(
    ("ctx", "n_seq", "unified", "swa_full", "cache_type"),
    [
        (65536, 1, False, False, "f16"),
        (65536, 1, False, False, "q4_0"),
        (100_000, 3, False, False, "q8_0"),
        (100_000, 3, True, False, "q8_0"),
        (30_000, 2, False, True, "q5_1"),
    ],
)
@pytest.mark.model
def test_sliding_window_model_matches_llama_cpp(
    synthetic: dict[str, Path], ctx: int, n_seq: int, unified: bool, swa_full: bool, cache_type: str
) -> None:
    spec, _ = read_gguf(synthetic["swa"])
    assert sum(spec.swa_layers) == 10  # gemma3: 5 sliding layers out of every 6
    report = probe_llama_cpp(
        synthetic["swa"], ctx=ctx, n_seq=n_seq, type_k=cache_type, unified=unified, swa_full=swa_full
    )
    planned = kv_cache(spec, ctx, n_seq, cache_type, unified=unified, swa_full=swa_full)
    lay = planned.layout
    assert [(c.cells, c.layers, c.streams) for c in report.caches] == [
        (lay.kv_size, 2, lay.n_stream),
        (lay.swa_size, 10, lay.n_stream),
    ]
    assert abs(report.kv_bytes - planned.total_bytes) <= 0.01 * planned.total_bytes
    assert abs(report.kv_bytes - planned.total_bytes) <= 4 * RESOLUTION


@pytest.mark.parametrize(
    ("ctx", "n_seq", "unified"), [(32768, 1, False), (50_000, 4, False), (50_000, 4, True)]
)
@pytest.mark.model
def test_moe_model_matches_llama_cpp(synthetic: dict[str, Path], ctx: int, n_seq: int, unified: bool) -> None:
    spec, weights = read_gguf(synthetic["moe"])
    assert spec.is_moe and spec.n_expert_used == 2
    report = probe_llama_cpp(synthetic["moe"], ctx=ctx, n_seq=n_seq, type_k="q8_0", unified=unified)
    planned = kv_cache(spec, ctx, n_seq, "q8_0", unified=unified)
    assert abs(report.kv_bytes - planned.total_bytes) <= 2 * RESOLUTION
    assert report.model_bytes == weights.total_bytes
    assert report.n_params == spec.params_total
    cpu = compute_buffer_bytes(spec, planned.layout, "q8_0", backend="cpu")
    assert cpu == pytest.approx(report.compute_buffers["CPU"], rel=0.05)


def test_parse_log_reads_every_figure() -> None:
    text = (
        "llama_context: n_ctx                 = 1536\n"
        "llama_context: n_ctx_seq             = 512\n"
        "llama_kv_cache:        CPU KV buffer size =    17.93 MiB\n"
        "llama_kv_cache: size =   17.93 MiB (   512 cells,  30 layers,  3/3 seqs), "
        "K (q8_0):    8.96 MiB, V (q8_0):    8.96 MiB\n"
        "llama_memory_recurrent: size =   75.38 MiB (     1 cells,  48 layers,  1 seqs  0 rs_seq), "
        "R (f32):    3.38 MiB, S (f32):   72.00 MiB, P (f32):    0.00 MiB\n"
        "sched_reserve:      ROCm0 compute buffer size =   658.00 MiB\n"
        "sched_reserve:  ROCm_Host compute buffer size =    12.50 MiB\n"
    )
    parsed = parse_log(text)
    assert (parsed["n_ctx"], parsed["n_ctx_seq"]) == (1536, 512)
    assert parsed["caches"][0].cells == 512 and parsed["caches"][0].streams == 3
    assert parsed["caches"][0].k_bytes == round(8.96 * 2**20)
    assert parsed["recurrent_bytes"] == round(75.38 * 2**20)
    assert parsed["compute_buffers"] == {"ROCm0": 658 * 2**20, "ROCm_Host": round(12.5 * 2**20)}

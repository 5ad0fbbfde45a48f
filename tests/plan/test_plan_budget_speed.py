"""Node budget (carve-out + GTT without double counting), TTM recommendation, and speed estimates."""

from __future__ import annotations

import pytest

from haloserve.errors import ConfigError
from haloserve.planner.budget import node_budget, recommend_ttm
from haloserve.planner.catalog import lookup
from haloserve.planner.memory import kv_read_bytes
from haloserve.planner.speed import Hardware, estimate_speed, prompt_flops
from haloserve.planner.weights import estimate_weights
from haloserve.units import GiB, ttm_pages_for_gib


def test_default_budget_is_carveout_plus_half_of_linux_ram() -> None:
    b = node_budget(128 * GiB)
    assert b.os_visible_bytes == int(127.5 * GiB)
    assert b.gtt_limit_bytes == b.os_visible_bytes // 2
    assert b.usable_bytes == GiB // 2 + b.os_visible_bytes // 2
    assert "kernel default" in b.gtt_limit_source and b.notes


def test_raised_ttm_limit_is_capped_by_what_linux_can_spare() -> None:
    b = node_budget(128 * GiB, ttm_pages=32_000_000)  # the seed's 122 GiB
    assert b.gtt_limit_bytes == 32_000_000 * 4096
    assert b.gtt_usable_bytes == int(127.5 * GiB) - 8 * GiB
    assert b.usable_bytes == int(0.5 * GiB) + b.gtt_usable_bytes
    assert any("more than Linux can spare" in n for n in b.notes)


def test_large_carveout_is_not_counted_twice() -> None:
    # 96 GiB carve-out: Linux sees 32 GiB; GTT can only come out of those 32, less the reserve
    b = node_budget(128 * GiB, 96 * GiB, gpu_limit_bytes=117 * GiB)
    assert b.os_visible_bytes == 32 * GiB
    assert b.usable_bytes == 96 * GiB + 24 * GiB
    assert b.usable_bytes < 96 * GiB + 117 * GiB
    assert any("carve-out is hidden from Linux" in n for n in b.notes)


def test_gpu_limit_below_spare_is_used_as_given() -> None:
    b = node_budget(64 * GiB, gpu_limit_bytes=40 * GiB, os_reserve_bytes=4 * GiB)
    assert b.usable_bytes == GiB // 2 + 40 * GiB and not b.notes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ram_bytes": 0}, "--ram must be positive"),
        ({"ram_bytes": 8192 * GiB}, "not a plausible amount"),
        ({"ram_bytes": 64 * GiB, "carveout_bytes": 64 * GiB}, "--carveout"),
        ({"ram_bytes": 64 * GiB, "os_reserve_bytes": 70 * GiB}, "--os-reserve must leave"),
        ({"ram_bytes": 64 * GiB, "gpu_limit_bytes": GiB, "ttm_pages": 100}, "not both"),
        ({"ram_bytes": 64 * GiB, "ttm_pages": 0}, "--ttm-pages must be positive"),
        ({"ram_bytes": 64 * GiB, "ttm_pages": 10**12}, "not a plausible TTM limit"),
        ({"ram_bytes": 64 * GiB, "gpu_limit_bytes": 10**16}, "not a plausible TTM limit"),
    ],
)
def test_budget_rejects_impossible_values(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        node_budget(**kwargs)


def test_ttm_recommendation_uses_4_kib_pages() -> None:
    rec = recommend_ttm(node_budget(128 * GiB))
    assert rec.target_bytes == int(119.5 * GiB)
    assert rec.pages_limit == ttm_pages_for_gib(119.5) == 31_326_208
    assert rec.page_pool_size == rec.pages_limit
    assert "ttm.pages_limit=31326208 ttm.page_pool_size=31326208" in rec.grub_line
    assert rec.modprobe_line == "options ttm pages_limit=31326208 page_pool_size=31326208"
    # errata 1: 120 GiB is 31,457,280 pages (not the seed's 30,720,000)
    assert recommend_ttm(node_budget(128 * GiB), 120 * GiB).pages_limit == 31_457_280


def test_decode_ceiling_is_bandwidth_over_bytes_per_token() -> None:
    spec = lookup("llama-3.1-8b").spec()
    w = estimate_weights(spec, "Q4_0")
    sp = estimate_speed(spec, w, 8192, hardware=Hardware())
    per_token = w.decode_bytes + kv_read_bytes(spec, 8192)
    assert sp.decode_bytes_per_token == per_token
    assert sp.decode_tokens_per_s_ceiling == pytest.approx(256e9 / per_token)
    assert sp.decode_tokens_per_s_realistic == pytest.approx(215e9 * 0.85 / per_token)
    assert sp.decode_tokens_per_s_ceiling_empty == pytest.approx(256e9 / w.decode_bytes)
    assert sp.decode_tokens_per_s_realistic < sp.decode_tokens_per_s_ceiling


def test_moe_decode_reads_only_active_experts() -> None:
    spec = lookup("qwen3-30b-a3b").spec()
    w = estimate_weights(spec, "Q4_K_M")
    assert w.read_bytes(1, spec) == w.decode_bytes < w.gpu_bytes / 5
    # a batch touches more experts, never more than all of them
    assert w.read_bytes(1, spec) < w.read_bytes(4, spec) < w.read_bytes(1000, spec) <= w.gpu_bytes + 1
    frac = 8 / 128
    shared = w.decode_bytes - w.expert_bytes * frac
    assert w.read_bytes(2, spec) == pytest.approx(shared + w.expert_bytes * (1 - (1 - frac) ** 2))
    sp = estimate_speed(spec, w, 4096, slots=4)
    assert sp.aggregate_tokens_per_s_ceiling > sp.decode_tokens_per_s_ceiling


def test_prefill_flops_include_causal_attention() -> None:
    spec = lookup("qwen3-8b").spec()
    per_cell = 2 * 32 * (128 + 128)
    assert prompt_flops(spec, 1) == 2 * spec.params_active
    assert prompt_flops(spec, 100) == 2 * spec.params_active * 100 + 36 * per_cell * 100 * 99 / 2
    sp = estimate_speed(spec, estimate_weights(spec, "Q4_K_M"), 32768)
    assert sp.prefill_tokens_per_s_realistic == pytest.approx(0.25 * sp.prefill_tokens_per_s_ceiling)
    assert sp.full_prompt_seconds_realistic == pytest.approx(prompt_flops(spec, 32768) / (59.4e12 * 0.25))


def test_sliding_window_layers_read_only_their_window() -> None:
    spec = lookup("gpt-oss-20b").spec()
    long, short = kv_read_bytes(spec, 100_000), kv_read_bytes(spec, 128)
    per_layer_token = 2 * 8 * 64 * 2
    assert long == 12 * 100_000 * per_layer_token + 12 * 128 * per_layer_token
    assert short == 24 * 128 * per_layer_token


@pytest.mark.parametrize(
    "kwargs",
    [{"bandwidth_peak": 0}, {"bandwidth_achievable": 300e9}, {"decode_efficiency_moe": 1.5}],
)
def test_hardware_rejects_impossible_figures(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Hardware(**kwargs)

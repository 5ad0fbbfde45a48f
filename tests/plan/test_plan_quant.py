"""ggml block sizes, KV cache types and whole-file bits per weight."""

from __future__ import annotations

import gguf
import pytest

from haloserve.errors import ConfigError
from haloserve.planner.quant import (
    FILE_QUANTS,
    GGML_TYPES,
    KV_CACHE_TYPES,
    KV_QUALITY_LADDER,
    file_quant,
    kv_type,
)


def test_every_type_matches_the_gguf_package_table() -> None:
    for t in GGML_TYPES.values():
        qtype = gguf.GGMLQuantizationType(t.type_id)
        assert qtype.name.lower() == t.name
        assert gguf.GGML_QUANT_SIZES[qtype] == (t.block_size, t.type_size)


@pytest.mark.parametrize(
    ("name", "bytes_per_value"),
    [
        ("f32", 4.0),
        ("f16", 2.0),
        ("bf16", 2.0),
        ("q8_0", 34 / 32),
        ("q4_0", 18 / 32),
        ("q4_1", 20 / 32),
        ("q5_0", 22 / 32),
        ("q5_1", 24 / 32),
        ("iq4_nl", 18 / 32),
    ],
)
def test_kv_cache_types_have_ggml_block_sizes(name: str, bytes_per_value: float) -> None:
    assert name in KV_CACHE_TYPES
    assert kv_type(name).bytes_per_value == bytes_per_value
    assert kv_type(name.upper()).name == name


def test_row_bytes_need_whole_blocks() -> None:
    assert kv_type("q8_0").row_bytes(128) == 4 * 34
    assert kv_type("f16").row_bytes(100) == 200
    with pytest.raises(ConfigError, match="blocks of 32"):
        kv_type("q4_0").row_bytes(100)


def test_unknown_kv_type_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown KV cache type 'q3_k'.*q8_0"):
        kv_type("q3_k")


def test_quality_ladder_is_ordered_by_size() -> None:
    sizes = [kv_type(n).bytes_per_value for n in KV_QUALITY_LADDER]
    assert sizes == sorted(sizes, reverse=True)
    assert set(KV_QUALITY_LADDER) <= set(KV_CACHE_TYPES)


def test_file_quants_from_block_types_are_exact() -> None:
    assert file_quant("Q4_0").bits_per_weight == 4.5
    assert file_quant("q8_0").bits_per_weight == 8.5
    assert file_quant("IQ4_XS").bits_per_weight == 4.25
    assert file_quant("bf16").bits_per_weight == 16


def test_k_quant_mixes_come_from_llama_cpp_sizes() -> None:
    # quantize.cpp: Q4_K_M is 4.58 GiB for Llama-3-8B (8,030,261,248 parameters)
    q = file_quant("Q4_K_M")
    assert q.bits_per_weight == round(4.58 * 2**30 * 8 / 8_030_261_248, 2) == 4.9
    assert "Llama-3-8B" in q.source
    bits = [FILE_QUANTS[n].bits_per_weight for n in ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")]
    assert bits == sorted(bits)


def test_mxfp4_moe_quantises_only_the_experts() -> None:
    q = file_quant("MXFP4")
    assert q.name == "MXFP4_MOE"
    assert q.expert_bits == 17 * 8 / 32
    assert q.bits_per_weight == 8.5


def test_unknown_quant_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown quantisation 'Q4_X'"):
        file_quant("Q4_X")

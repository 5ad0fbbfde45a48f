"""Specs from config.json files and the built-in catalog (cited configs, counts that match the cards)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haloserve.errors import ConfigError
from haloserve.planner.catalog import load_catalog, lookup
from haloserve.planner.hf_source import count_params, layer_types, load_hf, spec_from_config
from haloserve.planner.weights import estimate_weights

QWEN3_8B = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "vocab_size": 151936,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "sliding_window": None,
    "use_sliding_window": False,
}


def test_dense_config_parameter_count_matches_the_card() -> None:
    total, embedding, experts = count_params(QWEN3_8B)
    assert total == pytest.approx(8.2e9, rel=0.01)  # card: 8.2B
    assert total - 2 * embedding == pytest.approx(6.95e9, rel=0.01)  # card: 6.95B non-embedding
    assert experts == 0


def test_config_dir_with_safetensors_index_uses_exact_total(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_8B))
    index = {"metadata": {"total_size": 16_381_470_720}, "weight_map": {"model.embed_tokens.weight": "a"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    spec = load_hf(tmp_path)
    assert spec.params_total == 16_381_470_720 // 2
    assert any("safetensors.index.json" in n for n in spec.notes)
    assert spec.n_layer == 36 and spec.kv_layers() == list(range(36))
    assert load_hf(tmp_path / "config.json").params_total == spec.params_total


def test_index_of_a_multimodal_or_quantised_checkpoint_is_not_trusted(tmp_path: Path) -> None:
    index = {"metadata": {"total_size": 99}, "weight_map": {"vision_tower.x": "a"}}
    spec = spec_from_config(QWEN3_8B, name="x", source="x", index=index)
    assert spec.params_total == count_params(QWEN3_8B)[0]
    quantised = {**QWEN3_8B, "quantization_config": {"quant_method": "mxfp4"}}
    spec = spec_from_config(quantised, name="x", source="x", index={"metadata": {"total_size": 99}})
    assert spec.params_total == count_params(QWEN3_8B)[0]


def test_layer_types_by_family() -> None:
    assert layer_types({"model_type": "gpt_oss", "sliding_window": 128}, 4) == [
        "sliding_attention",
        "full_attention",
        "sliding_attention",
        "full_attention",
    ]
    gemma = layer_types(
        {"model_type": "gemma3_text", "sliding_window": 1024, "sliding_window_pattern": 6}, 12
    )
    assert gemma.count("full_attention") == 2 and gemma[5] == gemma[11] == "full_attention"
    assert (
        layer_types({"model_type": "qwen3_next", "full_attention_interval": 4}, 8)
        == (["linear_attention"] * 3 + ["full_attention"]) * 2
    )
    listed = ["sliding_attention", "full_attention", "full_attention"]
    assert layer_types({"layer_types": listed}, 3) == listed
    # Qwen2/3 configs carry a window but do not use it; Mistral's is ignored by llama.cpp
    assert set(layer_types({"model_type": "qwen2", "sliding_window": 131072}, 4)) == {"full_attention"}
    assert set(layer_types({"model_type": "mistral", "sliding_window": 4096}, 4)) == {"full_attention"}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"hidden_size": 64}, "missing num_hidden_layers"),
        ({**QWEN3_8B, "num_hidden_layers": "36"}, "num_hidden_layers must be an integer"),
        ({**QWEN3_8B, "layer_types": ["full_attention", "magic"] * 18}, "unknown layer type 'magic'"),
        ({**QWEN3_8B, "layer_types": ["full_attention"]}, "lists 1 of 36 layers"),
    ],
)
def test_bad_configs_fail_clearly(config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        spec_from_config(config, name="x", source="x")


def test_unreadable_config_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"not a readable config\.json"):
        load_hf(tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        load_hf(tmp_path / "missing" / "config.json")


def test_every_catalog_entry_cites_its_source_and_builds() -> None:
    catalog = load_catalog()
    required = {
        "qwen3-0.6b",
        "qwen3-1.7b",
        "qwen3-4b",
        "qwen3-8b",
        "qwen3-14b",
        "qwen3-32b",
        "qwen3-30b-a3b",
        "qwen3-coder-30b-a3b",
        "qwen3-coder-next",
        "qwen3-235b-a22b",
        "llama-3.1-8b",
        "llama-3.3-70b",
        "gpt-oss-20b",
        "gpt-oss-120b",
        "gemma-3-27b",
    }
    assert required <= set(catalog)
    for key, entry in catalog.items():
        assert entry.config_url.startswith("https://huggingface.co/") and entry.config_url.endswith(
            "config.json"
        )
        assert entry.card.startswith("https://huggingface.co/") and entry.verified
        spec = entry.spec()
        assert spec.source == entry.config_url and spec.params_total > 0, key
        estimate_weights(spec, entry.default_quant)


@pytest.mark.parametrize("key", sorted(load_catalog()))
def test_catalog_parameter_counts_agree_with_the_model_cards(key: str) -> None:
    entry = lookup(key)
    spec = entry.spec()
    card = entry.card_params
    assert spec.params_total == pytest.approx(card["total"], rel=0.03)
    if "non_embedding" in card:
        embeddings = spec.params_embedding * (1 if spec.tied_embeddings else 2)
        assert spec.params_total - embeddings == pytest.approx(card["non_embedding"], rel=0.05)
    if "active" in card:
        ours = spec.params_active
        if card.get("active_includes_input_embedding"):
            ours += spec.params_embedding
        # cards round active counts to one or two digits ("3B", "22B")
        tolerance = 0.05 if "active_includes_input_embedding" in card else 0.25
        assert ours == pytest.approx(card["active"], rel=tolerance)


def test_catalog_architecture_facts() -> None:
    gemma = lookup("gemma-3-27b").spec()
    assert (sum(gemma.swa_layers), gemma.sliding_window, max(gemma.n_head_kv)) == (52, 1024, 16)
    oss = lookup("gpt-oss-120b").spec()
    assert (sum(oss.swa_layers), oss.sliding_window, oss.head_dim_k, oss.n_expert_used) == (18, 128, 64, 4)
    moe = lookup("qwen3-30b-a3b").spec()
    assert (moe.n_layer, max(moe.n_head_kv), moe.n_expert, moe.ctx_train, moe.ctx_native) == (
        48,
        4,
        128,
        40960,
        32768,
    )
    assert lookup("qwen3-coder-30b-a3b").spec().ctx_train == 262144
    assert lookup("llama-3.3-70b").spec().head_dim_k == 128


@pytest.mark.parametrize("alias", ["Qwen3-8B", "qwen3:8b", "Qwen/Qwen3-8B", "QWEN3_8B"])
def test_lookup_by_name_alias_or_hf_id(alias: str) -> None:
    assert lookup(alias).key == "qwen3-8b"


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'qwen3-30b-a2b'.*did you mean qwen3-30b-a3b"):
        lookup("qwen3-30b-a2b")
    with pytest.raises(ConfigError, match=r"did you mean.*gpt-oss-120b"):
        lookup("gpt-oss-120")
    with pytest.raises(ConfigError, match="halo plan --list"):
        lookup("zzzzzzzz")


def test_weight_estimates_for_a_quant() -> None:
    spec = lookup("qwen3-8b").spec()
    q4 = estimate_weights(spec, "Q4_0")
    assert q4.total_bytes == round(spec.params_total * 4.5 / 8)
    assert q4.host_bytes == round(spec.params_embedding * 4.5 / 8)
    assert q4.gpu_bytes == q4.total_bytes - q4.host_bytes and not q4.exact
    oss = lookup("gpt-oss-20b").spec()
    mx = estimate_weights(oss, "MXFP4_MOE")
    assert mx.expert_bytes == round(oss.params_expert * 4.25 / 8)
    assert mx.total_bytes == round(
        oss.params_expert * 4.25 / 8 + (oss.params_total - oss.params_expert) * 8.5 / 8
    )
    tied = estimate_weights(lookup("qwen3-4b").spec(), "Q8_0")
    assert tied.gpu_bytes == tied.total_bytes  # the CPU-kept input table is duplicated as the output

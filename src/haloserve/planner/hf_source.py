"""Model specs from a Hugging Face ``config.json`` (plus ``model.safetensors.index.json`` when present).

The parameter count is computed from the architecture (embeddings, attention, dense or MoE FFN, norms),
for the families the catalog covers: Llama, Mistral, Qwen2/3, Qwen3-MoE, Qwen3-Next (hybrid gated
delta-net + gated attention), gpt-oss and Gemma 2/3. When the safetensors index is present and the
checkpoint is plain BF16/F16/F32 text weights, its ``total_size`` gives the exact total instead.
Layer kinds (full, sliding-window, linear) follow ``layer_types`` when the config lists them, else each
family's documented default pattern, as llama.cpp applies it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from haloserve.errors import ConfigError
from haloserve.planner.spec import ModelSpec, RecurrentState

FULL, SLIDING, LINEAR = "full_attention", "sliding_attention", "linear_attention"
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
_MULTIMODAL_PREFIXES = ("vision_tower", "multi_modal_projector", "visual", "audio_tower", "model.vision")
_QK_NORM_TYPES = {"qwen3", "qwen3_moe", "qwen3_next", "gemma3", "gemma3_text"}
_GEMMA_TYPES = {"gemma", "gemma2", "gemma3", "gemma3_text"}


def _text_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The language-model part of a (possibly multimodal) config."""
    text = config.get("text_config")
    merged = dict(config)
    if isinstance(text, Mapping):
        merged.update(text)
        merged.setdefault("model_type", config.get("model_type"))
    return merged


def _int(cfg: Mapping[str, Any], *keys: str, default: int | None = None) -> int:
    for key in keys:
        value = cfg.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
                raise ConfigError(f"config.json: {key} must be an integer (got {value!r})")
            return int(value)
    if default is None:
        raise ConfigError(f"config.json: missing {keys[0]}")
    return default


def layer_types(cfg: Mapping[str, Any], n_layer: int) -> list[str]:
    """Kind of every layer: full attention, sliding-window attention or linear (recurrent) attention."""
    model_type = str(cfg.get("model_type") or "")
    listed = cfg.get("layer_types")
    if isinstance(listed, list) and listed:
        if len(listed) < n_layer:
            raise ConfigError(f"config.json: layer_types lists {len(listed)} of {n_layer} layers")
        kinds = {"full_attention": FULL, "sliding_attention": SLIDING, "linear_attention": LINEAR}
        unknown = sorted({str(t) for t in listed[:n_layer]} - set(kinds))
        if unknown:
            raise ConfigError(f"config.json: unknown layer type {unknown[0]!r}")
        return [kinds[str(t)] for t in listed[:n_layer]]
    if model_type == "qwen3_next":
        interval = _int(cfg, "full_attention_interval", default=4)
        return [FULL if (i + 1) % interval == 0 else LINEAR for i in range(n_layer)]
    if cfg.get("sliding_window") and model_type == "gemma2":
        return [SLIDING if i % 2 == 0 else FULL for i in range(n_layer)]
    if cfg.get("sliding_window") and model_type in ("gemma3", "gemma3_text"):
        pattern = _int(cfg, "sliding_window_pattern", "_sliding_window_pattern", default=6)
        return [FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n_layer)]
    if cfg.get("sliding_window") and model_type == "gpt_oss":
        return [SLIDING if i % 2 == 0 else FULL for i in range(n_layer)]
    if cfg.get("use_sliding_window") and cfg.get("sliding_window") and model_type.startswith("qwen"):
        first = _int(cfg, "max_window_layers", default=0)
        return [SLIDING if i >= first else FULL for i in range(n_layer)]
    # Other families (Llama, Mistral ...) run every layer with full attention in llama.cpp.
    return [FULL] * n_layer


def _experts(cfg: Mapping[str, Any]) -> tuple[int, int]:
    n = _int(cfg, "num_experts", "num_local_experts", "n_routed_experts", default=0)
    k = _int(cfg, "num_experts_per_tok", "experts_per_token", default=0) if n else 0
    return n, k


def _is_dense_layer(cfg: Mapping[str, Any], il: int) -> bool:
    if il in (cfg.get("mlp_only_layers") or []):
        return True
    if il < _int(cfg, "first_k_dense_replace", default=0):
        return True
    step = _int(cfg, "decoder_sparse_step", default=1)
    return step > 1 and (il + 1) % step != 0


def count_params(cfg: Mapping[str, Any]) -> tuple[int, int, int]:
    """(total, input-embedding, routed-expert) parameters of the language model described by ``cfg``."""
    model_type = str(cfg.get("model_type") or "")
    hidden = _int(cfg, "hidden_size")
    n_layer = _int(cfg, "num_hidden_layers")
    n_head = _int(cfg, "num_attention_heads")
    n_kv = _int(cfg, "num_key_value_heads", default=n_head)
    hd = _int(cfg, "head_dim", default=hidden // n_head)
    vocab = _int(cfg, "vocab_size")
    tied = bool(cfg.get("tie_word_embeddings", model_type in _GEMMA_TYPES))
    n_exp, _ = _experts(cfg)
    kinds = layer_types(cfg, n_layer)

    gate = 2 if model_type == "qwen3_next" else 1  # gated attention: q_proj also emits the output gate
    attn = hidden * n_head * hd * gate + 2 * hidden * n_kv * hd + n_head * hd * hidden
    if cfg.get("attention_bias") or model_type == "qwen2":
        attn += n_head * hd * gate + 2 * n_kv * hd + (hidden if cfg.get("attention_bias") else 0)
    if model_type in _QK_NORM_TYPES:
        attn += 2 * hd
    if model_type == "gpt_oss":
        attn += n_head  # attention sinks

    linear = 0
    if LINEAR in kinds:
        nk, nv = _int(cfg, "linear_num_key_heads"), _int(cfg, "linear_num_value_heads")
        dk, dv = _int(cfg, "linear_key_head_dim"), _int(cfg, "linear_value_head_dim")
        kernel = _int(cfg, "linear_conv_kernel_dim", default=4)
        key_dim, value_dim = nk * dk, nv * dv
        linear = (
            hidden * (2 * key_dim + 2 * value_dim)  # in_proj_qkvz
            + hidden * 2 * nv  # in_proj_ba
            + (2 * key_dim + value_dim) * kernel  # depthwise conv
            + 2 * nv  # dt_bias, A_log
            + dv  # gated RMS norm
            + value_dim * hidden  # out_proj
        )

    norms = (4 if model_type in ("gemma2", "gemma3", "gemma3_text") else 2) * hidden
    dense_ff = _int(cfg, "intermediate_size", default=0)
    total = expert_total = 0
    for il, kind in enumerate(kinds):
        total += (linear if kind == LINEAR else attn) + norms
        if n_exp and not _is_dense_layer(cfg, il):
            ff_exp = _int(cfg, "moe_intermediate_size", "intermediate_size")
            experts = n_exp * 3 * hidden * ff_exp
            if model_type == "gpt_oss":
                experts += n_exp * (2 * ff_exp + hidden)  # expert biases
                total += n_exp  # router bias
            shared = _int(cfg, "shared_expert_intermediate_size", default=0)
            shared += _int(cfg, "n_shared_experts", default=0) * ff_exp
            total += experts + hidden * n_exp + 3 * hidden * shared + (hidden if shared else 0)
            expert_total += experts
        else:
            total += 3 * hidden * dense_ff
    embedding = vocab * hidden
    total += embedding + (0 if tied else embedding) + hidden  # + final norm
    return total, embedding, expert_total


def spec_from_config(
    config: Mapping[str, Any],
    *,
    name: str,
    source: str,
    index: Mapping[str, Any] | None = None,
    ctx_native: int | None = None,
    notes: tuple[str, ...] = (),
) -> ModelSpec:
    """Build a :class:`ModelSpec` from a ``config.json`` mapping (and its safetensors index, if any)."""
    if not isinstance(config, Mapping):
        raise ConfigError("config.json must hold a JSON object")
    cfg = _text_config(config)
    model_type = str(cfg.get("model_type") or "")
    n_layer = _int(cfg, "num_hidden_layers")
    n_head = _int(cfg, "num_attention_heads")
    n_kv = _int(cfg, "num_key_value_heads", default=n_head)
    hidden = _int(cfg, "hidden_size")
    hd = _int(cfg, "head_dim", default=hidden // n_head)
    kinds = layer_types(cfg, n_layer)
    n_exp, k = _experts(cfg)
    total, embedding, experts = count_params(cfg)
    extra: list[str] = list(notes)

    if index is not None:
        total = _index_total(cfg, index, total, extra)

    recurrent = None
    if LINEAR in kinds:
        nk, nv = _int(cfg, "linear_num_key_heads"), _int(cfg, "linear_num_value_heads")
        dk, dv = _int(cfg, "linear_key_head_dim"), _int(cfg, "linear_value_head_dim")
        kernel = _int(cfg, "linear_conv_kernel_dim", default=4)
        recurrent = RecurrentState(
            n_layers=kinds.count(LINEAR),
            conv_values=(kernel - 1) * (2 * nk * dk + nv * dv),
            state_values=dk * dv * nv,
        )
    sliding = _int(cfg, "sliding_window", default=0) if SLIDING in kinds else 0
    return ModelSpec(
        name=name,
        architecture=model_type or "unknown",
        n_layer=n_layer,
        n_embd=hidden,
        n_vocab=_int(cfg, "vocab_size"),
        n_head=n_head,
        n_head_kv=tuple(0 if kind == LINEAR else n_kv for kind in kinds),
        head_dim_k=hd,
        head_dim_v=hd,
        ctx_train=_int(cfg, "max_position_embeddings"),
        params_total=total,
        params_embedding=embedding,
        params_expert=experts,
        n_ff=_int(cfg, "intermediate_size", default=0) if not n_exp else 0,
        n_expert=n_exp,
        n_expert_used=k,
        n_ff_exp=_int(cfg, "moe_intermediate_size", "intermediate_size", default=0) if n_exp else 0,
        n_ff_shexp=_int(cfg, "shared_expert_intermediate_size", default=0),
        sliding_window=sliding,
        swa_layers=tuple(kind == SLIDING for kind in kinds) if sliding else (),
        recurrent=recurrent,
        ctx_native=ctx_native,
        rope_theta=_rope_theta(cfg),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", model_type in _GEMMA_TYPES)),
        source=source,
        notes=tuple(extra),
    )


def _rope_theta(cfg: Mapping[str, Any]) -> float | None:
    params = cfg.get("rope_parameters")
    theta = cfg.get("rope_theta") or (params.get("rope_theta") if isinstance(params, Mapping) else None)
    return float(theta) if isinstance(theta, (int, float)) and not isinstance(theta, bool) else None


def _index_total(cfg: Mapping[str, Any], index: Mapping[str, Any], total: int, notes: list[str]) -> int:
    """The exact parameter total from a safetensors index, when the checkpoint allows reading it."""
    meta = index.get("metadata") if isinstance(index, Mapping) else None
    size = meta.get("total_size") if isinstance(meta, Mapping) else None
    if not isinstance(size, (int, float)) or size <= 0:
        raise ConfigError("model.safetensors.index.json: missing metadata.total_size")
    weight_map = index.get("weight_map") or {}
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "")
    if cfg.get("quantization_config"):
        notes.append("checkpoint is quantised: parameter count computed from the architecture")
        return total
    if any(str(k).startswith(_MULTIMODAL_PREFIXES) for k in weight_map):
        notes.append("checkpoint includes a vision/audio tower: language-model parameters computed")
        return total
    if dtype not in _DTYPE_BYTES:
        notes.append(f"checkpoint dtype {dtype or 'unknown'}: parameter count computed from architecture")
        return total
    exact = int(size) // _DTYPE_BYTES[dtype]
    notes.append(f"parameter count from model.safetensors.index.json ({int(size)} bytes of {dtype})")
    return exact


def load_hf(path: Path) -> ModelSpec:
    """Read ``config.json`` (a file, or a directory holding it) and the index next to it, if any."""
    config_path = path / "config.json" if path.is_dir() else path
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{config_path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{config_path}: not a readable config.json ({exc})") from None
    index = None
    index_path = config_path.parent / "model.safetensors.index.json"
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{index_path}: not readable JSON ({exc})") from None
    name = config_path.parent.name or "model"
    return spec_from_config(config, name=name, source=str(config_path), index=index)

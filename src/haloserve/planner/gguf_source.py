"""Model specs and exact weight sizes from local GGUF files, without loading the weights.

Only the header is read (``gguf_header``: metadata and the tensor table over a memory map); tensor data
is never touched. Split models (``name-00001-of-00003.gguf``) are found
from any one part and summed. The layer layout follows llama.cpp's own loaders (``src/models/*.cpp``):
the sliding-window pattern each architecture uses when the file does not list one, the recurrent layers
of hybrid models, and the multi-token-prediction layers that hold no KV cache.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haloserve.errors import ConfigError
from haloserve.planner.gguf_header import SkippedArray, read_header
from haloserve.planner.quant import FILE_TYPE_NAMES
from haloserve.planner.spec import ModelSpec, RecurrentState, Weights

_SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")

# Sliding-window pattern llama.cpp assumes per architecture when the GGUF has no
# ``attention.sliding_window_pattern`` key: (n_pattern, dense_first) as passed to load_swa_pattern().
SWA_PATTERNS: dict[str, tuple[int, bool]] = {
    "gemma2": (2, False),
    "gemma3": (6, False),
    "gemma-embedding": (6, False),
    "gemma3n": (5, False),
    "gpt-oss": (2, False),
    "cohere2": (4, False),
    "cohere2moe": (4, True),
    "exaone4": (4, False),
    "exaone-moe": (4, False),
    "olmo2": (4, False),
    "afmoe": (4, False),
    "llama4": (4, False),
    "mellum": (4, False),
    "smallthinker": (4, True),
    "plamo3": (8, False),
}
# Hybrid architectures whose recurrent layers follow ``full_attention_interval`` (default 4).
_INTERVAL_HYBRIDS = {"qwen3next", "qwen35", "qwen35moe"}
_PURE_RECURRENT = {"mamba", "mamba2"}


def swa_pattern(n_layer: int, n_pattern: int, dense_first: bool = False) -> list[bool]:
    """Sliding-window flags exactly as ``llama_hparams::set_swa_pattern`` sets them."""
    if dense_first:
        return [n_pattern == 0 or il % n_pattern != 0 for il in range(n_layer)]
    return [n_pattern == 0 or il % n_pattern < n_pattern - 1 for il in range(n_layer)]


@dataclass(frozen=True)
class _Tensor:
    name: str
    n_elements: int
    n_bytes: int


def split_paths(path: Path) -> list[Path]:
    """Every part of a split GGUF given any part (or ``[path]`` for a single file)."""
    m = _SPLIT_RE.match(path.name)
    if not m:
        return [path]
    count = int(m.group("count"))
    if count < 1 or int(m.group("no")) > count:
        raise ConfigError(f"{path}: malformed split name")
    parts = [path.with_name(f"{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise ConfigError(f"{path}: split model is missing {', '.join(missing)}")
    return parts


def _read_one(path: Path) -> tuple[dict[str, Any], list[_Tensor]]:
    """Metadata and tensor table of one GGUF file (long arrays such as the vocabulary only counted)."""
    meta, infos = read_header(path)
    for key, value in list(meta.items()):
        if isinstance(value, SkippedArray):
            meta[key + ".count"] = value.count
            del meta[key]
        elif isinstance(value, list) and key.startswith("tokenizer."):
            meta[key + ".count"] = len(value)
    return meta, [_Tensor(t.name, t.n_elements, t.n_bytes) for t in infos]


def _scalar(meta: dict[str, Any], key: str, default: Any = None) -> Any:
    value = meta.get(key, default)
    if value is None:
        raise ConfigError(f"GGUF metadata: missing {key}")
    return value


def _per_layer(value: Any, n_layer: int, key: str) -> list[int]:
    if isinstance(value, list):
        if len(value) < n_layer:
            raise ConfigError(f"GGUF metadata: {key} lists {len(value)} of {n_layer} layers")
        return [int(v) for v in value[:n_layer]]
    return [int(value)] * n_layer


def read_gguf(path: Path) -> tuple[ModelSpec, Weights]:
    """The :class:`ModelSpec` and exact :class:`Weights` of a GGUF model (any part of a split model)."""
    parts = split_paths(path)
    meta, tensors = _read_one(parts[0])
    for part in parts[1:]:
        tensors.extend(_read_one(part)[1])
    expected = meta.get("split.count")
    if expected is not None and int(expected) != len(parts):
        raise ConfigError(f"{path}: metadata says {expected} splits, found {len(parts)}")
    return _spec(meta, tensors, parts[0]), _weights(meta, tensors, parts)


def _spec(meta: dict[str, Any], tensors: Sequence[_Tensor], path: Path) -> ModelSpec:
    arch = str(_scalar(meta, "general.architecture"))

    def key(name: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{name}", default)

    n_layer = int(_scalar(meta, f"{arch}.block_count"))
    n_embd = int(_scalar(meta, f"{arch}.embedding_length"))
    heads = _per_layer(_scalar(meta, f"{arch}.attention.head_count"), n_layer, "head_count")
    n_head = max(heads)
    kv = _per_layer(key("attention.head_count_kv", n_head), n_layer, "head_count_kv")
    hd_k = int(key("attention.key_length", n_embd // max(1, n_head)))
    hd_v = int(key("attention.value_length", n_embd // max(1, n_head)))
    notes: list[str] = []

    nextn = int(key("nextn_predict_layers", 0) or 0)
    if nextn:
        kv = [h if il < n_layer - nextn else 0 for il, h in enumerate(kv)]
        notes.append(f"{nextn} multi-token-prediction layer(s) hold no KV cache in the main context")

    recurrent = _recurrent(meta, arch, n_layer, kv, notes)
    if recurrent is not None:
        flags = recurrent[0]
        kv = [0 if r else h for h, r in zip(kv, flags, strict=True)]

    window = int(key("attention.sliding_window", 0) or 0)
    swa: list[bool] = []
    if window > 0:
        listed = key("attention.sliding_window_pattern")
        if isinstance(listed, list):
            swa = [bool(v) for v in listed[:n_layer]]
        elif listed is not None or arch in SWA_PATTERNS:
            n_pattern, dense_first = SWA_PATTERNS.get(arch, (0, False))
            swa = swa_pattern(n_layer, int(listed) if listed is not None else n_pattern, dense_first)
        else:
            notes.append(f"{arch}: sliding window {window} with an unknown layer pattern; counted as full")
        if not any(swa):
            window, swa = 0, []

    by_name = {t.name: t for t in tensors}
    embd = by_name.get("token_embd.weight")
    n_vocab = int(key("vocab_size", 0) or meta.get("tokenizer.ggml.tokens.count") or 0)
    if not n_vocab and embd is not None:
        n_vocab = embd.n_elements // n_embd
    ff = key("feed_forward_length", 0) or 0
    n_expert = int(key("expert_count", 0) or 0)
    orig_ctx = key("rope.scaling.original_context_length")
    ftype = meta.get("general.file_type")
    name = str(meta.get("general.name") or path.stem)
    return ModelSpec(
        name=name,
        architecture=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_vocab=n_vocab,
        n_head=n_head,
        n_head_kv=tuple(kv),
        head_dim_k=hd_k,
        head_dim_v=hd_v,
        ctx_train=int(_scalar(meta, f"{arch}.context_length")),
        params_total=sum(t.n_elements for t in tensors),
        params_embedding=embd.n_elements if embd else 0,
        params_expert=sum(t.n_elements for t in tensors if _is_expert(t.name)),
        n_ff=max(ff) if isinstance(ff, list) else int(ff),
        n_expert=n_expert,
        n_expert_used=int(key("expert_used_count", 0) or 0) if n_expert else 0,
        n_ff_exp=int(key("expert_feed_forward_length", 0) or 0),
        n_ff_shexp=int(key("expert_shared_feed_forward_length", 0) or 0),
        sliding_window=window,
        swa_layers=tuple(swa),
        recurrent=recurrent[1] if recurrent else None,
        ctx_native=int(orig_ctx) if orig_ctx else None,
        rope_theta=float(key("rope.freq_base")) if key("rope.freq_base") else None,
        tied_embeddings="output.weight" not in by_name,
        source=f"{path} ({FILE_TYPE_NAMES.get(int(ftype), 'unknown type') if ftype is not None else 'GGUF'})",
        notes=tuple(notes),
    )


def _recurrent(
    meta: dict[str, Any], arch: str, n_layer: int, kv: list[int], notes: list[str]
) -> tuple[list[bool], RecurrentState] | None:
    """Which layers are recurrent and the size of their state, following llama.cpp's hparams."""

    def key(name: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{name}", default)

    listed = key("attention.recurrent_layers")
    if isinstance(listed, list):
        flags = [bool(v) for v in listed[:n_layer]]
    elif arch in _INTERVAL_HYBRIDS:
        interval = int(key("full_attention_interval", 4) or 4)
        flags = [(il + 1) % interval != 0 for il in range(n_layer)]
    elif arch in _PURE_RECURRENT:
        flags = [True] * n_layer
    elif key("ssm.state_size") is not None and 0 in kv:
        flags = [h == 0 for h in kv]
    else:
        return None
    d_conv = int(key("ssm.conv_kernel", 0) or 0)
    d_inner = int(key("ssm.inner_size", 0) or 0)
    d_state = int(key("ssm.state_size", 0) or 0)
    n_group = int(key("ssm.group_count", 0) or 0)
    if not d_inner or not d_state:
        notes.append(f"{arch}: recurrent layers without SSM sizes; their state is not counted")
        return flags, RecurrentState(sum(flags), 0, 0)
    conv = max(0, d_conv - 1) * (d_inner + 2 * n_group * d_state)
    return flags, RecurrentState(sum(flags), conv, d_state * d_inner)


def _is_expert(name: str) -> bool:
    return "_exps." in name


def _weights(meta: dict[str, Any], tensors: Sequence[_Tensor], parts: Sequence[Path]) -> Weights:
    total = sum(t.n_bytes for t in tensors)
    by_name = {t.name: t for t in tensors}
    embd = by_name["token_embd.weight"].n_bytes if "token_embd.weight" in by_name else 0
    tied = "output.weight" not in by_name
    experts = sum(t.n_bytes for t in tensors if _is_expert(t.name))
    arch = str(meta.get("general.architecture"))
    n_expert = int(meta.get(f"{arch}.expert_count", 0) or 0)
    used = int(meta.get(f"{arch}.expert_used_count", 0) or 0)
    frac = used / n_expert if n_expert > 1 and used else 1.0
    gpu = total - embd + (embd if tied else 0)
    ftype = meta.get("general.file_type")
    label = FILE_TYPE_NAMES.get(int(ftype), "GGUF") if ftype is not None else "GGUF"
    where = f"{len(parts)} files" if len(parts) > 1 else parts[0].name
    return Weights(
        quant=label,
        total_bytes=total,
        gpu_bytes=gpu,
        host_bytes=embd,
        decode_bytes=round(gpu - experts * (1 - frac)),
        expert_bytes=experts,
        output_bytes=by_name["output.weight"].n_bytes if not tied else embd,
        exact=True,
        source=f"sum of {len(tensors)} tensors in {where}",
    )

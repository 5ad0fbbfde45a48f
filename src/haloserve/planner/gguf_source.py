"""Model specs and exact weight sizes from local GGUF files, without loading the weights.

Only the header is read (``gguf_header``: metadata and the tensor table over a memory map); tensor data
is never touched. Split models (``name-00001-of-00003.gguf``) are found
from any one part and summed. The layer layout follows llama.cpp's own loaders (``src/models/*.cpp``):
the sliding-window pattern each architecture uses when the file does not list one, the recurrent layers
of hybrid models, and the multi-token-prediction layers that hold no KV cache.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from haloserve.errors import ConfigError
from haloserve.planner.gguf_header import MAX_DECODED_ARRAY, DamagedGGUF, SkippedArray, read_header
from haloserve.planner.quant import FILE_TYPE_NAMES
from haloserve.planner.spec import ModelSpec, RecurrentState, Weights
from haloserve.printable import printable

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


MAX_LAYERS = MAX_DECODED_ARRAY  # per-layer arrays are always decoded; real models have <= ~200 layers
_U32 = 2**32 - 1  # llama.cpp reads these keys as uint32
_NO_DEFAULT: Any = object()


class _Meta:
    """Typed access to untrusted metadata: a missing or ill-typed value is a :class:`DamagedGGUF`."""

    def __init__(self, meta: dict[str, Any], path: Path) -> None:
        self.meta, self.path = meta, path

    def damaged(self, what: str) -> DamagedGGUF:
        """The error for a bad value."""
        return DamagedGGUF(what, self.path)

    def get(self, key: str, default: Any = None) -> Any:
        """The raw value, or ``default``."""
        return self.meta.get(key, default)

    def integer(self, key: str, default: Any = _NO_DEFAULT, lo: int = 0, hi: int = _U32) -> int:
        """An integer in ``[lo, hi]``; ``default`` when absent (a missing key without one is damage)."""
        value = self.meta.get(key)
        if value is None:
            if default is _NO_DEFAULT:
                raise self.damaged(f"missing {key}")
            return int(default)
        return self._check_int(key, value, lo, hi)

    def optional_integer(self, key: str, lo: int = 0, hi: int = _U32) -> int | None:
        """An integer in ``[lo, hi]``, or None when absent."""
        value = self.meta.get(key)
        return None if value is None else self._check_int(key, value, lo, hi)

    def _check_int(self, key: str, value: Any, lo: int, hi: int) -> int:
        if not isinstance(value, int) or not lo <= value <= hi:
            raise self.damaged(
                f"{key} is {printable(repr(value), 60)}, expected an integer from {lo} to {hi:,}"
            )
        return int(value)

    def per_layer(self, key: str, n_layer: int, default: Any = _NO_DEFAULT, lo: int = 0) -> list[int]:
        """A value per layer: one integer for all, or an array with at least ``n_layer`` entries."""
        value = self.meta.get(key)
        if isinstance(value, list):
            if len(value) < n_layer:
                raise self.damaged(f"{key} lists {len(value)} of {n_layer} layers")
            return [self._check_int(key, v, lo, _U32) for v in value[:n_layer]]
        return [self.integer(key, default, lo)] * n_layer

    def flags(self, key: str, n_layer: int) -> list[bool] | None:
        """A per-layer array of flags, or None when the key is absent or not an array."""
        value = self.meta.get(key)
        if not isinstance(value, list):
            return None
        return [self._check_int(key, v, 0, 1) == 1 for v in value[:n_layer]]

    def number(self, key: str) -> float | None:
        """A finite number, or None when absent."""
        value = self.meta.get(key)
        if value is None:
            return None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.damaged(f"{key} is {printable(repr(value), 60)}, expected a number")
        return float(value)


def read_gguf(path: Path) -> tuple[ModelSpec, Weights]:
    """The :class:`ModelSpec` and exact :class:`Weights` of a GGUF model (any part of a split model)."""
    parts = split_paths(path)
    meta, tensors = _read_one(parts[0])
    for part in parts[1:]:
        tensors.extend(_read_one(part)[1])
    m = _Meta(meta, parts[0])
    expected = m.optional_integer("split.count", lo=1)
    if expected is not None and expected != len(parts):
        raise ConfigError(f"{printable(path)}: metadata says {expected} splits, found {len(parts)}")
    try:
        spec = _spec(m, tensors, parts[0])
    except DamagedGGUF:
        raise
    except ConfigError as exc:  # ModelSpec's consistency checks: this file's metadata contradicts itself
        raise DamagedGGUF(exc.message.removeprefix("model metadata: "), parts[0]) from None
    return spec, _weights(m, tensors, parts)


def _spec(m: _Meta, tensors: Sequence[_Tensor], path: Path) -> ModelSpec:
    arch = m.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise m.damaged(f"general.architecture is {printable(repr(arch), 60)}, expected a name")

    def key(name: str, default: Any = None) -> Any:
        return m.get(f"{arch}.{name}", default)

    n_layer = m.integer(f"{arch}.block_count", lo=1, hi=MAX_LAYERS)
    n_embd = m.integer(f"{arch}.embedding_length", lo=1)
    heads = m.per_layer(f"{arch}.attention.head_count", n_layer)
    n_head = max(heads)
    if n_head < 1:
        raise m.damaged(f"{arch}.attention.head_count is 0 in every layer")
    kv = m.per_layer(f"{arch}.attention.head_count_kv", n_layer, n_head)
    hd_k = m.integer(f"{arch}.attention.key_length", n_embd // n_head, lo=1)
    hd_v = m.integer(f"{arch}.attention.value_length", n_embd // n_head, lo=1)
    notes: list[str] = []

    nextn = m.integer(f"{arch}.nextn_predict_layers", 0, hi=n_layer)
    if nextn:
        kv = [h if il < n_layer - nextn else 0 for il, h in enumerate(kv)]
        notes.append(f"{nextn} multi-token-prediction layer(s) hold no KV cache in the main context")

    recurrent = _recurrent(m, arch, n_layer, kv, notes)
    if recurrent is not None:
        flags = recurrent[0]
        kv = [0 if r else h for h, r in zip(kv, flags, strict=False)]

    window = m.integer(f"{arch}.attention.sliding_window", 0)
    swa: list[bool] = []
    if window > 0:
        listed = m.flags(f"{arch}.attention.sliding_window_pattern", n_layer)
        if listed is not None:
            swa = listed
        elif key("attention.sliding_window_pattern") is not None or arch in SWA_PATTERNS:
            n_pattern, dense_first = SWA_PATTERNS.get(arch, (0, False))
            pattern = m.integer(f"{arch}.attention.sliding_window_pattern", n_pattern, hi=MAX_LAYERS)
            swa = swa_pattern(n_layer, pattern, dense_first)
        else:
            notes.append(f"{arch}: sliding window {window} with an unknown layer pattern; counted as full")
        if not any(swa):
            window, swa = 0, []

    by_name = {t.name: t for t in tensors}
    embd = by_name.get("token_embd.weight")
    n_vocab = m.integer(f"{arch}.vocab_size", 0) or m.integer("tokenizer.ggml.tokens.count", 0, hi=2**63)
    if not n_vocab and embd is not None:
        n_vocab = embd.n_elements // n_embd
    ff = m.per_layer(f"{arch}.feed_forward_length", n_layer, 0)
    n_expert = m.integer(f"{arch}.expert_count", 0)
    orig_ctx = m.integer(f"{arch}.rope.scaling.original_context_length", 0)
    ftype = m.optional_integer("general.file_type")
    name = m.get("general.name")
    rope = m.number(f"{arch}.rope.freq_base")
    return ModelSpec(
        name=name if isinstance(name, str) and name else path.stem,
        architecture=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_vocab=n_vocab,
        n_head=n_head,
        n_head_kv=tuple(kv),
        head_dim_k=hd_k,
        head_dim_v=hd_v,
        ctx_train=m.integer(f"{arch}.context_length", lo=1),
        params_total=sum(t.n_elements for t in tensors),
        params_embedding=embd.n_elements if embd else 0,
        params_expert=sum(t.n_elements for t in tensors if _is_expert(t.name)),
        n_ff=max(ff),
        n_expert=n_expert,
        n_expert_used=m.integer(f"{arch}.expert_used_count", 0, hi=n_expert) if n_expert else 0,
        n_ff_exp=m.integer(f"{arch}.expert_feed_forward_length", 0),
        n_ff_shexp=m.integer(f"{arch}.expert_shared_feed_forward_length", 0),
        sliding_window=window,
        swa_layers=tuple(swa),
        recurrent=recurrent[1] if recurrent else None,
        ctx_native=orig_ctx or None,
        rope_theta=rope or None,
        tied_embeddings="output.weight" not in by_name,
        source=f"{path} ({FILE_TYPE_NAMES.get(ftype, 'unknown type') if ftype is not None else 'GGUF'})",
        notes=tuple(notes),
    )


def _recurrent(
    m: _Meta, arch: str, n_layer: int, kv: list[int], notes: list[str]
) -> tuple[list[bool], RecurrentState] | None:
    """Which layers are recurrent and the size of their state, following llama.cpp's hparams."""
    listed = m.flags(f"{arch}.attention.recurrent_layers", n_layer)
    if listed is not None:
        flags = listed
    elif arch in _INTERVAL_HYBRIDS:
        interval = m.integer(f"{arch}.full_attention_interval", 4) or 4
        flags = [(il + 1) % interval != 0 for il in range(n_layer)]
    elif arch in _PURE_RECURRENT:
        flags = [True] * n_layer
    elif m.get(f"{arch}.ssm.state_size") is not None and 0 in kv:
        flags = [h == 0 for h in kv]
    else:
        return None
    d_conv = m.integer(f"{arch}.ssm.conv_kernel", 0)
    d_inner = m.integer(f"{arch}.ssm.inner_size", 0)
    d_state = m.integer(f"{arch}.ssm.state_size", 0)
    n_group = m.integer(f"{arch}.ssm.group_count", 0)
    if not d_inner or not d_state:
        notes.append(f"{arch}: recurrent layers without SSM sizes; their state is not counted")
        return flags, RecurrentState(sum(flags), 0, 0)
    conv = max(0, d_conv - 1) * (d_inner + 2 * n_group * d_state)
    return flags, RecurrentState(sum(flags), conv, d_state * d_inner)


def _is_expert(name: str) -> bool:
    return "_exps." in name


def _weights(m: _Meta, tensors: Sequence[_Tensor], parts: Sequence[Path]) -> Weights:
    total = sum(t.n_bytes for t in tensors)
    by_name = {t.name: t for t in tensors}
    embd = by_name["token_embd.weight"].n_bytes if "token_embd.weight" in by_name else 0
    tied = "output.weight" not in by_name
    experts = sum(t.n_bytes for t in tensors if _is_expert(t.name))
    arch = m.get("general.architecture")
    n_expert = m.integer(f"{arch}.expert_count", 0)
    used = m.integer(f"{arch}.expert_used_count", 0, hi=n_expert) if n_expert else 0
    frac = used / n_expert if n_expert > 1 and used else 1.0
    gpu = total - embd + (embd if tied else 0)
    ftype = m.optional_integer("general.file_type")
    label = FILE_TYPE_NAMES.get(ftype, "GGUF") if ftype is not None else "GGUF"
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

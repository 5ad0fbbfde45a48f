"""Synthetic models: valid GGUFs with random weights at a chosen shape, with a real tokenizer.

Tests and benchmarks need several distinct models, and models at real shapes (a Llama-3 8B, a 1B),
without downloading any. :func:`write_gguf` writes a llama-architecture GGUF whose metadata and tensor
layout are exactly what llama.cpp loads, with random weights and the tokenizer (vocabulary, merges,
special tokens, chat template) copied from an existing GGUF: the bundled SmolLM2 unless told otherwise.
The model talks nonsense, but it loads, tokenises, renders chat templates and decodes at the speed and
memory of its shape.

Quantised types are written block by block from random bytes (a random fp16 scale per block), one
tensor at a time, so an 8B Q4_0 never holds more than its largest tensor in memory and no float weights
are ever made.

    python -m haloserve.testing.synth_gguf out.gguf --shape small --qtype q8_0
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES

from haloserve.bundled import bundled_model_path


@dataclass(frozen=True, slots=True)
class Shape:
    """The hyper-parameters of a llama-architecture model."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx_train: int = 2048
    tied: bool = True  # output projection shares token_embd (SmolLM2, Llama-3.2 1B) or has its own
    # Vocabulary size: None keeps the tokenizer's; a larger one pads it with reserved control tokens
    # (Llama 3 has 128,256 entries; the logits row, and so sampling's cost, scale with it).
    n_vocab: int | None = None


# Named shapes. The two Llama-3 shapes are the published ones; their vocabulary is the tokenizer's.
SHAPES: dict[str, Shape] = {
    "tiny": Shape(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=128, n_ctx_train=1024),
    "small": Shape(n_layer=4, n_embd=128, n_head=4, n_head_kv=2, n_ff=256, n_ctx_train=2048),
    "medium": Shape(n_layer=8, n_embd=256, n_head=8, n_head_kv=4, n_ff=768, n_ctx_train=4096),
    "llama3-1b": Shape(
        n_layer=16, n_embd=2048, n_head=32, n_head_kv=8, n_ff=8192, n_ctx_train=131072, n_vocab=128256
    ),
    "llama3-8b": Shape(
        n_layer=32,
        n_embd=4096,
        n_head=32,
        n_head_kv=8,
        n_ff=14336,
        n_ctx_train=131072,
        tied=False,
        n_vocab=128256,
    ),
}

QTYPES: dict[str, GGMLQuantizationType] = {
    "f32": GGMLQuantizationType.F32,
    "f16": GGMLQuantizationType.F16,
    "q8_0": GGMLQuantizationType.Q8_0,
    "q4_0": GGMLQuantizationType.Q4_0,
}

# general.file_type (llama_ftype) of a model whose big matrices are all of one type.
_FILE_TYPE = {
    GGMLQuantizationType.F32: 0,
    GGMLQuantizationType.F16: 1,
    GGMLQuantizationType.Q4_0: 2,
    GGMLQuantizationType.Q8_0: 7,
}

_COPIED_PREFIXES = ("tokenizer.",)


def write_gguf(
    path: str | Path,
    *,
    shape: Shape | str = "small",
    qtype: str = "f16",
    seed: int = 0,
    tokenizer_from: str | Path | None = None,
    name: str | None = None,
    pad: str = "control",
    **overrides: Any,
) -> Path:
    """Write a random-weight llama GGUF of ``shape`` (a :class:`Shape` or a key of :data:`SHAPES`).

    ``overrides`` replace fields of the shape (``n_layer=3``). Different seeds give different weights,
    so two files of one shape are distinct models. ``pad="text"`` pads the vocabulary with plain
    tokens that render their text instead of control tokens that render nothing (a random model picks
    padding most of the time; a benchmark's streams need text). Returns ``path``.
    """
    sh = SHAPES[shape] if isinstance(shape, str) else shape
    if overrides:
        sh = replace(sh, **overrides)
    if qtype not in QTYPES:
        raise ValueError(f"qtype {qtype!r}: expected one of {', '.join(QTYPES)}")
    if sh.n_embd % sh.n_head or sh.n_head % sh.n_head_kv:
        raise ValueError("n_embd must divide by n_head, and n_head by n_head_kv")
    qt = QTYPES[qtype]
    block = GGML_QUANT_SIZES[qt][0]
    if sh.n_embd % block or sh.n_ff % block:
        raise ValueError(f"n_embd and n_ff must be multiples of {block} for {qtype}")
    path = Path(path)
    source = GGUFReader(str(tokenizer_from or bundled_model_path()))
    n_source = len(source.fields["tokenizer.ggml.tokens"].data)
    n_vocab = max(n_source, sh.n_vocab or 0)

    w = GGUFWriter(str(path), "llama")
    arch = "llama"
    w.add_name(name or f"synthetic-{path.stem}")
    w.add_uint32("general.file_type", _FILE_TYPE[qt])
    w.add_uint32(f"{arch}.block_count", sh.n_layer)
    w.add_uint32(f"{arch}.context_length", sh.n_ctx_train)
    w.add_uint32(f"{arch}.embedding_length", sh.n_embd)
    w.add_uint32(f"{arch}.feed_forward_length", sh.n_ff)
    w.add_uint32(f"{arch}.attention.head_count", sh.n_head)
    w.add_uint32(f"{arch}.attention.head_count_kv", sh.n_head_kv)
    w.add_uint32(f"{arch}.rope.dimension_count", sh.n_embd // sh.n_head)
    w.add_float32(f"{arch}.rope.freq_base", 500000.0)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_uint32(f"{arch}.vocab_size", n_vocab)
    _copy_tokenizer(source, w, n_vocab, _NORMAL if pad == "text" else _CONTROL)

    head_dim = sh.n_embd // sh.n_head
    kv = sh.n_head_kv * head_dim
    # (name, ggml shape [ne0, ne1]) in llama.cpp's order; norms are F32 vectors.
    tensors: list[tuple[str, list[int]]] = [("token_embd.weight", [sh.n_embd, n_vocab])]
    for i in range(sh.n_layer):
        b = f"blk.{i}"
        tensors += [
            (f"{b}.attn_norm.weight", [sh.n_embd]),
            (f"{b}.attn_q.weight", [sh.n_embd, sh.n_embd]),
            (f"{b}.attn_k.weight", [sh.n_embd, kv]),
            (f"{b}.attn_v.weight", [sh.n_embd, kv]),
            (f"{b}.attn_output.weight", [sh.n_embd, sh.n_embd]),
            (f"{b}.ffn_norm.weight", [sh.n_embd]),
            (f"{b}.ffn_gate.weight", [sh.n_embd, sh.n_ff]),
            (f"{b}.ffn_up.weight", [sh.n_embd, sh.n_ff]),
            (f"{b}.ffn_down.weight", [sh.n_ff, sh.n_embd]),
        ]
    tensors.append(("output_norm.weight", [sh.n_embd]))
    if not sh.tied:
        tensors.append(("output.weight", [sh.n_embd, n_vocab]))

    for tname, ne in tensors:
        t = GGMLQuantizationType.F32 if len(ne) == 1 else qt
        w.add_tensor_info(tname, _byte_shape(ne, t), np.dtype(np.uint8), _nbytes(ne, t), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for _tname, ne in tensors:
        if len(ne) == 1:
            w.write_tensor_data(np.ones(ne[0], dtype=np.float32).view(np.uint8))
        else:
            w.write_tensor_data(_random_tensor(rng, ne, qt))
    w.close()
    return path


def _byte_shape(ne: list[int], t: GGMLQuantizationType) -> list[int]:
    """The numpy (row-major, reversed) shape in bytes of a ggml tensor of ``ne`` elements."""
    block, size = GGML_QUANT_SIZES[t]
    rows = list(reversed(ne))
    rows[-1] = rows[-1] // block * size
    return rows


def _nbytes(ne: list[int], t: GGMLQuantizationType) -> int:
    block, size = GGML_QUANT_SIZES[t]
    return int(np.prod(ne)) // block * size


def _random_tensor(rng: np.random.Generator, ne: list[int], t: GGMLQuantizationType) -> np.ndarray:
    """Random weights of magnitude ~0.02 (like an initialised model), already in ggml's layout."""
    n = int(np.prod(ne))
    if t in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        dt = np.float32 if t == GGMLQuantizationType.F32 else np.float16
        return (rng.standard_normal(n, dtype=np.float32) * 0.02).astype(dt).view(np.uint8)
    block, size = GGML_QUANT_SIZES[t]
    raw = np.frombuffer(rng.bytes(n // block * size), dtype=np.uint8).copy().reshape(-1, size)
    # Each block starts with its fp16 scale d; the quants (int8 for Q8_0, nibbles-8 for Q4_0) follow.
    qmax = 127.0 if t == GGMLQuantizationType.Q8_0 else 8.0
    scales = (rng.uniform(0.5, 1.5, raw.shape[0]) * 0.02 * 1.7 / qmax).astype(np.float16)
    raw[:, :2] = scales.view(np.uint8).reshape(-1, 2)
    return raw.reshape(-1)


_PER_TOKEN = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")
_CONTROL = 3  # llama_token_type LLAMA_TOKEN_TYPE_CONTROL
_NORMAL = 1  # a plain token: never produced by the tokenizer (no merges), but it renders its text


def _copy_tokenizer(source: GGUFReader, w: GGUFWriter, n_vocab: int, pad_type: int = _CONTROL) -> None:
    """Copy every ``tokenizer.*`` key (vocabulary, merges, special ids, chat template), padding the
    per-token arrays with reserved tokens up to ``n_vocab`` entries (control tokens, or with
    ``pad_type`` normal ones, whose text a server streams: benchmarks need every token to show)."""
    for key, field in source.fields.items():
        if not key.startswith(_COPIED_PREFIXES):
            continue
        vtype = GGUFValueType(field.types[0])
        sub = GGUFValueType(field.types[1]) if vtype == GGUFValueType.ARRAY else None
        value = field.contents()
        if key in _PER_TOKEN and len(value) < n_vocab:
            extra = range(len(value), n_vocab)
            if key == "tokenizer.ggml.tokens":
                value = [*value, *(f"<|synth_reserved_{i}|>" for i in extra)]
            elif key == "tokenizer.ggml.token_type":
                value = [*value, *([pad_type] * len(extra))]
            else:
                value = [*value, *([0.0] * len(extra))]
        w.add_key_value(key, value, vtype, sub)


def main(argv: list[str] | None = None) -> None:
    """``python -m haloserve.testing.synth_gguf OUT [--shape S] [--qtype Q] [--seed N]``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("out", type=Path)
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--qtype", choices=sorted(QTYPES), default="f16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-vocab", type=int, default=None, help="pad the vocabulary to this many tokens")
    p.add_argument("--tokenizer-from", type=Path, default=None)
    a = p.parse_args(argv)
    extra = {"n_vocab": a.n_vocab} if a.n_vocab else {}
    out = write_gguf(
        a.out, shape=a.shape, qtype=a.qtype, seed=a.seed, tokenizer_from=a.tokenizer_from, **extra
    )
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()

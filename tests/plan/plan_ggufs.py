"""Small GGUF files written with the ``gguf`` package, with tensor sizes known in advance.

``write_model`` writes a complete, loadable model (llama, qwen3, qwen3moe or gemma3) whose weights are
zeros; llama.cpp opens it like any other GGUF, so tests can compare the planner with llama.cpp on
sliding-window and MoE architectures the bundled model does not cover.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

QTYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
}


@dataclass
class Shape:
    """Hyper-parameters of a tiny model."""

    arch: str = "llama"
    n_layer: int = 6
    n_embd: int = 64
    n_head: int = 4
    n_kv: int = 2
    head_dim: int = 32
    n_ff: int = 128
    vocab: int = 64
    ctx_train: int = 4096
    swa: int = 0
    experts: tuple[int, int, int] | None = None  # (count, used, ffn width)
    tied: bool = False
    matrix_type: str = "f32"  # type of the 2D/3D weight matrices


class _Writer:
    """Adds tensors and remembers their exact byte sizes."""

    def __init__(self, w: gguf.GGUFWriter, matrix_type: str) -> None:
        self.w = w
        self.matrix_type = matrix_type
        self.bytes: dict[str, int] = {}
        self.elements: dict[str, int] = {}

    def vec(self, name: str, n: int) -> None:
        self.w.add_tensor(name, np.zeros(n, dtype=np.float32))
        self.bytes[name] = 4 * n
        self.elements[name] = n

    def mat(self, name: str, *shape: int) -> None:
        """A matrix with ggml shape ``ne = reversed(shape)``: ``shape[-1]`` values per row."""
        qtype = QTYPES[self.matrix_type]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        n = int(np.prod(shape))
        if self.matrix_type == "f32":
            self.w.add_tensor(name, np.zeros(shape, dtype=np.float32))
        elif self.matrix_type == "f16":
            self.w.add_tensor(name, np.zeros(shape, dtype=np.float16))
        else:
            rows, cols = n // shape[-1], shape[-1]
            raw = np.zeros((*shape[:-1], cols // block * size), dtype=np.uint8)
            self.w.add_tensor(name, raw, raw_dtype=qtype)
            assert rows * cols == n
        self.bytes[name] = n // block * size
        self.elements[name] = n


def write_model(path: Path, shape: Shape, split_max_tensors: int = 0, **extra_kv: Any) -> _Writer:
    """Write ``shape`` as a GGUF at ``path`` (split into parts when ``split_max_tensors`` is set)."""
    s = shape
    w = gguf.GGUFWriter(str(path), s.arch, split_max_tensors=split_max_tensors)
    w.add_block_count(s.n_layer)
    w.add_context_length(s.ctx_train)
    w.add_embedding_length(s.n_embd)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_kv)
    w.add_key_length(s.head_dim)
    w.add_value_length(s.head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if s.matrix_type == "q8_0" else gguf.LlamaFileType.ALL_F32)
    if s.swa:
        w.add_sliding_window(s.swa)
    if s.experts:
        w.add_expert_count(s.experts[0])
        w.add_expert_used_count(s.experts[1])
        w.add_expert_feed_forward_length(s.experts[2])
    for key, value in extra_kv.items():
        _add_kv(w, f"{s.arch}.{key}", value)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(s.vocab)])
    w.add_token_scores([0.0] * s.vocab)
    w.add_token_types([1] * s.vocab)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    t = _Writer(w, s.matrix_type)
    t.mat("token_embd.weight", s.vocab, s.n_embd)
    t.vec("output_norm.weight", s.n_embd)
    if not s.tied:
        t.mat("output.weight", s.vocab, s.n_embd)
    hd = s.head_dim
    for i in range(s.n_layer):
        b = f"blk.{i}."
        t.vec(b + "attn_norm.weight", s.n_embd)
        t.mat(b + "attn_q.weight", s.n_head * hd, s.n_embd)
        t.mat(b + "attn_k.weight", s.n_kv * hd, s.n_embd)
        t.mat(b + "attn_v.weight", s.n_kv * hd, s.n_embd)
        t.mat(b + "attn_output.weight", s.n_embd, s.n_head * hd)
        t.vec(b + "ffn_norm.weight", s.n_embd)
        if s.arch in ("qwen3", "qwen3moe", "gemma3"):
            t.vec(b + "attn_q_norm.weight", hd)
            t.vec(b + "attn_k_norm.weight", hd)
        if s.arch == "gemma3":
            t.vec(b + "post_attention_norm.weight", s.n_embd)
            t.vec(b + "post_ffw_norm.weight", s.n_embd)
        if s.experts:
            n_exp, _, ff = s.experts
            t.mat(b + "ffn_gate_inp.weight", n_exp, s.n_embd)
            t.mat(b + "ffn_gate_exps.weight", n_exp, ff, s.n_embd)
            t.mat(b + "ffn_up_exps.weight", n_exp, ff, s.n_embd)
            t.mat(b + "ffn_down_exps.weight", n_exp, s.n_embd, ff)
        else:
            t.mat(b + "ffn_gate.weight", s.n_ff, s.n_embd)
            t.mat(b + "ffn_up.weight", s.n_ff, s.n_embd)
            t.mat(b + "ffn_down.weight", s.n_embd, s.n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return t


def _add_kv(w: gguf.GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, list):
        w.add_array(key, value)
    else:
        w.add_string(key, str(value))


def write_metadata_only(path: Path, arch: str, kv: dict[str, Any], tensors: dict[str, int]) -> None:
    """A GGUF with the given ``{arch}.*`` keys and F32 vector tensors of the given lengths (not loadable
    by llama.cpp; enough for the planner's reader)."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in kv.items():
        _add_kv(w, f"{arch}.{key}" if not key.startswith(("general.", "tokenizer.")) else key, value)
    for name, n in tensors.items():
        w.add_tensor(name, np.zeros(n, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

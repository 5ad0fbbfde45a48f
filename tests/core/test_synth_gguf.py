"""Synthetic GGUFs load in llama.cpp, are distinct per seed, and the planner reads their shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from haloserve.planner.gguf_header import read_header
from haloserve.testing.synth_gguf import SHAPES, write_gguf


@pytest.mark.parametrize("qtype", ["f16", "q8_0", "q4_0"])
def test_header_matches_shape(tmp_path: Path, qtype: str) -> None:
    path = write_gguf(tmp_path / "m.gguf", shape="tiny", qtype=qtype)
    meta, tensors = read_header(path)
    assert len(tensors) == 2 + 9 * SHAPES["tiny"].n_layer
    tiny = SHAPES["tiny"]
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == tiny.n_layer
    assert meta["llama.embedding_length"] == tiny.n_embd
    assert meta["llama.attention.head_count_kv"] == tiny.n_head_kv
    assert meta["tokenizer.ggml.model"] == "gpt2"  # copied from the bundled model


def test_bad_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        write_gguf(tmp_path / "m.gguf", shape="tiny", qtype="q4_0", n_embd=48, n_head=4, n_head_kv=2)


@pytest.mark.model
def test_loads_and_seeds_differ(tmp_path: Path) -> None:
    from llama_cpp import Llama

    outs = []
    for seed in (1, 2):
        path = write_gguf(tmp_path / f"m{seed}.gguf", shape="tiny", qtype="q8_0", seed=seed)
        llm = Llama(str(path), n_ctx=128, verbose=False)
        try:
            assert llm.n_vocab() == 49152
            outs.append(llm("hello", max_tokens=6, temperature=0)["choices"][0]["text"])
        finally:
            llm.close()
    assert outs[0] != outs[1]


@pytest.mark.model
def test_padded_vocabulary_loads(tmp_path: Path) -> None:
    """A Llama-3-sized vocabulary (128,256) on the bundled tokenizer: llama.cpp loads it, text
    tokenises as before, and the logits row has the padded size."""
    from llama_cpp import Llama

    path = write_gguf(tmp_path / "v.gguf", shape="tiny", qtype="q8_0", n_vocab=128256)
    llm = Llama(str(path), n_ctx=128, verbose=False, logits_all=False)
    try:
        assert llm.n_vocab() == 128256
        assert llm.tokenize(b"hello world", add_bos=False) == [28120, 905]
        assert llm.detokenize([128255]) == b""  # a control token renders as nothing
    finally:
        llm.close()

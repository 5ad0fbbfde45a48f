"""Reading specs and exact weight sizes from GGUF files written with the ``gguf`` package."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from haloserve.errors import ConfigError
from haloserve.planner.gguf_header import SkippedArray, read_header
from haloserve.planner.gguf_source import read_gguf, split_paths, swa_pattern
from tests.plan.plan_ggufs import Shape, write_metadata_only, write_model


def test_header_reader_agrees_with_gguf_reader(tmp_path: Path) -> None:
    # a vocabulary longer than MAX_DECODED_ARRAY exercises the skipping path
    path = tmp_path / "m.gguf"
    write_model(path, Shape(n_layer=2, vocab=5000, matrix_type="q8_0"))
    meta, tensors = read_header(path)
    reader = gguf.GGUFReader(str(path))
    assert [(t.name, t.n_elements, t.n_bytes, t.offset) for t in tensors] == [
        (t.name, int(t.n_elements), int(t.n_bytes), int(t.data_offset)) for t in reader.tensors
    ]
    assert meta["llama.block_count"] == 2 and meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.tokens"] == SkippedArray(5000)
    assert meta["tokenizer.ggml.scores"] == SkippedArray(5000)
    assert set(meta) == set(reader.fields) - {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}


@pytest.mark.model
def test_bundled_model_spec_and_exact_weights(model_path: Path) -> None:
    spec, weights = read_gguf(model_path)
    assert (spec.architecture, spec.n_layer, spec.n_head, spec.n_head_kv[0], spec.head_dim_k) == (
        "llama",
        30,
        9,
        3,
        64,
    )
    assert spec.ctx_train == 8192 and spec.n_vocab == 49152
    assert spec.tied_embeddings  # SmolLM2 has no output.weight
    assert weights.exact and weights.quant == "Q4_1"
    assert weights.total_bytes == 96_576_768  # llama.cpp: "model buffer size = 92.10 MiB"
    embd = 49152 * 576 // 32 * 34  # token_embd.weight is Q8_0 in this Q4_1 file
    assert weights.host_bytes == embd and weights.output_bytes == embd
    assert weights.gpu_bytes == weights.total_bytes  # the tied output copy replaces the CPU-kept input


def test_exact_sizes_of_quantised_tensors(tmp_path: Path) -> None:
    shape = Shape(n_layer=3, n_embd=64, vocab=96, matrix_type="q8_0")
    written = write_model(tmp_path / "m.gguf", shape)
    spec, weights = read_gguf(tmp_path / "m.gguf")
    assert weights.total_bytes == sum(written.bytes.values())
    assert spec.params_total == sum(written.elements.values())
    assert weights.quant == "Q8_0" and not spec.tied_embeddings
    embd = 96 * 64 // 32 * 34
    assert weights.host_bytes == embd
    assert weights.gpu_bytes == weights.total_bytes - embd
    assert weights.decode_bytes == weights.gpu_bytes


def test_moe_expert_tensors_are_counted_apart(tmp_path: Path) -> None:
    shape = Shape(arch="qwen3moe", n_layer=2, experts=(8, 2, 32))
    written = write_model(tmp_path / "moe.gguf", shape)
    spec, weights = read_gguf(tmp_path / "moe.gguf")
    experts = sum(b for name, b in written.bytes.items() if "_exps." in name)
    assert weights.expert_bytes == experts == 2 * 3 * 8 * 32 * 64 * 4
    assert spec.params_expert == experts // 4
    assert weights.decode_bytes == weights.gpu_bytes - experts * 6 // 8
    assert spec.params_active == spec.params_total - spec.params_expert * 6 // 8 - spec.params_embedding


def test_split_gguf_is_summed_from_any_part(tmp_path: Path) -> None:
    shape = Shape(n_layer=4)
    written = write_model(tmp_path / "big.gguf", shape, split_max_tensors=15)
    parts = sorted(p.name for p in tmp_path.glob("big-*.gguf"))
    assert len(parts) > 2 and parts[0] == f"big-00001-of-{len(parts):05d}.gguf"
    for part in parts:
        spec, weights = read_gguf(tmp_path / part)
        assert weights.total_bytes == sum(written.bytes.values())
        assert spec.params_total == sum(written.elements.values())
        assert spec.n_layer == 4
    assert len(split_paths(tmp_path / parts[-1])) == len(parts)


def test_missing_split_part_is_named(tmp_path: Path) -> None:
    write_model(tmp_path / "big.gguf", Shape(n_layer=4), split_max_tensors=15)
    parts = sorted(tmp_path.glob("big-*.gguf"))
    parts[1].unlink()
    with pytest.raises(ConfigError, match=f"missing {parts[1].name}"):
        read_gguf(parts[0])


def test_not_a_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(ConfigError, match=r"^damaged GGUF: no GGUF magic, not a GGUF file"):
        read_gguf(path)
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ConfigError, match="not a GGUF file"):
        read_gguf(tmp_path / "empty.gguf")


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.02])
@pytest.mark.model
def test_truncated_gguf(tmp_path: Path, model_path: Path, keep: float) -> None:
    data = model_path.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ConfigError, match=r"^damaged GGUF: (truncated|.* past the end of the file)"):
        read_gguf(path)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="no such file"):
        read_gguf(Path("/nonexistent/model.gguf"))


def test_swa_pattern_follows_llama_cpp() -> None:
    # llama_hparams::set_swa_pattern: every n-th layer is dense, the last of each group
    assert swa_pattern(6, 6) == [True] * 5 + [False]
    assert swa_pattern(4, 2) == [True, False, True, False]
    assert swa_pattern(8, 4, dense_first=True) == [False, True, True, True] * 2
    assert swa_pattern(3, 0) == [True] * 3


def test_swa_layers_from_an_explicit_pattern_array(tmp_path: Path) -> None:
    flags = [True, False, False, True]
    write_model(
        tmp_path / "p.gguf",
        Shape(arch="gemma3", n_layer=4, swa=512),
        **{"attention.sliding_window_pattern": flags},
    )
    spec, _ = read_gguf(tmp_path / "p.gguf")
    assert list(spec.swa_layers) == flags and spec.sliding_window == 512


def test_unknown_architecture_with_a_window_is_counted_as_full(tmp_path: Path) -> None:
    write_model(tmp_path / "u.gguf", Shape(arch="llama", n_layer=4, swa=256))
    spec, _ = read_gguf(tmp_path / "u.gguf")
    assert spec.sliding_window == 0 and not any(spec.swa_layers)
    assert any("unknown layer pattern" in n for n in spec.notes)


def test_hybrid_recurrent_layers_from_metadata(tmp_path: Path) -> None:
    kv = {
        "block_count": 8,
        "context_length": 262144,
        "embedding_length": 64,
        "feed_forward_length": 0,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
        "attention.key_length": 32,
        "attention.value_length": 32,
        "full_attention_interval": 4,
        "ssm.conv_kernel": 4,
        "ssm.inner_size": 128,
        "ssm.state_size": 16,
        "ssm.group_count": 2,
        "ssm.time_step_rank": 8,
        "expert_count": 4,
        "expert_used_count": 2,
    }
    write_metadata_only(tmp_path / "h.gguf", "qwen3next", kv, {"token_embd.weight": 64 * 10})
    spec, _ = read_gguf(tmp_path / "h.gguf")
    assert spec.kv_layers() == [3, 7]
    assert spec.recurrent is not None and spec.recurrent.n_layers == 6
    assert spec.recurrent.conv_values == 3 * (128 + 2 * 2 * 16)
    assert spec.recurrent.state_values == 16 * 128


def test_mtp_layers_hold_no_kv(tmp_path: Path) -> None:
    kv = {
        "block_count": 5,
        "context_length": 4096,
        "embedding_length": 64,
        "attention.head_count": 4,
        "attention.head_count_kv": [2, 2, 2, 2, 2],
        "nextn_predict_layers": 1,
    }
    write_metadata_only(tmp_path / "n.gguf", "glm4moe", kv, {"token_embd.weight": 640, "output.weight": 640})
    spec, _ = read_gguf(tmp_path / "n.gguf")
    assert spec.kv_layers() == [0, 1, 2, 3]
    assert not spec.tied_embeddings


def test_missing_required_metadata_is_named(tmp_path: Path) -> None:
    write_metadata_only(tmp_path / "x.gguf", "llama", {"embedding_length": 64}, {"token_embd.weight": 64})
    with pytest.raises(ConfigError, match=r"missing llama\.block_count"):
        read_gguf(tmp_path / "x.gguf")

"""Specs with mistakes fail with one clear line naming file:line, through the real CLI (exit code 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from haloserve.cli import main
from haloserve.deploy.examples import example_spec

FOUR = example_spec(4, "spec.yaml")


def _line(text: str, needle: str, nth: int = 1) -> int:
    count = 0
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            count += 1
            if count == nth:
                return i
    raise AssertionError(needle)


def _render(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    code = main(["deploy", "render", str(spec), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    return code, err


CASES = [
    (
        "unknown node",
        FOUR.replace("nodes: [halo3, halo4]", "nodes: [halo3, halo9]"),
        "nodes: [halo3, halo9]",
        "models[1].nodes[1]: unknown node 'halo9' (nodes: halo1, halo2, halo3, halo4)",
    ),
    (
        "duplicate port",
        FOUR.replace("port: 8090", "port: 8080"),
        ("    port: 8080", 2),
        "port 8080 on node halo3 is already used by model qwen3-8b",
    ),
    (
        "unknown key",
        FOUR.replace("    parallel: 2\n", "    parallel: 2\n    paralel: 4\n"),
        "paralel: 4",
        "models[1].paralel: unknown key",
    ),
    (
        "wrong type",
        FOUR.replace("ram: 128 ", "ram: lots ", 1),
        "ram: lots",
        "nodes[0].ram: unknown size unit in 'lots'",
    ),
    (
        "bad enum",
        FOUR.replace("engine: halo", "engine: ollama"),
        "engine: ollama",
        "models[0].engine: Input should be 'llamacpp', 'halo' or 'vllm' (got 'ollama')",
    ),
    (
        "duplicate key",
        FOUR.replace("    parallel: 2\n", "    parallel: 2\n    parallel: 3\n"),
        "parallel: 3",
        "models[1].parallel: duplicate key",
    ),
    (
        "bad YAML",
        FOUR.replace("  port: 8000", "  port: [8000"),
        "  policy: prefix",  # where the parser notices the unclosed bracket
        "not valid YAML",
    ),
    (
        "split without enough nodes",
        FOUR.replace("nodes: [halo3, halo4]", "nodes: [halo3]"),
        "split: rpc",
        "models[1].split: split rpc needs at least 2 nodes",
    ),
    (
        "tensor parallel without rdma",
        FOUR.replace("    rdma:", "    rdma_off:", 1).replace("      interface: enp1s0f0np0\n", "", 1),
        "rdma_off:",
        "unknown key",
    ),
    (
        "ROCm too old",
        FOUR.replace('rocm_version: "7.0"', 'rocm_version: "6.2"'),
        'rocm_version: "6.2"',
        "rocm_version: ROCm 6.2 predates gfx1151 support",
    ),
    (
        "unknown catalog model",
        FOUR.replace("source: qwen3-8b", "source: qwen9-8b"),
        "source: qwen9-8b",
        "unknown model 'qwen9-8b'",
    ),
]


@pytest.mark.parametrize(("name", "text", "at", "message"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.slow
def test_mistake_names_file_line_and_cause(
    name: str,
    text: str,
    at: str | tuple[str, int],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = _render(tmp_path, text, capsys)
    assert code == 2
    assert err.count("\n") == 1, err
    line = _line(text, at) if isinstance(at, str) else _line(text, *at)
    prefix = f"halo deploy: error: {tmp_path / 'spec.yaml'}:{line}: "
    assert err.startswith(prefix), err
    assert message in err, err
    assert not (tmp_path / "out").exists()


def test_tensor_parallel_needs_rdma(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = FOUR.splitlines(keepends=True)
    start = _line(FOUR, "    rdma:", 2) - 1  # halo2's rdma section (6 lines)
    text = "".join(lines[:start] + lines[start + 6 :])
    code, err = _render(tmp_path, text, capsys)
    assert code == 2
    assert f":{_line(text, 'nodes: [halo1, halo2]')}: models[2].nodes[1]: node 'halo2' has no rdma" in err


def test_model_too_big_gives_numbers_and_suggestions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = FOUR.replace("    split: rpc\n", "").replace("nodes: [halo3, halo4]", "nodes: [halo3]")
    code, err = _render(tmp_path, text, capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"spec.yaml:{_line(text, '- name: qwen3-235b')}: model 'qwen3-235b' does not fit node halo3" in err
    assert "needs 141.30 GiB of GPU memory (ctx 65,536, 2 slot(s), KV q8_0) but 120.00 GiB is usable" in err
    assert err.rstrip().endswith("try split: rpc over 2 nodes")  # the weights alone exceed one node


def test_context_too_long_suggests_kv_type_and_context(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = example_spec(1, "spec.yaml").replace("ctx: 524288 ", "ctx: 4194304")
    code, err = _render(tmp_path, text, capsys)
    assert code == 2
    at = _line(text, "- name: qwen3-coder-next")
    assert f"spec.yaml:{at}: model 'qwen3-coder-next' does not fit" in err
    assert "needs 140.70 GiB of GPU memory (ctx 4,194,304, 2 slot(s), KV q8_0)" in err
    assert "but 120.00 GiB is usable" in err
    assert "try split: rpc over 2 nodes; cache_type_k/cache_type_v: q4_1; ctx: 2770944 or less" in err


def test_models_sharing_a_node_are_counted_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = FOUR.replace("nodes: [halo3, halo4]", "nodes: [halo1, halo2]").replace("port: 8090", "port: 8091")
    code, err = _render(tmp_path, text, capsys)
    assert code == 2
    assert "models on node halo1 need" in err and "qwen3-8b 10.40 GiB" in err and "llama-3.3-70b" in err
    assert "move 'llama-3.3-70b' to another node or shrink its ctx/KV type" in err


def test_vllm_heads_that_do_not_divide(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = FOUR.replace("nodes: [halo1, halo2]        #", "nodes: [halo1, halo2, halo3]  #")
    code, err = _render(tmp_path, text, capsys)
    assert code == 2
    assert "vLLM cannot shard Llama-3.3-70B-Instruct 3 ways: 64 attention heads do not divide by 3" in err


def test_not_a_mapping_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _render(tmp_path, "- just\n- a list\n", capsys)
    assert code == 2 and "spec.yaml:1: a deploy spec is a mapping" in err
    assert main(["deploy", "render", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "o")]) == 2
    assert "cannot read" in capsys.readouterr().err

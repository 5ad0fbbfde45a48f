"""``halo plan`` end to end: JSON for scripts, tables for people, one-line errors with exit code 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from haloserve.cli import main
from haloserve.units import GiB


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def plan_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    code, out, err = run([*argv, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def test_issue_example_json(capsys: pytest.CaptureFixture[str]) -> None:
    data = plan_json(
        ["qwen3-30b-a3b", "--ctx", "262144", "--parallel", "2", "--kv-type", "q8_0", "--ram", "128"], capsys
    )
    assert data["model"] == "Qwen3-30B-A3B" and data["fits"] is True
    assert data["kv_cache_bytes"] == 48 * 4 * 128 * 34 // 32 * 2 * 262144
    assert data["usable_bytes"] == GiB // 2 + int(127.5 * GiB) // 2
    assert data["nodes_needed"] == 1 and data["max_context"] >= 262144
    assert data["decode_tokens_per_s_ceiling"] > 0
    assert data["context"]["type_k"] == data["context"]["type_v"] == "q8_0"
    assert data["llama_server_env"]["LLAMA_ARG_CTX_SIZE"] == "262144"
    assert data["source_kind"] == "catalog"


@pytest.mark.model
def test_gguf_json_uses_exact_sizes(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = plan_json([str(model_path)], capsys)
    assert data["source_kind"] == "gguf"
    assert data["memory"]["weights_exact"] is True
    assert data["memory"]["weights_file_bytes"] == 96_576_768
    assert data["context"]["requested"] == 8192  # the trained context by default
    assert data["kv_cache_bytes"] == 30 * 3 * 64 * 2 * 2 * 8192
    assert data["llama_server_env"]["LLAMA_ARG_MODEL"] == str(model_path)


def test_split_gguf_from_any_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.plan.plan_ggufs import Shape, write_model

    written = write_model(tmp_path / "m.gguf", Shape(n_layer=4), split_max_tensors=12)
    parts = sorted(tmp_path.glob("m-*.gguf"))
    data = plan_json([str(parts[-1])], capsys)
    assert data["memory"]["weights_file_bytes"] == sum(written.bytes.values())
    assert data["llama_server_env"]["LLAMA_ARG_MODEL"] == str(parts[0].resolve())


def test_config_json_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    data = plan_json([str(tmp_path), "--quant", "Q8_0", "--ctx", "32k"], capsys)
    assert data["source_kind"] == "config" and data["memory"]["weights_quant"] == "Q8_0"
    assert data["kv_cache_bytes"] == 16 * 8 * 64 * 2 * 2 * 32768


def test_table_output_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["qwen3-8b", "--ctx", "32768", "--ram", "64", "--gpu-limit", "50"], capsys)
    assert code == 0 and err == ""
    for text in (
        "Qwen3-8B",
        "fits",
        "GPU memory",
        "KV cache K (f16)",
        "ceiling",
        "realistic",
        "export LLAMA_ARG_CTX_SIZE=32768",
        "vllm serve Qwen/Qwen3-8B",
        "ttm.pages_limit=",
    ):
        assert text in out


def test_cluster_plan(capsys: pytest.CaptureFixture[str]) -> None:
    data = plan_json(
        ["qwen3-235b-a22b", "--ctx", "32768", "--kv-type", "q8_0", "--gpu-limit", "119.5", "--nodes", "2"],
        capsys,
    )
    assert data["fits"] is True and data["nodes_needed"] == 2
    assert len(data["cluster"]["rpc"]) == 2 and data["cluster"]["tensor_parallel"]["feasible"] is True
    code, out, _ = run(["qwen3-235b-a22b", "--ctx", "32768", "--gpu-limit", "119.5", "--nodes", "2"], capsys)
    assert code == 0
    assert "RPC layer split over 2 nodes" in out and "LLAMA_ARG_RPC=node2:50052" in out


def test_check_exits_1_when_it_does_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["qwen3-235b-a22b", "--ram", "64", "--check"], capsys)
    assert code == 1 and "does not fit" in out
    assert "needs" in out and "--nodes" in out


def test_seed_table(capsys: pytest.CaptureFixture[str]) -> None:
    data = plan_json(["--table"], capsys)
    kv = {row["model"]: (row["seed_kv_gb"], row["kv_gb"]) for row in data["models"]}
    assert kv == {
        "Qwen3-8B": (38.6, 43.5),
        "Qwen3-14B": (42.9, 48.3),
        "Qwen3-30B-A3B": (25.7, 29.0),
        "Qwen3-32B": (68.7, 77.3),
    }
    assert [b["ram"] for b in data["budgets"]] == ["128 GB", "128 GB", "64 GB"]
    assert data["budgets"][1]["os_visible_gib"] == 32.0
    code, out, _ = run(["--table"], capsys)
    assert code == 0 and "43.5" in out and "38.6" in out and "12.5 %" in out and "trained context" in out


def test_catalog_list(capsys: pytest.CaptureFixture[str]) -> None:
    rows = plan_json(["--list"], capsys)
    assert {r["key"] for r in rows} >= {"qwen3-8b", "gpt-oss-120b", "gemma-3-27b", "qwen3-coder-next"}
    code, out, _ = run(["--list"], capsys)
    assert code == 0 and "qwen3-235b-a22b" in out


def test_llama_server_variables_are_read(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA_ARG_CTX_SIZE", "16384")
    monkeypatch.setenv("LLAMA_ARG_CACHE_TYPE_K", "q4_0")
    data = plan_json(["qwen3-4b"], capsys)
    assert data["context"]["requested"] == 16384
    assert (data["context"]["type_k"], data["context"]["type_v"]) == ("q4_0", "f16")
    assert plan_json(["qwen3-4b", "--ctx", "8k"], capsys)["context"]["requested"] == 8192


@pytest.mark.model
def test_verify_against_llama_cpp(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = plan_json([str(model_path), "--ctx", "6000", "-np", "2", "--kv-type", "q8_0", "--verify"], capsys)
    check = data["llama_cpp"]
    assert check["agrees"] is True
    assert abs(check["difference_bytes"]) <= 0.01 * check["planned_kv_bytes"]
    assert check["llama_cpp_model_bytes"] == 96_576_768
    assert check["report"]["n_ctx"] == data["context"]["n_ctx"] == 6144


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


BAD_INPUTS = [
    (lambda t, m: [_write(t, "notes.gguf", b"hello, world")], "not a GGUF file"),
    (lambda t, m: [_write(t, "model.bin", b"\x00" * 64)], "not a GGUF file"),
    (lambda t, m: [_write(t, "cut.gguf", m.read_bytes()[:200_000])], "damaged GGUF: truncated"),
    (lambda t, m: [str(t / "missing.gguf")], "no such file"),
    (lambda t, m: ["qwen3-30b-a2b"], "did you mean qwen3-30b-a3b"),
    (lambda t, m: ["qwen3-8b", "--ram", "-1"], "--ram"),
    (lambda t, m: ["qwen3-8b", "--ram", "100000"], "not a plausible amount"),
    (lambda t, m: ["qwen3-8b", "--os-reserve", "500"], "--os-reserve must leave"),
    (lambda t, m: ["qwen3-8b", "--gpu-limit", "1P"], "--gpu-limit"),
    (lambda t, m: ["qwen3-8b", "--carveout", "-2"], "--carveout"),
    (lambda t, m: ["qwen3-8b", "--ctx", "-5"], "--ctx"),
    (lambda t, m: ["qwen3-8b", "--ctx", "0"], "--ctx"),
    (lambda t, m: ["qwen3-8b", "--ctx", "99999999999"], "beyond"),
    (lambda t, m: ["qwen3-8b", "--parallel", "0"], "--parallel"),
    (lambda t, m: ["qwen3-8b", "--kv-type", "q9"], "unknown KV cache type"),
    (lambda t, m: ["qwen3-8b", "--quant", "Q4_X"], "unknown quantisation"),
    (lambda t, m: ["qwen3-8b", "--gpu-limit", "10", "--ttm-pages", "5"], "not both"),
    (lambda t, m: ["qwen3-8b", "--verify"], "--verify needs a GGUF"),
    (lambda t, m: ["qwen3-8b", "--no-flash-attn", "--kv-type", "q8_0"], "needs flash attention"),
    (lambda t, m: [], "no model given"),
    (lambda t, m: [str(t)], "a directory without config.json"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUTS)
@pytest.mark.model
def test_bad_input_is_one_line_and_exit_2(
    argv,
    message: str,
    tmp_path: Path,
    model_path: Path,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    code, out, err = run(argv(tmp_path, model_path), capsys)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("halo plan: error: ") and message in lines[0], err


@pytest.mark.process
def test_real_process_exit_codes(tmp_path: Path) -> None:
    halo = shutil.which("halo", path=str(Path(sys.executable).parent))
    assert halo is not None
    bad = subprocess.run([halo, "plan", "gpt-oss-12"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == (
        "halo plan: error: unknown model 'gpt-oss-12' (not a file and not in the catalog); "
        "did you mean gpt-oss-120b, gpt-oss-20b?"
    )
    good = subprocess.run([halo, "plan", "gpt-oss-20b", "--json"], capture_output=True, text=True, timeout=60)
    assert good.returncode == 0 and json.loads(good.stdout)["fits"] is True

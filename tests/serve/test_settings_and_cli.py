"""halo serve's settings: llama-server's LLAMA_ARG_* variables, HALO_* names, and one-line CLI errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from haloserve.config import load_settings
from haloserve.config.serve import ServeSettings
from haloserve.server.app import model_alias

SEED_COMPOSE_ENV = {
    "LLAMA_ARG_MODEL": "/models/Qwen3-Coder-Next-Q8_0-00001-of-00003.gguf",
    "LLAMA_ARG_ALIAS": "qwen3-coder-next",
    "LLAMA_ARG_CTX_SIZE": "524288",
    "LLAMA_ARG_N_PARALLEL": "2",
    "LLAMA_ARG_N_GPU_LAYERS": "999",
    "LLAMA_ARG_FLASH_ATTN": "on",
    "LLAMA_ARG_CACHE_TYPE_K": "q8_0",
    "LLAMA_ARG_CACHE_TYPE_V": "q8_0",
    "LLAMA_ARG_MMAP": "false",
    "LLAMA_ARG_BATCH": "2048",
    "LLAMA_ARG_UBATCH": "512",
    "LLAMA_ARG_HOST": "0.0.0.0",
    "LLAMA_ARG_PORT": "8091",
    "LLAMA_ARG_API_KEY": "k1,k2",
    "LLAMA_ARG_TOP_K": "40",
    "LLAMA_ARG_ENDPOINT_METRICS": "true",
}


def test_seed_compose_environment_maps_onto_serve_settings() -> None:
    s = load_settings(ServeSettings, env=SEED_COMPOSE_ENV)
    assert s.model == Path("/models/Qwen3-Coder-Next-Q8_0-00001-of-00003.gguf")
    assert (s.model_alias, s.ctx_size, s.parallel, s.n_gpu_layers) == ("qwen3-coder-next", 524288, 2, -1)
    assert (s.flash_attn, s.cache_type_k, s.cache_type_v, s.mmap) == ("on", "q8_0", "q8_0", False)
    assert (s.batch_size, s.ubatch_size, s.host, s.port, s.top_k) == (2048, 512, "0.0.0.0", 8091, 40)
    assert s.api_key == ["k1", "k2"] and s.metrics is True


def test_defaults_are_safe() -> None:
    s = load_settings(ServeSettings, env={})
    assert (s.host, s.port, s.api_key, s.log_prompts) == ("127.0.0.1", 8080, [], False)


def test_halo_names_win_over_llama_arg() -> None:
    s = load_settings(ServeSettings, env={"LLAMA_ARG_PORT": "1", "HALO_PORT": "2"})
    assert s.port == 2


def test_alias_derivation() -> None:
    assert model_alias("/m/Qwen3-Coder-Next-Q8_0-00001-of-00003.gguf") == "Qwen3-Coder-Next-Q8_0"
    assert model_alias("SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct.Q4_1"


def halo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haloserve", *args], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["serve", "--ctx-size", "lots"], "--ctx-size"),
        (["serve", "--cache-type-k", "q3"], "invalid choice"),
        (["serve", "--parallel", "0"], "--parallel"),
        (["serve", "--bogus"], "unrecognized arguments"),
        (["nosuchcommand"], "invalid choice"),
    ],
)
@pytest.mark.process
def test_bad_flags_are_one_line_and_exit_2(args: list[str], needle: str) -> None:
    r = halo(*args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.process
def test_bad_environment_names_the_variable() -> None:
    import os

    r = halo("serve", env={**os.environ, "LLAMA_ARG_N_PARALLEL": "many"})
    assert r.returncode == 2 and r.stderr.startswith("halo serve: error: LLAMA_ARG_N_PARALLEL:")


@pytest.mark.process
def test_missing_and_invalid_model_files(tmp_path: Path) -> None:
    r = halo("serve", "--model", str(tmp_path / "nope.gguf"), "--port", "0")
    assert r.returncode == 1 and "model file not found" in r.stderr and "Traceback" not in r.stderr
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"definitely not a gguf file" * 10)
    r = halo("serve", "--model", str(junk), "--port", "0")
    assert r.returncode == 1 and "model failed to load" in r.stderr.splitlines()[-1]
    assert "Traceback" not in r.stderr

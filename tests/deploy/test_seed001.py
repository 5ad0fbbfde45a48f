"""Property: the single-node example reproduces what seed 001's compose set-up does, minus the seed's
mistakes listed in ../shared/SEED-ERRATA.md (HSA override on ROCm 7, gfx1100 targets, the TTM formula)."""

from __future__ import annotations

import re
from typing import Any

import yaml

from haloserve.config import load_settings
from haloserve.config.serve import ServeSettings
from haloserve.deploy import RenderedFile
from haloserve.units import PAGES_PER_GIB

Rendered = dict[str, dict[str, RenderedFile]]

# seed 001, "Key Settings" and "ROCm Environment Variables" (the override is errata 7, checked below)
SEED_LLAMA_ARGS = {
    "LLAMA_ARG_CTX_SIZE": "524288",
    "LLAMA_ARG_N_PARALLEL": "2",
    "LLAMA_ARG_N_GPU_LAYERS": "999",
    "LLAMA_ARG_FLASH_ATTN": "on",
    "LLAMA_ARG_CACHE_TYPE_K": "q8_0",
    "LLAMA_ARG_CACHE_TYPE_V": "q8_0",
    "LLAMA_ARG_MMAP": "false",
    "LLAMA_ARG_JINJA": "true",
    "LLAMA_ARG_BATCH": "2048",
    "LLAMA_ARG_UBATCH": "512",
    "LLAMA_ARG_TOP_K": "40",
    "LLAMA_ARG_ENDPOINT_METRICS": "true",
}
SEED_ROCM_ENV = {  # seed 001's set minus HSA_XNACK=1, which gfx1151 ignores (doctor/rocm_env.py)
    "GGML_CUDA_ENABLE_UNIFIED_MEMORY": "1",
    "ROCBLAS_USE_HIPBLASLT": "1",
    "GPU_MAX_HW_QUEUES": "2",
}


def _compose(files: dict[str, RenderedFile], node: str = "halo1") -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(files[f"nodes/{node}/docker-compose.yml"].text)
    return data


def _dotenv(files: dict[str, RenderedFile], node: str = "halo1") -> dict[str, str]:
    lines = files[f"nodes/{node}/.env"].text.splitlines()
    return dict(ln.split("=", 1) for ln in lines if ln and not ln.startswith("#"))


def test_llama_server_service_has_the_seed_settings(rendered: Rendered) -> None:
    svc = _compose(rendered["one"])["services"]["qwen3-coder-next"]
    env = svc["environment"]
    for key, value in {**SEED_LLAMA_ARGS, **SEED_ROCM_ENV}.items():
        assert env.get(key) == value, key
    assert "HSA_XNACK" not in env
    assert env["LLAMA_ARG_MODEL"] == "/models/${MODEL_FILE}" and env["LLAMA_ARG_ALIAS"] == "${MODEL_ALIAS}"
    assert svc["command"] == ["--temp", "1", "--top-p", "0.95", "--min-p", "0.01"]
    assert svc["ports"] == ["8091:8091"]
    assert svc["devices"] == ["/dev/kfd", "/dev/dri"]
    assert svc["group_add"] == ["${VIDEO_GID}", "${RENDER_GID}"]
    assert svc["ipc"] == "host" and svc["security_opt"] == ["seccomp=unconfined"]
    assert svc["restart"] == "unless-stopped"
    assert "/health" in " ".join(svc["healthcheck"]["test"])
    assert svc["volumes"] == ["${MODELS_DIR}:/models:ro"]


def test_dotenv_switches_models_and_holds_the_seed_group_ids(rendered: Rendered) -> None:
    env = _dotenv(rendered["one"])
    assert env["MODEL_FILE"] == "Qwen3-Coder-Next-Q8_0-00001-of-00003.gguf"
    assert env["MODEL_ALIAS"] == "qwen3-coder-next"
    assert (env["VIDEO_GID"], env["RENDER_GID"]) == ("44", "992")


def test_rocm_test_service_in_the_test_profile(rendered: Rendered) -> None:
    svc = _compose(rendered["one"])["services"]["rocm-test"]
    assert svc["profiles"] == ["test"]
    assert svc["command"] == ["/opt/rocm-test/verify-rocm.sh"]
    assert svc["devices"] == ["/dev/kfd", "/dev/dri"] and svc["ipc"] == "host"


def test_hsa_override_only_where_the_rocm_version_needs_it(rendered: Rendered) -> None:
    """Errata 7: 11.0.0 was a ROCm 6.4.1 workaround; ROCm 7 runs gfx1151 natively."""
    for name, files in rendered.items():
        for path, f in files.items():
            if path.endswith("docker-compose.yml"):
                for svc in yaml.safe_load(f.text)["services"].values():
                    env = svc.get("environment") or {}
                    gpu = "/dev/kfd" in svc.get("devices", [])
                    expected = "11.0.0" if name == "four-rocm641" and gpu else None
                    assert env.get("HSA_OVERRIDE_GFX_VERSION") == expected, (name, path)
    assert 'GPU_TARGETS: "gfx1151"' in rendered["one"]["nodes/halo1/docker-compose.yml"].text


def test_ttm_pages_use_4_kib_pages(rendered: Rendered) -> None:
    """Errata 1: pages = GiB x 262144; the seed's GB x 1024 x 1024 / 4.096 is wrong."""
    text = rendered["one"]["nodes/halo1/host-setup.sh"].text
    pages = int(re.search(r"ttm\.pages_limit=(\d+) ttm\.page_pool_size=\1", text).group(1))  # type: ignore[union-attr]
    gib = float(re.search(r"\((\d+(?:\.\d+)?) GiB -> \d+ pages\)", text).group(1))  # type: ignore[union-attr]
    assert pages == round(gib * PAGES_PER_GIB) == 31_326_208
    assert "usermod -aG video,render" in text and "update-grub" in text and "halo doctor" in text


def test_no_seed_mistakes_anywhere(rendered: Rendered) -> None:
    for name, files in rendered.items():
        for path, f in files.items():
            code = "\n".join(ln for ln in f.text.splitlines() if not ln.lstrip().startswith(("#", "//")))
            for wrong in ("gfx1150", "GGHL_MPI", "--mpi-run", "mlxreglim", "vllm[rocm]"):
                assert wrong not in code, (name, path, wrong)
            if "rpc-server" in code:  # errata 4: rpc-server takes -H -p -c, no --n-gpu-layers
                assert "--n-gpu-layers" not in code and "--host" not in code, (name, path)
            assert not re.search(r"sudo echo [^|]*>", code), (name, path)


def test_halo_serve_reads_every_variable_the_compose_file_sets(rendered: Rendered) -> None:
    svc = _compose(rendered["four"])["services"]["qwen3-8b"]
    env = {
        k: v.replace("${MODEL_FILE}", "m.gguf").replace("${MODEL_ALIAS}", "a")
        for k, v in svc["environment"].items()
    }
    settings = load_settings(ServeSettings, env=env)
    assert settings.ctx_size == 65536 and settings.parallel == 4 and settings.cache_type_k == "q8_0"
    assert settings.mmap is False and settings.host == "0.0.0.0" and settings.n_gpu_layers == -1
    known = {n for f in ServeSettings.model_fields for n in ServeSettings.env_names(f)}
    assert {k for k in env if k.startswith("LLAMA_ARG_")} <= known

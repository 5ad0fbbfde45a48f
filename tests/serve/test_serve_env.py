"""Every LLAMA_ARG_*/HALO_* variable halo serve sees is used, refused in one line, or named in a warning
(issue 12, items 2 and 7): the rules, and the real `halo plan`/`halo deploy` output run through them."""

from __future__ import annotations

import pytest

from haloserve.bundled import bundled_model_path
from haloserve.config import load_settings
from haloserve.config.serve import ServeSettings
from haloserve.config.serve_env import (
    FIXED,
    NO_EFFECT,
    check_build,
    check_environ,
    check_settings,
    env_warnings,
    serve_environ,
)
from haloserve.engine.llama_params import context_params, model_params
from haloserve.errors import ConfigError
from tests.serve.conftest import halo, plan_env

SERVE_ENV = {v for f in ServeSettings.model_fields for v in ServeSettings.env_names(f)}


def settings_from(env: dict[str, str]) -> ServeSettings:
    """What `halo serve` makes of an environment (the same calls as cli/serve.py)."""
    check_environ(env)
    s = load_settings(ServeSettings, env=serve_environ(env))
    check_settings(s)
    return s


@pytest.mark.process
def test_plan_past_the_trained_context_reaches_the_context_params() -> None:
    env = plan_env("--ctx-size", "32768")  # 4x SmolLM2's trained 8192: YaRN factor 4
    assert env["LLAMA_ARG_ROPE_SCALING_TYPE"] == "yarn"
    assert set(env) <= SERVE_ENV | set(NO_EFFECT) | set(FIXED)  # nothing halo serve does not know
    assert env_warnings(env) == [f"LLAMA_ARG_CACHE_RAM is ignored: {NO_EFFECT['LLAMA_ARG_CACHE_RAM']}"]
    s = settings_from(env)
    ctx = context_params(s, n_ctx_train=8192)
    assert (ctx.rope_scaling, ctx.rope_freq_scale, ctx.yarn_orig_ctx) == ("yarn", 0.25, 8192)
    assert (ctx.n_ctx, ctx.flash_attn, ctx.type_k, ctx.type_v) == (32768, "on", "f16", "f16")
    assert (ctx.n_batch, ctx.n_ubatch) == (int(env["LLAMA_ARG_BATCH"]), int(env["LLAMA_ARG_UBATCH"]))
    assert model_params(s).n_gpu_layers == -1


def test_deploy_renders_halo_serve_env_it_fully_understands() -> None:
    from haloserve.deploy import check_fit, load_spec_text
    from haloserve.deploy.layout import build_layout

    spec = """
nodes:
  - {name: a, address: 10.1.0.1, ram: 128}
models:
  - {name: m, source: qwen3-8b, file: Qwen3-8B-Q4_K_M.gguf, nodes: [a], engine: halo, ctx: 131072,
     parallel: 1}
"""
    doc = load_spec_text(spec)
    layout = build_layout(doc.spec, check_fit(doc.spec))
    service = layout.nodes[0].services[0]
    env = {e.name: e.value for e in service.env if e.name.startswith(("LLAMA_ARG_", "HALO_"))}
    env["LLAMA_ARG_MODEL"] = str(bundled_model_path())  # the .env's ${MODEL_FILE}, resolved here
    assert env["LLAMA_ARG_ROPE_SCALING_TYPE"] == "yarn"
    assert env_warnings(env) == []
    s = settings_from(env)
    ctx = context_params(s, n_ctx_train=40960)
    assert ctx.rope_scaling == "yarn" and ctx.rope_freq_scale == 1 / float(env["LLAMA_ARG_ROPE_SCALE"])
    assert ctx.yarn_orig_ctx == int(env["LLAMA_ARG_YARN_ORIG_CTX"]) and ctx.n_ctx == 131072
    assert s.mmap is False and s.top_k == int(env.get("LLAMA_ARG_TOP_K", s.top_k))


@pytest.mark.process
def test_rpc_workers_that_do_not_answer_are_one_line_before_anything_loads() -> None:
    env = plan_env("--ctx-size", "16384", "--nodes", "2")
    assert "LLAMA_ARG_RPC" in env and "LLAMA_ARG_TENSOR_SPLIT" in env
    r = halo("serve", "--port", "0", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "--rpc" in errors[0], r.stderr
    r = halo("serve", "--rpc", "127.0.0.1:1", "--port", "0")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--rpc" in r.stderr, r.stderr


def test_llama_server_negative_switches() -> None:
    assert load_settings(ServeSettings, env=serve_environ({"LLAMA_ARG_NO_MMAP": "1"})).mmap is False
    no_offload = serve_environ({"LLAMA_ARG_NO_KV_OFFLOAD": "true"})
    assert load_settings(ServeSettings, env=no_offload).kv_offload is False
    both = {"LLAMA_ARG_NO_MMAP": "1", "LLAMA_ARG_MMAP": "true"}  # the positive variable wins
    assert load_settings(ServeSettings, env=serve_environ(both)).mmap is True
    assert env_warnings({"LLAMA_ARG_NO_MMAP": "1"}) == []


def test_unknown_variables_are_named_other_commands_are_left_alone() -> None:
    env = {
        "LLAMA_ARG_FOO": "1",
        "HALO_BOGUS": "x",
        "HALO_BACKENDS": "http://a:1",  # halo gateway's
        "HALO_CHECK": "kernel",  # halo doctor's
        "HALO_CTX_SIZE": "4096",  # halo serve's own
        "LLAMA_ARG_ROPE_FREQ_BASE": "50000",
        "PATH": "/bin",
    }
    warnings = env_warnings(env)
    assert len(warnings) == 2
    assert warnings[0].startswith("HALO_BOGUS is not a halo serve setting")
    assert warnings[1].startswith("LLAMA_ARG_FOO is not a halo serve setting")


@pytest.mark.parametrize(
    ("env", "needle"),
    [({"LLAMA_ARG_FIT": "on"}, "never shrinks"), ({"LLAMA_ARG_JINJA": "false"}, "Jinja chat template")],
)
def test_llama_server_only_values_it_cannot_honour_are_refused(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        check_environ(env)
    check_environ({"LLAMA_ARG_FIT": "off", "LLAMA_ARG_JINJA": "true"})  # what halo serve does anyway


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"LLAMA_ARG_RPC": "h:1,h:1"}, "given twice"),
        ({"LLAMA_ARG_RPC": "h:x"}, "not a number"),
        ({"LLAMA_ARG_RPC": "h:1", "LLAMA_ARG_SPLIT_MODE": "row"}, "whole layers"),
        ({"LLAMA_ARG_RPC": "h:1", "HALO_ENGINE": "fake"}, "fake engine"),
        ({"LLAMA_ARG_SWA_FULL": "false"}, "sliding-window"),
        ({"LLAMA_ARG_ROPE_SCALE": "4", "LLAMA_ARG_ROPE_FREQ_SCALE": "0.5"}, "disagree"),
    ],
)
def test_settings_it_cannot_honour_are_refused(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        settings_from(env)


def test_rope_scale_is_the_inverse_frequency_scale() -> None:
    s = settings_from({"LLAMA_ARG_ROPE_SCALE": "4", "LLAMA_ARG_ROPE_FREQ_SCALE": "0.25"})
    assert context_params(s, 8192).rope_freq_scale == 0.25
    assert context_params(settings_from({}), 8192).rope_freq_scale == 0.0  # the model's own


def test_tensor_split_spellings() -> None:
    for env in ({"LLAMA_ARG_TENSOR_SPLIT": "3,1"}, {"LLAMA_ARG_TENSOR_SPLIT": "3/1"}):
        assert settings_from(env).tensor_split == [3.0, 1.0]
    assert load_settings(ServeSettings, flags={"tensor_split": ["3,1"]}).tensor_split == [3.0, 1.0]
    assert model_params(settings_from({"LLAMA_ARG_TENSOR_SPLIT": "3/1"})).tensor_split == (3.0, 1.0)


def test_build_checks() -> None:
    split = settings_from({"LLAMA_ARG_TENSOR_SPLIT": "1,1"})
    with pytest.raises(ConfigError, match=r"2 parts but this llama\.cpp build has 0 GPU"):
        check_build(split, [], True)
    assert check_build(split, ["ROCm0", "ROCm1"], True) == []
    with pytest.raises(ConfigError, match="no GPU device"):
        check_build(settings_from({"LLAMA_ARG_SPLIT_MODE": "row"}), [], True)
    with pytest.raises(ConfigError, match="--main-gpu 1"):
        check_build(settings_from({"LLAMA_ARG_MAIN_GPU": "1"}), ["ROCm0"], True)
    with pytest.raises(ConfigError, match="cannot lock memory"):
        check_build(settings_from({"LLAMA_ARG_MLOCK": "true"}), [], False)


def test_ngl_on_a_cpu_only_build_warns_only_when_asked_for() -> None:
    assert check_build(settings_from({}), [], True) == []  # the default (-1) asks for nothing explicitly
    warned = check_build(settings_from({"LLAMA_ARG_N_GPU_LAYERS": "999"}), [], True)
    assert len(warned) == 1 and "no GPU backend" in warned[0]
    assert check_build(settings_from({"LLAMA_ARG_N_GPU_LAYERS": "20"}), ["Vulkan0"], True) == []
    assert check_build(settings_from({"LLAMA_ARG_N_GPU_LAYERS": "0"}), [], True) == []


def test_rpc_tensor_split_has_one_part_per_device_workers_first() -> None:
    env = {"LLAMA_ARG_RPC": "10.0.0.2:50052,10.0.0.3:50052"}
    assert settings_from({**env, "LLAMA_ARG_RPC": "a:1, b:2"}).rpc == ["a:1", "b:2"]
    assert load_settings(ServeSettings, flags={"rpc": ["a:1,b:2", "c:3"]}).rpc == ["a:1", "b:2", "c:3"]
    three = settings_from({**env, "LLAMA_ARG_TENSOR_SPLIT": "1,1,2"})
    assert check_build(three, ["ROCm0"], True, rpc_devices=2) == []  # 2 workers' devices + 1 local GPU
    with pytest.raises(ConfigError, match=r"3 parts but there are 2 devices: 2 on the --rpc workers"):
        check_build(three, [], True, rpc_devices=2)
    assert check_build(settings_from(env), [], True, rpc_devices=2) == []  # no split: by free memory
    warned = check_build(settings_from({**env, "LLAMA_ARG_N_GPU_LAYERS": "0"}), [], True, rpc_devices=2)
    assert len(warned) == 1 and "workers get none" in warned[0]

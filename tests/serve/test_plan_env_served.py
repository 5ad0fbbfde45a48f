"""`halo serve` started with the environment `halo plan` prints: nothing dropped, YaRN on, the backend
named (issue 12, items 2 and 7). /props reports what the context was built with."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from haloserve.engine.devices import gpu_devices, list_devices
from haloserve.engine.llamacpp import init_backend
from haloserve.testing.remote import RemoteServer
from tests.serve.conftest import plan_env

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def planned() -> Iterator[tuple[dict[str, str], RemoteServer]]:
    env = plan_env("--ctx-size", "16384")  # twice SmolLM2's trained 8192: YaRN factor 2
    with RemoteServer(["--threads", "2"], env=env) as srv:
        yield env, srv


def test_every_planned_setting_reaches_the_context(planned: tuple[dict[str, str], RemoteServer]) -> None:
    env, srv = planned
    props = httpx.get(srv.url + "/props", timeout=30).json()
    ctx = props["context"]
    assert ctx["rope_scaling"] == env["LLAMA_ARG_ROPE_SCALING_TYPE"] == "yarn"
    assert ctx["rope_freq_scale"] == 1 / float(env["LLAMA_ARG_ROPE_SCALE"]) == 0.5  # llama.cpp's own log
    assert ctx["yarn_orig_ctx"] == int(env["LLAMA_ARG_YARN_ORIG_CTX"]) == 8192
    assert ctx["rope_freq_base"] == 100000.0  # the model's own: the plan does not override it
    assert ctx["n_ctx"] == int(env["LLAMA_ARG_CTX_SIZE"]) == 16384
    assert (ctx["type_k"], ctx["type_v"]) == (env["LLAMA_ARG_CACHE_TYPE_K"], env["LLAMA_ARG_CACHE_TYPE_V"])
    assert ctx["flash_attn"] == env["LLAMA_ARG_FLASH_ATTN"]
    assert props["total_slots"] == int(env["LLAMA_ARG_N_PARALLEL"])
    log = srv.log_tail(200)
    assert "is not a halo serve setting" not in log  # every variable the plan printed is known
    assert "LLAMA_ARG_CACHE_RAM is ignored:" in log  # the one llama-server-only knob is named, not dropped
    reply = srv.client().chat.completions.create(
        model=props["model_alias"], messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
    )
    assert reply.usage is not None and reply.usage.completion_tokens >= 1


def test_backend_devices_layers_and_kv_location(planned: tuple[dict[str, str], RemoteServer]) -> None:
    _, srv = planned
    backend = httpx.get(srv.url + "/props", timeout=30).json()["backend"]
    names = [d["name"] for d in backend["devices"]]
    assert "CPU" in names and all(d["backend"] for d in backend["devices"])
    assert backend["n_layers"] == 31  # SmolLM2-135M: 30 blocks + the output layer, as llama.cpp counts
    init_backend()
    log = srv.log_tail(200)
    banner = next(line for line in log.splitlines() if line.strip().startswith("backend "))
    if gpu_devices(list_devices()):  # a GPU build (a device check): -ngl 999 puts everything there
        assert backend["n_gpu_layers"] == backend["n_layers"]
        assert "no GPU backend" not in log
    else:  # this CPU-only machine: the plan's -ngl 999 is warned about, and everything is on the CPU
        assert backend["n_gpu_layers"] == 0 and names == ["CPU"]
        assert set(backend["kv_cache"]) == {"CPU"} and backend["kv_cache"]["CPU"] > 0
        assert "warning: -ngl asks for all layers on a GPU but this llama.cpp build has no GPU backend" in log
        assert "CPU [CPU]" in banner and "0/31 layers on GPU" in banner and "KV cache on CPU" in banner

"""Smaller rules of the spec and the render: paths, registry, vLLM ids, sampling, halo serve settings."""

from __future__ import annotations

import pytest
import yaml

from haloserve.deploy import SpecError, check_fit, load_spec_text, render_files
from haloserve.deploy.layout import build_layout

BASE = """
nodes:
  - {name: a, address: 10.1.0.1, ram: 128}
models:
  - {name: m, source: qwen3-8b, file: Qwen3-8B-Q4_K_M.gguf, nodes: [a]}
"""


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "file: Qwen3-8B-Q4_K_M.gguf",
            "file: /abs/Qwen3-8B.gguf",
            "models[0].file: '/abs/Qwen3-8B.gguf' is not a relative",
        ),
        (
            "file: Qwen3-8B-Q4_K_M.gguf",
            "file: ../up/Qwen3-8B.gguf",
            "models[0].file: '../up/Qwen3-8B.gguf' is not a plain",
        ),
        (
            "file: Qwen3-8B-Q4_K_M.gguf",
            "file: notes.txt",
            "models[0].file: 'notes.txt' is not a relative path to a .gguf",
        ),
        ("address: 10.1.0.1", "address: http://10.1.0.1", "nodes[0].address: 'http://10.1.0.1' is neither"),
        ("{name: a,", "{name: A_1,", "nodes[0].name: String should match"),
        ("ram: 128}", "ram: 128, labels: {'bad key': x}}", "nodes[0].labels"),
        (
            "ram: 128}",
            "ram: 128, models_dir: models}",
            "nodes[0].models_dir: 'models' is not an absolute path",
        ),
        ("file: Qwen3-8B-Q4_K_M.gguf,", "", "models[0]: engine llamacpp needs file:"),
    ],
)
def test_field_rules(old: str, new: str, message: str) -> None:
    assert old in BASE
    with pytest.raises(SpecError) as err:
        load_spec_text(BASE.replace(old, new), "s.yaml")
    assert message in err.value.message
    assert err.value.message.startswith("s.yaml:")


def test_registry_gets_its_slash() -> None:
    doc = load_spec_text(BASE + "images: {registry: registry.lan:5000, tag: v1}\n")
    compose = render_files(doc.spec)["nodes/a/docker-compose.yml"].text
    assert 'image: "registry.lan:5000/halo-llamacpp-rocm:v1"' in compose


def test_vllm_needs_a_hugging_face_id_for_a_local_gguf(tmp_path: object) -> None:
    from haloserve.bundled import bundled_model_path

    text = BASE.replace(
        "source: qwen3-8b, file: Qwen3-8B-Q4_K_M.gguf", f"source: {bundled_model_path()}, engine: vllm"
    )
    doc = load_spec_text(text, "s.yaml")
    with pytest.raises(SpecError) as err:
        check_fit(doc.spec, doc.where, doc.lines)
    assert "models[0]: vLLM loads a Hugging Face model: set hf:" in err.value.message


def test_vllm_gets_default_sampling_as_generation_config() -> None:
    text = BASE.replace("file: Qwen3-8B-Q4_K_M.gguf,", "engine: vllm, sampling: {temp: 0.7, top_k: 20},")
    files = render_files(load_spec_text(text).spec)
    command = yaml.safe_load(files["nodes/a/docker-compose.yml"].text)["services"]["m"]["command"]
    i = command.index("--override-generation-config")
    assert command[i + 1] == '{"temperature":0.7,"top_k":20}'
    assert command[:3] == ["vllm", "serve", "Qwen/Qwen3-8B"] and "--served-model-name" in command


def test_halo_serve_gets_the_plans_rope_scaling() -> None:
    # halo serve honours YaRN now (issue 12): the plan's RoPE variables reach its service, no gap warning
    text = BASE.replace("nodes: [a]", "nodes: [a], engine: halo, ctx: 131072")  # past the trained context
    doc = load_spec_text(text)
    layout = build_layout(doc.spec, check_fit(doc.spec))
    assert not any("halo serve has no option" in w for w in layout.warnings)
    env = {e.name: e.value for e in layout.nodes[0].services[0].env}
    assert env["LLAMA_ARG_ROPE_SCALING_TYPE"] == "yarn"
    assert {"LLAMA_ARG_ROPE_SCALE", "LLAMA_ARG_YARN_ORIG_CTX"} <= set(env)


THREE = """
nodes:
  - {name: a, address: 10.1.0.1, ram: 128}
  - {name: b, address: 10.1.0.2, ram: 128}
  - {name: c, address: 10.1.0.3, ram: 96}
models:
  - {name: big, source: qwen3-32b, quant: Q8_0, file: big.gguf, nodes: [a], ctx: 65536}
  - name: small
    source: qwen3-8b
    file: small.gguf
    port: 8081
    replicas: 2
"""


def test_replicas_go_where_the_most_memory_is_left() -> None:
    fit = check_fit(load_spec_text(THREE).spec)
    small = next(p for p in fit.placements if p.model.name == "small")
    assert small.model.nodes == ["b", "c"]  # a holds the 32B model: 71 GiB left, c 88 GiB, b 120 GiB
    assert [p.model.name for p in fit.placements] == ["big", "small"]  # spec order is kept
    files = render_files(load_spec_text(THREE).spec, fit)
    assert "small" in yaml.safe_load(files["nodes/c/docker-compose.yml"].text)["services"]
    assert "small" not in yaml.safe_load(files["nodes/a/docker-compose.yml"].text)["services"]


def test_replicas_skip_nodes_whose_port_is_taken() -> None:
    text = THREE.replace("    port: 8081\n", "    port: 8080\n").replace(
        "replicas: 2", "replicas: 2\n    nodes: [a, b]"
    )
    with pytest.raises(SpecError) as err:
        check_fit(load_spec_text(text, "s.yaml").spec, "s.yaml", load_spec_text(text, "s.yaml").lines)
    message = err.value.message
    assert message.startswith(f"s.yaml:{text.splitlines().index('    replicas: 2') + 1}: models[1]: ")
    assert "2 replica(s) of 'small' need" in message and "a: port 8080 taken; b " in message


def test_replicas_that_do_not_fit_anywhere() -> None:
    text = THREE.replace("source: qwen3-8b", "source: qwen3-32b\n    quant: Q8_0\n    ctx: 163840")
    with pytest.raises(SpecError) as err:
        check_fit(load_spec_text(text.replace("replicas: 2", "replicas: 3")).spec)
    assert "3 replica(s) of 'small' need 72.96 GiB each but only 2 of 3 candidate node(s) have room" in str(
        err.value.message
    )
    assert "(a 71.04 GiB free; b 120.00 GiB free; c 88.00 GiB free)" in err.value.message


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    replicas: 2\n", "", "models[1]: give nodes: (where it runs) or replicas:"),
        ("replicas: 2", "replicas: 4", "models[1].replicas: 4 replicas but 3 candidate node(s)"),
        (
            "replicas: 2",
            "replicas: 2\n    split: rpc\n    nodes: [a, b]",
            "split model runs once over its nodes",
        ),
    ],
)
def test_replica_rules(old: str, new: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec_text(THREE.replace(old, new), "s.yaml")
    assert message in err.value.message

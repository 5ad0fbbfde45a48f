"""Smaller rules of the spec and the render: paths, registry, vLLM ids and sampling, halo serve gaps."""

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
        ("file: Qwen3-8B-Q4_K_M.gguf", "file: /abs/Qwen3-8B.gguf", "models[0].file: String should match"),
        ("file: Qwen3-8B-Q4_K_M.gguf", "file: ../up/Qwen3-8B.gguf", "models[0].file: file must stay inside"),
        ("file: Qwen3-8B-Q4_K_M.gguf", "file: notes.txt", "models[0].file: String should match"),
        ("address: 10.1.0.1", "address: http://10.1.0.1", "nodes[0].address: String should match"),
        ("{name: a,", "{name: A_1,", "nodes[0].name: String should match"),
        ("ram: 128}", "ram: 128, labels: {'bad key': x}}", "nodes[0].labels"),
        ("ram: 128}", "ram: 128, models_dir: models}", "nodes[0].models_dir: String should match"),
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


def test_halo_serve_gaps_are_warned() -> None:
    text = BASE.replace("nodes: [a]", "nodes: [a], engine: halo, ctx: 131072")  # past the trained context
    doc = load_spec_text(text)
    layout = build_layout(doc.spec, check_fit(doc.spec))
    assert any("halo serve has no option for LLAMA_ARG_ROPE_SCALE" in w for w in layout.warnings)

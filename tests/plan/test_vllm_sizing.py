"""vLLM's ``--gpu-memory-utilization`` comes from the weights vLLM loads, per node, or is refused.

The issue's cases: ``halo plan llama-3.3-70b --nodes 4`` printed 0.34 (sized from the Q4_K_M GGUF while
the line loads the BF16 repo), and ``halo deploy`` rendered 0.22 for a 2-node tensor-parallel 70B at 32k.
"""

from __future__ import annotations

import json

import pytest

from haloserve.cli import main
from haloserve.deploy import SpecError, check_fit, load_spec_text, render_files
from haloserve.units import GiB


def plan(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    code = main(["plan", *argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def util_of(args: list[str]) -> float:
    return float(args[args.index("--gpu-memory-utilization") + 1])


def test_plan_70b_on_four_nodes_loads_bf16(capsys: pytest.CaptureFixture[str]) -> None:
    tuned = plan(["llama-3.3-70b", "--nodes", "4", "--gpu-limit", "119.5"], capsys)
    assert util_of(tuned["vllm_args"]) >= 0.38
    v = tuned["vllm"]
    assert v["quant"] == "bf16" and tuned["context"]["per_slot"] == 131072
    # 70.6 B parameters x 2 bytes / 4 = 32.9 GiB a node, and 40 GiB of KV cache / 4 = 10 GiB
    assert 32.5 * GiB < v["per_node"]["weights_bytes"] < 33.2 * GiB
    assert v["per_node"]["kv_bytes"] == 10 * GiB
    assert util_of(tuned["vllm_args"]) >= 0.38 and v["fits"]
    assert util_of(tuned["vllm_args"]) * tuned["usable_bytes"] >= v["per_node"]["per_node_bytes"]
    # with the kernel's default TTM limit the same need is a larger share of a smaller budget
    default = plan(["llama-3.3-70b", "--nodes", "4"], capsys)
    assert util_of(default["vllm_args"]) > util_of(tuned["vllm_args"]) >= 0.38
    assert default["cluster"]["tensor_parallel"]["per_node_bytes"] == v["per_node"]["per_node_bytes"]


def test_plan_refuses_vllm_with_numbers_when_it_does_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    data = plan(["llama-3.3-70b", "--ctx", "32768", "--gpu-limit", "119.5"], capsys)
    assert data["fits"]  # llama.cpp's Q4_K_M fits one node ...
    assert data["vllm"]["fits"] is False and data["vllm_args"] == []  # ... vLLM's BF16 (131 GiB) does not
    assert "vLLM needs 144." in data["vllm"]["problem"] and "BF16 weights 131." in data["vllm"]["problem"]
    assert main(["plan", "llama-3.3-70b", "--ctx", "32768", "--gpu-limit", "119.5"]) == 0
    out = capsys.readouterr().out
    assert "does not fit: vLLM needs" in out and "vllm serve" not in out


def test_a_quantised_repo_or_quant_is_sized_as_such(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["llama-3.3-70b", "--ctx", "32768", "--gpu-limit", "119.5"]
    awq = plan([*base, "--vllm-model", "casperhansen/llama-3.3-70b-instruct-awq"], capsys)
    assert awq["vllm"]["quant"] == "awq" and awq["vllm"]["fits"]
    assert awq["vllm_args"][2] == "casperhansen/llama-3.3-70b-instruct-awq"
    # 4 bits + group scales for the linear layers, 16-bit embeddings: ~37 GiB instead of 131
    assert 36 * GiB < awq["vllm"]["weights_bytes"] < 39 * GiB
    fp8 = plan([*base, "--vllm-quant", "FP8"], capsys)
    assert fp8["vllm"]["quant"] == "fp8" and 65 * GiB < fp8["vllm"]["weights_bytes"] < 68 * GiB
    from haloserve.planner.vllm import vllm_format

    assert vllm_format("Qwen/Qwen3-32B-GPTQ-Int8", None)[0] == "gptq-int8"
    assert vllm_format("RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic", None)[0] == "fp8"
    assert vllm_format("meta-llama/Llama-3.3-70B-Instruct", None)[0] == "bf16"


def test_a_gguf_quant_for_vllm_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "llama-3.3-70b", "--vllm-quant", "Q4_K_M"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("halo plan: error: vLLM loads Hugging Face checkpoints: 'Q4_K_M'")
    assert "\n" not in err


SPEC = """
nodes:
  - {name: a, address: 10.1.0.1, ram: 128, rdma: {interface: enp1s0f0np0, ip: 10.0.1.1/24}}
  - {name: b, address: 10.1.0.2, ram: 128, rdma: {interface: enp1s0f0np0, ip: 10.0.1.2/24}}
models:
  - {name: big, source: llama-3.3-70b, engine: vllm, split: tensor-parallel, nodes: [a, b], ctx: 32768}
"""


def test_deploy_two_node_tensor_parallel_70b_at_32k() -> None:
    files = render_files(load_spec_text(SPEC, "spec.yaml").spec)
    head = next(f.text for p, f in files.items() if p.endswith("big-ray-head.sh"))
    line = next(x for x in head.splitlines() if x.startswith("exec vllm serve"))
    util = util_of(line.split())
    # BF16 65.7 GiB + KV 5 GiB + activations and runtime per node of a 120 GiB budget
    assert util >= 0.57
    fit = check_fit(load_spec_text(SPEC, "spec.yaml").spec)
    assert fit.nodes["a"].used["big"] == fit.placements[0].plan.vllm.tp.per_node_bytes
    assert fit.nodes["a"].used["big"] <= util * fit.nodes["a"].budget.usable_bytes


def test_deploy_refuses_a_vllm_model_that_does_not_fit() -> None:
    one_node = SPEC.replace("split: tensor-parallel, nodes: [a, b]", "nodes: [a]")
    with pytest.raises(SpecError) as info:
        check_fit(load_spec_text(one_node, "spec.yaml").spec, "spec.yaml")
    message = str(info.value)
    assert message.startswith("spec.yaml:") and "vLLM needs" in message and "BF16 weights 131." in message
    assert "try more nodes in a tensor-parallel split" in message and "\n" not in message
    awq = SPEC.replace("engine: vllm,", "engine: vllm, hf: casperhansen/llama-3.3-70b-instruct-awq,")
    assert check_fit(load_spec_text(awq, "spec.yaml").spec).placements[0].plan.vllm.quant == "awq"
    gguf = SPEC.replace("engine: vllm,", "engine: vllm, quant: Q4_K_M,")
    with pytest.raises(SpecError, match="models\\[0\\]: vLLM loads Hugging Face checkpoints: 'Q4_K_M'"):
        check_fit(load_spec_text(gguf, "spec.yaml").spec, "spec.yaml")

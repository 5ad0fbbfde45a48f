"""Composing a plan: verdict, largest context, KV type that fits, nodes, split, settings, warnings."""

from __future__ import annotations

import pytest

from haloserve.errors import ConfigError
from haloserve.planner import PlanInputs, lookup, memory_for, node_budget, plan_model
from haloserve.planner.cluster import layer_owner, nodes_needed, rpc_split, tensor_parallel
from haloserve.planner.memory import kv_layer_bytes
from haloserve.planner.plan import kv_type_that_fits, max_context, node_need_bytes
from haloserve.planner.weights import estimate_weights
from haloserve.units import GiB


def model(key: str, quant: str | None = None):  # type: ignore[no-untyped-def]
    entry = lookup(key)
    spec = entry.spec()
    return spec, estimate_weights(spec, quant or entry.default_quant)


TUNED_128 = node_budget(128 * GiB, gpu_limit_bytes=int(119.5 * GiB))


def test_issue_example_fits_and_reports_the_json_keys() -> None:
    spec, w = model("qwen3-30b-a3b")
    inputs = PlanInputs(ctx=262144, parallel=2, type_k="q8_0", type_v="q8_0")
    plan = plan_model(spec, w, node_budget(128 * GiB), inputs)
    data = plan.to_dict()
    for key in (
        "weights_bytes",
        "kv_cache_bytes",
        "compute_buffer_bytes",
        "total_bytes",
        "usable_bytes",
        "fits",
        "max_context",
        "nodes_needed",
        "decode_tokens_per_s_ceiling",
    ):
        assert key in data
    assert data["fits"] is True and data["nodes_needed"] == 1
    # 48 layers x 4 KV heads x 128 x (34/32 bytes) x 2 (K, V) x 262,144 cells
    assert data["kv_cache_bytes"] == 48 * 4 * 128 * 34 // 32 * 2 * 262144
    assert data["total_bytes"] == (
        data["weights_bytes"] + data["kv_cache_bytes"] + data["compute_buffer_bytes"] + 1 * GiB
    )
    assert data["headroom_bytes"] == data["usable_bytes"] - data["total_bytes"]
    assert data["context"]["per_slot"] == 131072 and data["context"]["streams"] == 2
    assert any("past the model's trained context" in x for x in data["warnings"])


def test_max_context_is_the_boundary() -> None:
    spec, w = model("qwen3-32b", "Q8_0")
    inputs = PlanInputs(parallel=2, type_k="q4_0", type_v="q4_0")
    usable = TUNED_128.usable_bytes
    best = max_context(spec, w, inputs, usable)
    assert best % 512 == 0 and best > 0
    assert node_need_bytes(spec, w, inputs, best) <= usable < node_need_bytes(spec, w, inputs, best + 512)
    plan = plan_model(spec, w, TUNED_128, PlanInputs(ctx=best, parallel=2, type_k="q4_0", type_v="q4_0"))
    assert plan.fits and plan.max_context == best
    assert not plan_model(
        spec, w, TUNED_128, PlanInputs(ctx=best + 512, parallel=2, type_k="q4_0", type_v="q4_0")
    ).fits


def test_max_context_is_zero_when_the_weights_alone_do_not_fit() -> None:
    spec, w = model("qwen3-235b-a22b", "Q8_0")
    assert max_context(spec, w, PlanInputs(), TUNED_128.usable_bytes) == 0


def test_kv_type_that_fits_is_the_best_quality_one() -> None:
    spec, w = model("qwen3-32b", "Q4_K_M")
    budget = node_budget(64 * GiB, gpu_limit_bytes=44 * GiB)
    inputs = PlanInputs(ctx=131072)
    best = kv_type_that_fits(spec, w, inputs, budget.usable_bytes)
    assert best in ("q8_0", "q5_1", "q5_0", "q4_1", "iq4_nl", "q4_0")
    assert (
        memory_for(spec, w, PlanInputs(ctx=131072, type_k=best, type_v=best)).total_bytes
        <= budget.usable_bytes
    )
    assert memory_for(spec, w, inputs).total_bytes > budget.usable_bytes  # f16 does not fit
    plan = plan_model(spec, w, budget, inputs)
    assert not plan.fits and plan.kv_type_that_fits == best
    assert any(f"KV type {best} would fit" in x for x in plan.warnings)


def test_quantised_v_needs_flash_attention() -> None:
    with pytest.raises(ConfigError, match="needs flash attention"):
        PlanInputs(type_v="q8_0", flash_attn=False)
    spec, w = model("qwen3-8b")
    assert kv_type_that_fits(spec, w, PlanInputs(flash_attn=False), 10**15) == "f16"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ctx": 0}, "--ctx"),
        ({"ctx": 10**9}, "beyond"),
        ({"parallel": 0}, "--parallel"),
        ({"nodes": 65}, "--nodes"),
        ({"type_k": "q9"}, "unknown KV cache type"),
    ],
)
def test_plan_inputs_are_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PlanInputs(**kwargs)  # type: ignore[arg-type]


def test_layer_owner_follows_llama_cpp_even_split() -> None:
    # llama.cpp counts the output layer as layer n_layer and splits n_layer + 1 evenly
    owners = [layer_owner(il, 47, 2) for il in range(48)]
    assert owners.count(0) == 24 and owners.count(1) == 24 and owners[47] == 1
    assert layer_owner(94, 94, 3) == 2


def test_big_model_needs_nodes_and_the_split_adds_up() -> None:
    spec, w = model("qwen3-235b-a22b", "Q4_K_M")
    inputs = PlanInputs(ctx=32768, type_k="q8_0", type_v="q8_0")
    mem = memory_for(spec, w, inputs)
    kv_layers = kv_layer_bytes(spec, mem.layout, "q8_0", "q8_0")
    parts = (spec, w, kv_layers, 0, mem.compute_buffer_bytes, mem.overhead_bytes)
    assert mem.total_bytes > TUNED_128.usable_bytes
    n = nodes_needed(*parts, TUNED_128.usable_bytes)
    assert n == 2
    shares = rpc_split(*parts, n)
    assert sum(s.kv_bytes for s in shares) == mem.kv_cache_bytes
    assert sum(s.weights_bytes for s in shares) == pytest.approx(w.gpu_bytes, abs=2)
    assert shares[-1].holds_output and not shares[0].holds_output
    assert all(s.total_bytes <= TUNED_128.usable_bytes for s in shares)
    plan = plan_model(spec, w, TUNED_128, PlanInputs(ctx=32768, type_k="q8_0", type_v="q8_0", nodes=2))
    assert plan.fits and plan.cluster is not None and plan.nodes_needed == 2
    assert plan.llama_env["LLAMA_ARG_RPC"] == "node2:50052"
    assert plan.llama_env["LLAMA_ARG_TENSOR_SPLIT"] == "1,1"
    # vLLM loads the BF16 repo (~438 GiB): two nodes are refused with the numbers, an AWQ repo fits
    assert plan.cluster.tp.feasible and not plan.cluster.tp_fits and plan.vllm_args == ()
    assert "vLLM needs" in plan.vllm.problem and "BF16 weights" in plan.vllm.problem
    awq = plan_model(
        spec, w, TUNED_128, PlanInputs(ctx=32768, type_k="q8_0", type_v="q8_0", nodes=2, vllm_quant="awq")
    )
    assert awq.vllm.fits and "--tensor-parallel-size" in awq.vllm_args
    assert awq.vllm_args[awq.vllm_args.index("--tensor-parallel-size") + 1] == "2"
    assert awq.cluster is not None and awq.cluster.tp_fits
    assert awq.cluster.rpc_decode_tokens_per_s_ceiling < awq.cluster.tp_decode_tokens_per_s_ceiling


def test_tensor_parallel_needs_heads_that_divide() -> None:
    spec, w = model("qwen3-235b-a22b", "Q4_K_M")
    assert not tensor_parallel(spec, w, 10**9, 0, 0, 0, 3).feasible  # 64 heads, 4 KV heads
    tp8 = tensor_parallel(spec, w, 10**9, 0, 0, 0, 8)
    assert tp8.feasible and tp8.kv_bytes == 10**9 // 4  # 4 KV heads replicated over 8 nodes


def test_llama_server_settings() -> None:
    spec, w = model("qwen3-8b")
    plan = plan_model(
        spec,
        w,
        TUNED_128,
        PlanInputs(
            ctx=1000, parallel=3, type_k="q8_0", type_v="q4_0", unified_kv=True, model_ref="/m/qwen.gguf"
        ),
    )
    env = plan.llama_env
    assert env["LLAMA_ARG_MODEL"] == "/m/qwen.gguf"
    assert env["LLAMA_ARG_CTX_SIZE"] == "1024" and env["LLAMA_ARG_N_PARALLEL"] == "3"
    assert (env["LLAMA_ARG_CACHE_TYPE_K"], env["LLAMA_ARG_CACHE_TYPE_V"]) == ("q8_0", "q4_0")
    assert env["LLAMA_ARG_KV_UNIFIED"] == "true" and env["LLAMA_ARG_FLASH_ATTN"] == "on"
    assert env["LLAMA_ARG_FIT"] == "off" and "LLAMA_ARG_ROPE_SCALE" not in env
    assert any("allocates 1,024 cells for --ctx 1,000" in x for x in plan.warnings)


def test_past_trained_context_sets_yarn() -> None:
    spec, w = model("qwen3-8b")
    plan = plan_model(spec, w, TUNED_128, PlanInputs(ctx=131072))
    env = plan.llama_env
    assert (
        env["LLAMA_ARG_ROPE_SCALING_TYPE"],
        env["LLAMA_ARG_ROPE_SCALE"],
        env["LLAMA_ARG_YARN_ORIG_CTX"],
    ) == (
        "yarn",
        "4",
        "32768",
    )


def test_vllm_arguments() -> None:
    spec, w = model("llama-3.1-8b")
    plan = plan_model(
        spec,
        w,
        TUNED_128,
        PlanInputs(
            ctx=65536, parallel=4, type_k="q8_0", type_v="q8_0", model_ref="meta-llama/Llama-3.1-8B-Instruct"
        ),
    )
    args = plan.vllm_args
    assert args[:3] == ("vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct")
    assert args[args.index("--max-model-len") + 1] == "16384"
    assert args[args.index("--max-num-seqs") + 1] == "4"
    util = float(args[args.index("--gpu-memory-utilization") + 1])
    # sized from vLLM's BF16 weights (8.03 B parameters: 14.96 GiB), not the Q4_K_M GGUF (4.58 GiB)
    need = plan.vllm.tp.per_node_bytes
    assert plan.vllm.quant == "bf16" and 14.9 * GiB < plan.vllm.tp.weights_bytes < 15.0 * GiB
    assert need > plan.memory.total_bytes
    assert need / TUNED_128.usable_bytes <= util < need / TUNED_128.usable_bytes + 0.01
    assert args[args.index("--kv-cache-dtype") + 1] == "fp8"


def test_low_ram_left_to_linux_is_flagged() -> None:
    spec, w = model("llama-3.3-70b", "Q8_0")
    budget = node_budget(128 * GiB, gpu_limit_bytes=int(126 * GiB), os_reserve_bytes=GiB)
    best = max_context(spec, w, PlanInputs(type_k="q8_0", type_v="q8_0"), budget.usable_bytes)
    plan = plan_model(spec, w, budget, PlanInputs(ctx=best, type_k="q8_0", type_v="q8_0"))
    assert plan.fits
    assert any("of RAM is left to Linux" in x for x in plan.warnings)
    assert int(plan.llama_env["LLAMA_ARG_CACHE_RAM"]) == 0


def test_verdict_tight_when_headroom_is_small() -> None:
    spec, w = model("qwen3-32b", "Q8_0")
    inputs = PlanInputs(parallel=1, type_k="q4_0", type_v="q4_0")
    best = max_context(spec, w, inputs, TUNED_128.usable_bytes)
    plan = plan_model(spec, w, TUNED_128, PlanInputs(ctx=best, type_k="q4_0", type_v="q4_0"))
    assert plan.verdict == "fits (tight)"
